"""The engine side of `bllama serve`: one engine thread, fed tokenized requests (Jobs) by the HTTP layer.

StaticScheduler decodes waiting requests of the same sampling together with Runtime.generate_ids_batch (a batch
runs to its end before the next one starts); ContinuousScheduler (continuous.py) keeps the runtime's slots full,
a new request joining the running batch at the next step. Both answer each Job through its `sink` with
("delta", text) (streams only), then exactly one ("done", result) or ("error", exception).
"""
from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Callable, List, Optional

from ..runtime.engine import engine_module
from ..sampling import SamplingParams
from .protocol import RequestError

MAX_POLL_S = 60.0  # `bllama serve --poll`: the longest idle spin accepted


@dataclass
class Job:
    """One choice of one tokenized request. `sink(index, kind, value)` is called from the engine thread; the HTTP
    side sets `cancelled` when its client is gone (the sequence then ends at its next token)."""

    ids: List[int]
    opts: dict  # max_new_tokens, sampling, stop, logprobs (see protocol.sampling_options)
    stream: bool
    sink: Callable[[int, str, object], None]
    index: int = 0  # the choice's index in the reply (n > 1)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: Optional[float] = None

    @property
    def key(self) -> tuple:  # requests decode together only with the same sampling (greedy ignores the rest)
        s: SamplingParams = self.opts["sampling"]
        if s.do_sample and s.seed is not None:
            return ("seeded", id(self))  # alone: prompt i of a batch samples with seed + i
        if not s.do_sample:
            return False, s.repetition_penalty
        return True, s.temperature, s.top_k, s.top_p, s.repetition_penalty

    @property
    def n(self) -> int:
        return self.opts["max_new_tokens"]

    def put(self, kind: str, value) -> None:
        self.sink(self.index, kind, value)

    def fail(self, error: BaseException) -> None:
        self.put("error", error)

    def done(self, text: str, completion_tokens: int, finish_reason: str, **extra) -> None:
        p = len(self.ids)
        self.put("done", {"text": text, "finish_reason": finish_reason, **extra, "usage": {
            "prompt_tokens": p, "completion_tokens": completion_tokens, "total_tokens": p + completion_tokens}})


# Schedulers whose engine thread runs. At exit each is closed (its waiting requests answered 503, its engine thread
# joined) before the engine's own exit hook (python/bindings.cpp) stops whatever engine calls are left: a daemon engine
# thread that came back from the engine during finalization used to abort the process.
_running: "weakref.WeakSet[SchedulerBase]" = weakref.WeakSet()


def _close_running() -> None:
    for s in list(_running):
        s.close()


engine_module()  # registers the engine's hook now, so that this one, registered after it, runs before it
atexit.register(_close_running)


def shutting_down() -> RequestError:
    return RequestError("the server is shutting down", HTTPStatus.SERVICE_UNAVAILABLE)


