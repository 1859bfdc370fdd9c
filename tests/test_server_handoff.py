"""bllama/serve/handoff.py: events posted from the engine thread reach their asyncio queues in order, all of them,
with one wake-up of the event loop per one_handoff() block."""
from __future__ import annotations

import asyncio
import threading

from bllama.serve.handoff import Mailbox, one_handoff


def _run(engine_side, queues: int = 3):
    """Runs engine_side(box, queues) in a thread while an event loop serves the queues; returns (what each queue
    received, how many deliveries ran on the loop)."""
    async def main():
        loop = asyncio.get_running_loop()
        box = Mailbox(loop)
        deliveries = [0]
        deliver = box._deliver

        def counted():
            deliveries[0] += 1
            deliver()

        box._deliver = counted
        qs = [asyncio.Queue() for _ in range(queues)]
        done = asyncio.Event()
        t = threading.Thread(target=lambda: (engine_side(box, qs), loop.call_soon_threadsafe(done.set)))
        t.start()
        await done.wait()
        await asyncio.sleep(0)
        t.join()
        return [[q.get_nowait() for _ in range(q.qsize())] for q in qs], deliveries[0]

    return asyncio.run(main())


def test_one_delivery_per_block_in_order():
    def engine(box, qs):
        for step in range(20):
            with one_handoff():
                for k, q in enumerate(qs):
                    box.post(q, (step, k))
                    box.post(q, (step, k, "again"))

    got, deliveries = _run(engine)
    for k, items in enumerate(got):
        assert items == [x for step in range(20) for x in ((step, k), (step, k, "again"))]
    assert 1 <= deliveries <= 20  # one per block at most (blocks that came together share one)


def test_posts_outside_a_block_and_nested_blocks_all_arrive():
    def engine(box, qs):
        for i in range(50):
            box.post(qs[i % len(qs)], i)  # each rings unless a delivery is already on its way
            with one_handoff():
                with one_handoff():  # the inner block leaves the ringing to the outer one
                    box.post(qs[0], ("nested", i))

    got, deliveries = _run(engine, queues=2)
    assert [x for x in got[0] if isinstance(x, int)] == list(range(0, 50, 2))
    assert [x for x in got[0] if isinstance(x, tuple)] == [("nested", i) for i in range(50)]
    assert got[1] == list(range(1, 50, 2))
    assert 1 <= deliveries <= 100


def test_a_closed_loop_drops_the_events():
    loop = asyncio.new_event_loop()
    box = Mailbox(loop)
    loop.close()
    for _ in range(3):
        box.post(asyncio.Queue.__new__(asyncio.Queue), "lost")  # no exception for the engine thread
        assert not box._items  # nor a pile of events nobody will read
