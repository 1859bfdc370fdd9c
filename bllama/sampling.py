"""SamplingParams: how the next token is chosen, one object from the request or the command line to the engine.

It mirrors the engine's struct (csrc/sampler.h) field for field and refuses what the engine's validate() refuses,
with the same messages, before anything runs. Torch-free: the Runtime and the server use it without torch.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Optional


INT32_MAX = 2**31 - 1  # the engine's token counts, top_k and step budgets are C ints


def _whole(name: str, value) -> int:
    """An integer field as a Python int (numpy integers too): seed=3.7 or top_k=2.5 were cut to 3 and 2 without a word,
    and seed="3" read as 3."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SamplingParams:
    do_sample: bool = False  # False: greedy (argmax), whatever the other knobs say
    temperature: float = 1.0  # <= 0 also means greedy
    top_k: int = 0  # 0 (or None): off
    top_p: float = 1.0  # >= 1 (or None): off
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages repeats (HF/CTRL convention)
    seed: Optional[int] = None  # None: a fresh random seed per call

    def __post_init__(self):
        # None for top_k / top_p means "off", as the PyTorch generate path has always taken it.
        fix = lambda name, value: object.__setattr__(self, name, value)
        fix("do_sample", bool(self.do_sample))
        fix("temperature", float(self.temperature))
        fix("top_k", 0 if self.top_k is None else _whole("top_k", self.top_k))
        fix("top_p", float(self.top_p if self.top_p is not None else 1.0))
        fix("repetition_penalty", float(self.repetition_penalty))
        fix("seed", None if self.seed is None else _whole("seed", self.seed))
        if not 0 <= self.temperature < math.inf:  # inf would sample uniformly, whatever the logits
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not self.top_p > 0:
            raise ValueError(f"top_p must be > 0 (1 or more: off), got {self.top_p}")
        if not self.repetition_penalty > 0 or math.isinf(self.repetition_penalty):
            raise ValueError(f"repetition_penalty must be a positive number, got {self.repetition_penalty}")

    @classmethod
    def of(cls, sampling: Optional["SamplingParams"] = None, **overrides) -> "SamplingParams":
        """`sampling` (default: greedy) with the keyword overrides given, e.g. of(do_sample=True, seed=0): the one
        place where the public methods' loose keywords (rt.generate(..., temperature=0.8)) become the object."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        if sampling is not None and not isinstance(sampling, cls):
            raise TypeError(f"sampling must be a SamplingParams (or None), got {type(sampling).__name__}; pass "
                            "the fields as keywords (temperature=0.8) or SamplingParams(**fields)")
        base = sampling if sampling is not None else cls()
        return dataclasses.replace(base, **overrides) if overrides else base

    def for_sequence(self, i: int) -> "SamplingParams":
        """The parameters of prompt i of a batch: seed + i, so equal prompts still get different samples."""
        return self if self.seed is None or i == 0 else dataclasses.replace(self, seed=self.seed + i)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def engine_kwargs(self) -> dict:
        """The engine's generate / generate_batch keyword arguments (a negative seed asks it for a random one)."""
        # Any top_k >= vocab keeps every candidate; past 2**31 the engine's int would refuse it with its whole signature.
        return dict(self.as_dict(), seed=-1 if self.seed is None else self.seed, top_k=min(self.top_k, INT32_MAX))