class SchedulerBase:
    """What both schedulers share: the waiting list, admission (429 when full, 503 when closing), the engine
    thread's life."""

    def __init__(self, runtime, metrics=None, max_queue: int = 64, retry_after_s: int = 1, poll_s: float = 0.0):
        self.runtime, self.metrics, self.max_queue, self.retry_after_s = runtime, metrics, max_queue, retry_after_s
        if isinstance(poll_s, bool) or not isinstance(poll_s, (int, float)) or not 0 <= poll_s <= MAX_POLL_S:
            raise ValueError(f"poll must be a number of seconds in [0, {MAX_POLL_S}], got {poll_s!r}")
        self.poll_s = float(poll_s)
        # With poll_s, an idle engine thread first spins up to this long in the engine (no GIL, no system call)
        # before it sleeps, so the core that runs the next request's prompt is awake; the spin ends sooner when
        # other threads keep taking its core (engine/doorbell.h says why).
        self._bell = engine_module().Doorbell() if self.poll_s > 0 else None
        self.pending: List[Job] = []
        self.work = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="bllama-engine", daemon=True)

    def start(self) -> "SchedulerBase":
        self._thread.start()
        _running.add(self)
        return self

    def submit(self, jobs: List[Job]) -> None:
        """Queues every job of one request, or none: 503 while closing, 429 (with Retry-After) when the queue is
        full."""
        with self.work:
            if self._closing:
                raise shutting_down()
            if len(self.pending) + len(jobs) > self.max_queue:
                raise RequestError(f"the server is busy: {len(self.pending)} sequences wait already and this request "
                                   f"adds {len(jobs)} (--max-queue {self.max_queue} counts each of a request's n "
                                   f"choices); retry later", HTTPStatus.TOO_MANY_REQUESTS,
                                   {"Retry-After": str(self.retry_after_s)})
            self.pending.extend(jobs)
            self._wake_engine()

    def queue_depth(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        """Stops the engine thread: waiting requests get a 503, running ones end at their next token."""
        with self.work:
            self._closing = True
            for j in self.pending:
                j.fail(shutting_down())
            self.pending.clear()
            self._cancel_running()
            self._wake_engine()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        _running.discard(self)

    def _wake_engine(self) -> None:
        """Wakes the engine thread, asleep on the condition or spinning on the doorbell (called with `work` held)."""
        self.work.notify()
        if self._bell is not None:
            self._bell.ring()

    def _wait_for_work(self, busy) -> None:
        """Returns once a job waits, the scheduler is closing or busy() (work under way) holds; with poll_s, an idle
        thread spins up to poll_s (less when other threads need its core) before it sleeps on the condition."""
        if self._bell is not None:
            seen = self._bell.rings()  # before the check: a submit after it rings past `seen`
            if not (self.pending or self._closing or busy()):
                self._bell.wait(seen, self.poll_s)
        with self.work:
            while not (self.pending or self._closing or busy()):
                self.work.wait()

    def _drop_cancelled(self) -> None:
        """Waiting jobs whose clients left (called with `work` held)."""
        for j in [j for j in self.pending if j.cancelled.is_set()]:
            self.pending.remove(j)
            j.fail(ConnectionResetError("the client hung up"))

    def _token(self, job: Job) -> None:
        if job.first_token_at is None:
            job.first_token_at = time.monotonic()
            if self.metrics is not None:
                self.metrics.first_token(job.first_token_at - job.submitted)
        if self.metrics is not None:
            self.metrics.tokens(1)


class StaticScheduler(SchedulerBase):
    """Batches waiting requests of the same sampling (up to the runtime's max_sequences; a seeded request alone, so
    it gets exactly its own samples) with Runtime.generate_ids_batch; a batch runs until its last sequence ends.
    batch_wait_s: with room in a batch, how long to wait for more requests before starting one (clients whose
    replies just went out send their next request within milliseconds)."""

    kind = "static"

    def __init__(self, runtime, metrics=None, max_queue: int = 64, batch_wait_s: float = 0.01, poll_s: float = 0.0):
        super().__init__(runtime, metrics, max_queue, poll_s=poll_s)
        self.batch_wait_s = batch_wait_s
        # The CPU engine's batched head rounds differently above 8 sequences (docs/engine.md): beyond that a
        # request's greedy answer could differ from its answer alone.
        self.capacity = int(runtime.config.get("max_sequences", 1))
        if runtime.config.get("device", "cpu") == "cpu":
            self.capacity = min(self.capacity, 8)
        self.batch_sizes: Counter = Counter()  # how many batches of each size ran
        self._running: List[Job] = []

    def running(self) -> int:
        return len(self._running)

    def _cancel_running(self) -> None:
        for j in self._running:
            j.cancelled.set()

    def _loop(self) -> None:
        while True:
            self._wait_for_work(lambda: False)
            with self.work:
                if self._closing:
                    return
                room = len(self.pending) < self.capacity
            if room and self.capacity > 1 and self.batch_wait_s > 0:
                time.sleep(self.batch_wait_s)
            batch: List[Job] = []
            try:
                with self.work:
                    batch = self._running = self._take_batch()
                if batch:
                    self._run(batch)
            except BaseException as e:  # noqa: BLE001 - the engine thread must outlive any one batch
                for j in batch:  # the HTTP side takes the first end event it sees; a second one is never read
                    j.fail(e)
            finally:
                with self.work:
                    self._running = []

    def _take_batch(self) -> List[Job]:
        """The oldest waiting job and up to capacity - 1 more with its sampling, such that every prompt still fits
        the context with the batch's largest max_tokens (the engine checks every prompt against it)."""
        self._drop_cancelled()
        if not self.pending:
            return []
        job = self.pending.pop(0)
        batch, ctx = [job], self.runtime.context_length
        if len(job.ids) + job.n > ctx:
            return batch  # the engine refuses it with its own message
        for j in list(self.pending):
            if len(batch) == self.capacity:
                break
            top = max(m.n for m in batch + [j])
            if j.key == job.key and all(len(m.ids) + top <= ctx for m in batch + [j]):
                batch.append(j)
                self.pending.remove(j)
        return batch

    def _run(self, batch: List[Job]) -> None:
        """Decodes a batch; every job ends with exactly one "done" or "error" event."""
        rt = self.runtime
        for j in [j for j in batch if j.n == 0]:  # nothing to decode (the engine would still step them once)
            if len(j.ids) > rt.context_length:
                j.fail(RequestError(f"the prompt ({len(j.ids)} tokens) exceeds the context length "
                                    f"{rt.context_length}"))
            else:
                j.done("", 0, "length")
            batch.remove(j)
        if not batch:
            return
        texts = []
        for j in list(batch):
            try:
                texts.append(rt.text_stream(j.ids, j.opts["stop"]))
            except Exception as e:  # noqa: BLE001 - this request's own failure: the others go on
                j.fail(e)
                batch.remove(j)
        if not batch:
            return
        o = batch[0].opts
        used = [0] * len(batch)
        finished = [False] * len(batch)
        counted = []

        def count_batch() -> None:
            # At the first token, when the engine has taken every prompt: before any reply of the batch goes out,
            # so a client holding its reply sees its batch in batch_sizes.
            if not counted:
                counted.append(True)
                self.batch_sizes[len(batch)] += 1

        def fail(i: int, error: BaseException) -> None:
            batch[i].fail(error)
            finished[i] = True

        def finish(i: int, ended_early: bool) -> None:
            j, t = batch[i], texts[i]
            rest = t.flush()
            if rest and j.stream:
                j.put("delta", rest)
            j.done(t.emitted, used[i], "stop" if t.stopped or ended_early else "length")
            finished[i] = True

        def on_token(i: int, token: int) -> bool:
            j, t = batch[i], texts[i]
            count_batch()
            try:
                used[i] += 1
                self._token(j)
                delta = t.push(token)
                if delta and j.stream:
                    j.put("delta", delta)
                if t.stopped or used[i] >= j.n or j.cancelled.is_set():
                    finish(i, False)
                    return True
                return False
            except Exception as e:  # noqa: BLE001 - this request's own failure: its sequence ends, the others go on
                fail(i, e)
                return True

        error = None
        try:
            rt.generate_ids_batch([j.ids for j in batch], max(j.n for j in batch), o["sampling"], on_token=on_token)
            count_batch()
        except (ValueError, IndexError) as e:  # the engine's checks cover every prompt before any token
            if len(batch) > 1 and not any(used):
                for j in batch:  # find whose prompt it is: only that request fails
                    self._run([j])
                return
            error = RequestError(str(e))
        except Exception as e:  # noqa: BLE001 - each waiting request reports it
            error = e
        for i, j in enumerate(batch):
            if finished[i]:
                continue
            if error is not None:
                fail(i, error)
                continue
            try:
                finish(i, used[i] < j.n)  # it ended at EOS before its max_tokens
            except Exception as e:  # noqa: BLE001
                fail(i, e)
