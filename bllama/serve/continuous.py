"""Continuous batching for `bllama serve`: one engine thread keeps the runtime's slots (Runtime.slots()) full.

Before every step the waiting requests take the free slots (the engine picks the slot whose kept KV cache shares
the longest prefix with the prompt, so a chat's next turn costs only its new tokens); a step decodes one token of
every running slot plus one prompt chunk of a joining one; a slot frees itself at its end (max_tokens, EOS, a stop
string, or its client gone) and the next waiting request takes it at the next step. Each slot keeps its own
sampler and seed, so every request gets exactly the tokens it would get alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List

from .handoff import one_handoff
from .protocol import RequestError
from .scheduler import Job, SchedulerBase, shutting_down


@dataclass
class _Running:
    job: Job
    text: object  # the runtime's TextStream: deltas, UTF-8 holding, stop strings
    used: int = 0
    entries: list = field(default_factory=list)  # (token, logprob, top) of every token, when logprobs are asked
    unsent: int = 0  # entries not yet attached to a streamed delta


class ContinuousScheduler(SchedulerBase):
    kind = "continuous"
    logprobs = True  # the slots report log-probabilities

    def __init__(self, runtime, metrics=None, max_queue: int = 64, step_tokens=None, poll_s: float = 0.0):
        super().__init__(runtime, metrics, max_queue, poll_s=poll_s)
        self.slots = runtime.slots()
        if step_tokens is not None:  # checked (ValueError) before the engine thread starts
            self.slots.step_tokens = step_tokens
        self.capacity = self.slots.capacity
        self.stop_ids = list(getattr(runtime, "eos_ids", []) or [])
        self._active: Dict[int, _Running] = {}
        self.joined_running = 0  # requests that joined while others were decoding (the point of all this)
        self.steps = 0

    def running(self) -> int:
        return len(self._active)

    def _cancel_running(self) -> None:
        for r in list(self._active.values()):
            r.job.cancelled.set()

    def _loop(self) -> None:
        while True:
            self._wait_for_work(lambda: bool(self._active))
            with self.work:
                closing = self._closing
            if closing:
                for slot, r in list(self._active.items()):
                    self._retire(slot)
                    r.job.fail(shutting_down())
                return
            try:
                with one_handoff():  # this step's events reach the event loop in one call (handoff.py)
                    self._admit()
                    self._retire_cancelled()
                    if self._active:
                        events = self.slots.step()
                        self.steps += 1
                        tokens = 0
                        for ev in events:
                            tokens += self._on_event(ev)
                        if tokens and self.metrics is not None:
                            self.metrics.tokens(tokens)  # once per step: one take of the metrics lock
            except BaseException as e:  # noqa: BLE001 - the engine thread must outlive any one failure
                for slot, r in list(self._active.items()):
                    self._retire(slot)
                    r.job.fail(e)
                time.sleep(0.01)

    def _admit(self) -> None:
        """Waiting jobs take free slots, oldest first, until the slots are full."""
        while len(self._active) < self.capacity:
            with self.work:
                self._drop_cancelled()
                if not self.pending:
                    return
                job = self.pending.pop(0)
            if not self._start(job):
                with self.work:  # no slot for it after all: next step
                    self.pending.insert(0, job)
                return

    def _start(self, job: Job) -> bool:
        """Puts `job` in a slot, or answers it at once (nothing to decode, a refused request); False: no slot."""
        from ..runtime.slots import SlotsFullError

        rt, k = self.runtime, job.opts.get("logprobs")
        if job.n == 0:
            if len(job.ids) > rt.context_length:
                job.fail(RequestError(f"the prompt ({len(job.ids)} tokens) exceeds the context length "
                                      f"{rt.context_length}"))
            else:
                job.done("", 0, "length")
            return True
        try:
            text = rt.text_stream(job.ids, job.opts["stop"])
            slot = self.slots.add(job.ids, job.opts["sampling"], job.n, stop_ids=self.stop_ids, logprobs=k or 0,
                                  token_logprob=k is not None)
        except SlotsFullError:
            return False
        except (ValueError, IndexError) as e:  # the engine's checks: context length, sampling values
            job.fail(RequestError(str(e)))
            return True
        except Exception as e:  # noqa: BLE001 - this request's own failure: the others go on
            job.fail(e)
            return True
        if self._active:
            self.joined_running += 1
        self._active[slot] = _Running(job, text)
        return True

    def _retire(self, slot: int) -> None:
        self._active.pop(slot, None)
        try:
            self.slots.cancel(slot)
        except Exception:  # noqa: BLE001 - already free (it finished in the engine)
            pass

    def _retire_cancelled(self) -> None:
        for slot, r in list(self._active.items()):
            if r.job.cancelled.is_set():  # its client is gone (or the server is closing): free the slot now
                self._retire(slot)
                self._finish(r, "stop")

    def _on_event(self, ev) -> int:
        """Passes one slot's event on to its job; returns the tokens it counts (0 or 1)."""
        r = self._active.get(ev.slot)
        if r is None:  # retired this step
            return 0
        job = r.job
        try:
            if ev.token is not None:
                r.used += 1
                if job.first_token_at is None:
                    self._first_token(job, ev.cached_tokens)
                if job.opts.get("logprobs") is not None:
                    r.entries.append((ev.token, ev.logprob, tuple(ev.top_logprobs)))
                    r.unsent += 1
                delta = r.text.push(ev.token)
                if delta and job.stream:
                    job.put("delta", (delta, self._unsent(r)))
                if r.text.stopped:  # a stop string: the slot ends here, whatever the engine would do next
                    if ev.finish_reason is None:
                        self._retire(ev.slot)
                    else:
                        self._active.pop(ev.slot, None)
                    self._finish(r, "stop")
                    return 1
            if ev.finish_reason is not None:
                self._active.pop(ev.slot, None)
                self._finish(r, ev.finish_reason)
        except Exception as e:  # noqa: BLE001 - this request's own failure (its text stream): it ends alone
            self._retire(ev.slot)
            job.fail(e)
        return int(ev.token is not None)

    def _first_token(self, job: Job, cached: int) -> None:
        job.first_token_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.first_token(job.first_token_at - job.submitted, cached)

    @staticmethod
    def _unsent(r: _Running) -> list:
        out = r.entries[len(r.entries) - r.unsent:] if r.unsent else []
        r.unsent = 0
        return out

    def _finish(self, r: _Running, reason: str) -> None:
        job = r.job
        rest = r.text.flush()
        if job.stream and (rest or r.unsent):
            job.put("delta", (rest, self._unsent(r)))
        job.done(r.text.emitted, r.used, reason, logprobs=r.entries)
