"""SamplingParams: one object for the sampling options, refusing what the engine refuses (same messages)."""
import math

import pytest

from bllama import SamplingParams


def test_defaults_are_greedy_and_match_the_engine_defaults():
    s = SamplingParams()
    assert s.as_dict() == dict(do_sample=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                               seed=None)
    assert s.engine_kwargs()["seed"] == -1  # the engine's "pick a random seed"


@pytest.mark.parametrize("field, value, message", [
    ("temperature", -0.1, "temperature must be a finite number >= 0"),
    ("temperature", math.nan, "temperature must be a finite number >= 0"),
    ("temperature", math.inf, "temperature must be a finite number >= 0"),
    ("top_k", -1, "top_k must be >= 0"), ("top_p", 0.0, r"top_p must be > 0 \(1 or more: off\)"),
    ("top_p", math.nan, r"top_p must be > 0 \(1 or more: off\)"), ("repetition_penalty", 0.0, "repetition_penalty must be"),
    ("repetition_penalty", math.inf, "repetition_penalty must be")])
def test_refuses_what_the_engine_refuses(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**{field: value})
    with pytest.raises(ValueError, match=message):
        SamplingParams.of(**{field: value})


def test_none_means_off_for_top_k_and_top_p():
    s = SamplingParams(top_k=None, top_p=None)
    assert (s.top_k, s.top_p) == (0, 1.0)


def test_of_folds_keyword_overrides_into_one_object():
    base = SamplingParams(do_sample=True, temperature=0.8, top_k=40)
    assert SamplingParams.of() == SamplingParams()
    assert SamplingParams.of(base) is base
    s = SamplingParams.of(base, seed=3, top_k=10)
    assert (s.do_sample, s.temperature, s.top_k, s.seed) == (True, 0.8, 10, 3)
    assert base.top_k == 40 and base.seed is None  # frozen: the base is unchanged
    with pytest.raises(TypeError, match="temprature"):
        SamplingParams.of(temprature=0.5)


def test_integer_fields_are_integers():
    import numpy as np

    for field, bad in (("seed", 3.7), ("seed", "3"), ("top_k", 2.5), ("top_k", True)):
        with pytest.raises(TypeError, match=f"{field} must be an integer"):
            SamplingParams(**{field: bad})
    s = SamplingParams(seed=np.int64(3), top_k=np.int32(5), do_sample=True)
    assert (s.seed, s.top_k) == (3, 5) and type(s.seed) is int and type(s.top_k) is int


def test_for_sequence_numbers_the_seeds():
    assert SamplingParams(seed=7).for_sequence(2).seed == 9
    assert SamplingParams().for_sequence(2).seed is None
    assert SamplingParams(seed=-5).engine_kwargs()["seed"] == -5  # negative: the engine draws one
