"""Continuous batching: Runtime.slots() gives the engine's sequence slots as a step-wise API for a scheduler.

    slots = rt.slots()
    s = slots.add(prompt_ids, SamplingParams(), max_new_tokens=64, stop_ids=rt.eos_ids)
    while slots.active():
        for ev in slots.step():   # one token of every running slot + prompt rows of joining ones
            ...

Each slot keeps its own sampler and seed, so a request gets exactly the tokens Runtime generates for it alone
(greedy, or sampled with the same seed), whatever joins or leaves around it. A slot that ends keeps its KV cache;
a later request sharing a prefix with it resumes there (prefix reuse). docs/engine.md, "Slots".
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..sampling import INT32_MAX, SamplingParams
from .engine import engine_module

MAX_TOP_LOGPROBS = 20  # the engine's kMaxTopLogprobs (csrc/engine/slots.h); OpenAI's top_logprobs cap too


def check_new_tokens(max_new_tokens, prompt_tokens: int, context_length: int) -> int:
    """max_new_tokens as an int, checked before it reaches the engine: TypeError for a bool or a non-integer (2.5,
    "8"), ValueError below 0, IndexError when the prompt and max_new_tokens do not fit the context length (past
    2**63 pybind11 itself refused it, with its whole signature)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise TypeError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
    n = int(max_new_tokens)
    if n < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {n}")
    if n > context_length - prompt_tokens:
        raise IndexError(f"prompt ({prompt_tokens} tokens) + max_new_tokens ({n}) exceeds the context length "
                         f"{context_length}")
    return n


def default_new_tokens(cap: int, prompt_tokens: int, context_length: int) -> int:
    """What max_new_tokens=None means: up to `cap` new tokens, as many as the context holds after the prompt (a
    256-token model's chat would otherwise fail on any default larger than its context). IndexError when the prompt
    leaves no room."""
    room = context_length - prompt_tokens
    if room < 1:
        raise IndexError(f"prompt ({prompt_tokens} tokens) leaves no room for new tokens in the context length "
                         f"{context_length}")
    return min(cap, room)


class SlotsFullError(RuntimeError):
    """Every slot is busy: retry after a step that finished a slot."""


@dataclass(frozen=True)
class SlotEvent:
    slot: int
    # The sampled token; None when the slot stopped on a stop id (not part of the reply) or the event only reports
    # a prompt chunk run for a joining slot.
    token: Optional[int]
    # log_softmax of the model's raw logits (before penalty / temperature) at `token`; None unless asked for.
    logprob: Optional[float]
    top_logprobs: Tuple[Tuple[int, float], ...]  # up to the slot's `logprobs` count, best first (empty if 0)
    # None while running; "length" (max_new_tokens reached with this token) or "stop" (a stop id).
    finish_reason: Optional[str]
    cached_tokens: int  # prompt tokens reused from a kept KV cache (0: a cold start); the same on every event


class Slots:
    """The sequence slots of a Runtime (capacity = its max_sequences). add() / step() / cancel() / active() each
    take the Runtime's turn (so they wait for a running Runtime.generate, and step() runs with the GIL released);
    while any slot is taken, the Runtime's one-shot calls (generate, stream, chat, logits, ...) raise
    RuntimeBusyError instead of overwriting the slots' caches. Use from one scheduling thread."""

    def __init__(self, runtime):
        self._rt = runtime
        self._engine = runtime._engine
        self.capacity: int = int(self._engine.config.get("max_sequences", 1))

    def add(self, ids: Sequence[int], sampling: Optional[SamplingParams], max_new_tokens: int,
            stop_ids: Sequence[int] = (), logprobs: int = 0, *, token_logprob: bool = False) -> int:
        """Puts a request in a free slot and returns the slot; runs nothing (step() does).

        The checks of Runtime's generation calls: ValueError for an empty prompt or bad sampling settings,
        IndexError for an id outside the vocabulary or prompt + max_new_tokens past the context length.
        logprobs: how many top alternatives each event reports (0..20; > 0 also reports the token's own logprob);
        token_logprob=True reports the token's logprob without alternatives. SlotsFullError when no slot is free.
        The free slot whose kept tokens share the longest prefix with `ids` is chosen, else the least recently
        used one."""
        sampling = SamplingParams.of(sampling)
        ids = list(ids)
        if not ids:
            raise ValueError("the prompt is empty")
        vocab = self._rt.vocab_size
        for i, t in enumerate(ids):
            if not isinstance(t, numbers.Integral) or isinstance(t, bool):  # numpy ids (np.array(ids)) are ids too
                raise TypeError(f"prompt: token id at index {i} is not an integer: {t!r}")
            ids[i] = t = int(t)
            if not 0 <= t < vocab:
                raise IndexError(f"prompt: token id {t} at index {i} is out of range [0, {vocab})")
        max_new_tokens = check_new_tokens(max_new_tokens, len(ids), self._rt.context_length)
        if isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {logprobs!r}")
        stops = [int(s) for s in stop_ids if 0 <= int(s) < vocab]  # others can never be sampled
        kwargs = sampling.engine_kwargs()
        with self._rt._engine_turn(slots=True):
            try:
                return self._engine.slot_add(ids, int(max_new_tokens), stop_ids=stops,
                                             logprob=bool(token_logprob or logprobs), top_logprobs=logprobs, **kwargs)
            except engine_module().SlotsFull as e:
                raise SlotsFullError(str(e)) from None

    def step(self) -> List[SlotEvent]:
        """One decode token for every running slot plus prompt rows of joining slots (the first to join takes a
        quarter, prompts that fit in the rest finish now, then the order they joined) up to `step_tokens` rows in
        all, as one forward on the CPU (each weight read once for all rows), the GIL released; one event per slot
        that produced something (a joining slot whose prompt is not done yet: an event without a token), [] when
        idle. A slot whose event has a finish_reason is free again."""
        with self._rt._engine_turn(slots=True):
            raw = self._engine.slot_step()
        return [SlotEvent(*e) for e in raw]

    @property
    def step_tokens(self) -> int:
        """The step's token budget: decode rows always run; joining prompts get what is left, at least one row
        (CPU: at most max_batch rows in all). Default: the engine's prompt chunk (max_batch, 64). Smaller: shorter
        steps for the running slots (inter-token latency), slower prompts (time to first token)."""
        with self._rt._engine_turn(slots=True):
            return int(self._engine.slot_step_tokens(0))

    @step_tokens.setter
    def step_tokens(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= INT32_MAX:
            raise ValueError(f"step_tokens must be an integer in [1, {INT32_MAX}], got {n!r}")
        with self._rt._engine_turn(slots=True):
            self._engine.slot_step_tokens(n)

    def cancel(self, slot: int) -> None:
        """Retires a slot at once (no event); its KV cache and tokens stay for prefix reuse. IndexError for a slot
        outside [0, capacity)."""
        if isinstance(slot, bool) or not isinstance(slot, numbers.Integral):
            raise TypeError(f"slot must be an integer (what add() returned), got {slot!r}")
        if not 0 <= slot < self.capacity:  # np.int64(0), a slot from an array of them, is slot 0
            raise IndexError(f"slot {slot!r} is out of range [0, {self.capacity})")
        slot = int(slot)
        with self._rt._engine_turn(slots=True):
            self._engine.slot_cancel(slot)

    def active(self) -> int:
        """Slots taken (joining, decoding, or finished but not yet reported by step())."""
        with self._rt._engine_turn(slots=True):
            return self._engine.slot_active()

    def __repr__(self) -> str:
        return f"Slots(capacity={self.capacity}, active={self.active()})"
