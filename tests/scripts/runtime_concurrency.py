"""Run by tests/test_runtime_concurrency.py in a subprocess with a timeout, so a deadlock fails the test instead of
hanging the suite. Prints OK when every scenario ended (serialized or refused with a busy error).

    python runtime_concurrency.py MODEL.gguf
"""
import sys
import threading

from bllama.runtime import Runtime
from bllama.runtime.runtime import RuntimeBusyError

rt = Runtime.load(sys.argv[1], threads=1)
GEN = dict(max_new_tokens=12, stop_at_eos=False)
expected = rt.generate("The quick brown fox", **GEN)
errors = []


def generate_in_a_loop(n):
    try:
        for _ in range(n):
            if rt.generate("The quick brown fox", **GEN) != expected:
                errors.append("a generation that waited its turn gave a different text")
    except BaseException as e:  # noqa: BLE001
        errors.append(repr(e))


def read_stats(stop):
    while not stop.is_set():
        rt._engine.last_stats  # the getter that once took the engine's mutex holding the GIL
        rt.stats


def stream_in_a_loop(n):
    try:
        for _ in range(n):
            if "".join(rt.stream("The quick brown fox", **GEN)) != expected:
                errors.append("a stream that waited its turn gave a different text")
    except BaseException as e:  # noqa: BLE001
        errors.append(repr(e))


# 1. several threads generating and streaming on one Runtime while another reads the stats: they take turns
stop = threading.Event()
reader = threading.Thread(target=read_stats, args=(stop,))
reader.start()
workers = [threading.Thread(target=generate_in_a_loop, args=(6,)) for _ in range(3)] + \
          [threading.Thread(target=stream_in_a_loop, args=(6,)) for _ in range(2)]
for w in workers:
    w.start()
for w in workers:
    w.join()
stop.set()
reader.join()
assert not errors, errors

# 2. one thread interleaving two streams: the second is refused, the first goes on
for _ in range(3):
    a = rt.stream("The quick brown fox", **GEN)
    b = rt.stream("The quick brown fox", **GEN)
    first = next(a)
    try:
        next(b)
        raise AssertionError("a second stream of the same thread started while the first was unfinished")
    except RuntimeBusyError as e:
        assert "busy" in str(e)
    assert first + "".join(a) == expected
assert rt.generate("The quick brown fox", **GEN) == expected  # the Runtime is free again

# 3. an abandoned (closed) stream frees the Runtime
a = rt.stream("The quick brown fox", **GEN)
next(a)
a.close()
assert rt.generate("The quick brown fox", **GEN) == expected

# 4. a token callback calling back into its own Runtime or engine: a busy error, not a self-deadlock
ids = rt.encode("The quick brown fox")
try:
    rt.generate_ids_batch([ids], 4, on_token=lambda i, t: rt.generate("x", max_new_tokens=2))
    raise AssertionError("a callback re-entered its Runtime")
except RuntimeBusyError:
    pass
try:
    rt._engine.generate(ids, 4, callback=lambda t: rt._engine.generate(ids, 2))
    raise AssertionError("a callback re-entered its engine")
except RuntimeError as e:
    assert "busy" in str(e)
try:
    rt._engine.generate(ids, 4, callback=lambda t: rt._engine.last_stats)
    raise AssertionError("a callback read the stats of the engine it is inside")
except RuntimeError as e:
    assert "busy" in str(e)
assert rt.generate("The quick brown fox", **GEN) == expected

# 5. threads interleaving streams of their own, many times
def interleave(n):
    try:
        for _ in range(n):
            a, b = rt.stream("The quick brown fox", **GEN), rt.stream("The quick brown fox", **GEN)
            next(a)
            try:
                next(b)
                errors.append("interleaved streams were not refused")
            except RuntimeBusyError:
                pass
            a.close()
    except BaseException as e:  # noqa: BLE001
        errors.append(repr(e))


workers = [threading.Thread(target=interleave, args=(8,)) for _ in range(3)]
for w in workers:
    w.start()
for w in workers:
    w.join()
assert not errors, errors
print("OK")
