"""Events from the engine thread to the event loop: one wake-up of the loop per engine step, not one per token.

Every request's reply waits on its own asyncio.Queue; the engine thread must not touch those queues (they are not
thread-safe), so each event crosses with loop.call_soon_threadsafe, which writes a byte to the loop's wake-up pipe
and takes the loop's lock. With 8 slots that was 8+ crossings per step. A Mailbox (one per event loop) collects the
events instead and rings the loop once; while a scheduler is inside `one_handoff()` (one step's events) it rings at
most once, at the end, whatever the number of events.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from contextlib import contextmanager

_held = threading.local()  # .mailboxes: the mailboxes to ring when the current thread's one_handoff() ends


class Mailbox:
    """Items for asyncio queues of one event loop, posted from any thread, delivered in batches on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: deque = deque()  # (queue, item); deque.append / popleft are atomic
        self._rung = False  # a delivery is scheduled and has not started draining yet
        self._closed = False  # the loop has closed: events are dropped

    def post(self, queue: asyncio.Queue, item) -> None:
        if self._closed:
            return
        self._items.append((queue, item))
        held = getattr(_held, "mailboxes", None)
        if held is not None:  # inside one_handoff(): rung once when it ends
            held[id(self)] = self
        elif not self._rung:
            self._ring()

    def _ring(self) -> None:
        if self._rung:
            return
        self._rung = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop has closed: nobody is waiting any more
            self._closed = True
            self._items.clear()

    def _deliver(self) -> None:
        # Cleared before draining: an item posted after this line rings again (an extra, empty delivery at worst);
        # one posted before it is drained below.
        self._rung = False
        items = self._items
        while items:
            queue, item = items.popleft()
            queue.put_nowait(item)


@contextmanager
def one_handoff():
    """Events posted by this thread inside the block reach each event loop in one delivery, when the block ends."""
    if getattr(_held, "mailboxes", None) is not None:  # nested: the outer block rings
        yield
        return
    _held.mailboxes = {}
    try:
        yield
    finally:
        boxes, _held.mailboxes = _held.mailboxes, None
        for box in boxes.values():
            box._ring()
