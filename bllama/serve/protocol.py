"""The OpenAI request bodies `bllama serve` accepts: reading their options, refusing what the engine cannot honour
(a 400 that names the problem, never a silently different answer)."""
from __future__ import annotations

import math
from http import HTTPStatus
from typing import List

from ..sampling import SamplingParams

MAX_BODY = 8 << 20  # bytes: a larger request is refused unread (and its connection closed)
# Fields this server cannot honour, each with the values that mean "not used" (those are accepted).
UNSUPPORTED = {"n": (1,), "best_of": (1,), "frequency_penalty": (0,), "presence_penalty": (0,), "echo": (False,),
               "logprobs": (False, 0), "top_logprobs": (0,), "logit_bias": ({},), "suffix": ("",), "tools": ([],),
               "tool_choice": ("none",), "response_format": ({"type": "text"},)}


class RequestError(ValueError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


def refuse_constant(name: str):
    raise RequestError(f"the request body holds {name}, which is not a JSON number")


def _number(body: dict, key: str, default, kind, lo=None, hi=None, lo_open=False):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (kind is int and value != int(value)):
        raise RequestError(f"'{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    value = kind(value)
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        raise RequestError(f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}], "
                           f"got {value}")
    return value


def bool_option(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be true or false, got {value!r}")
    return value


def sampling_options(body: dict) -> dict:
    """What an OpenAI request body asks for: {"max_new_tokens" (None when the request sets none), "sampling" (a
    SamplingParams), "stop"}; refuses what the engine would not honour."""
    for key, off in UNSUPPORTED.items():
        if body.get(key) is not None and body[key] not in off:
            raise RequestError(f"'{key}' is not supported by this server (only {off[0]!r} or leaving it out)")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    temperature = _number(body, "temperature", 1.0, float, 0.0, 2.0)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise RequestError(f"'stop' must be a string or a list of strings, got {stop!r}")
    seed = _number(body, "seed", None, int, -2**63, 2**64 - 1)
    sampling = SamplingParams(do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
                              top_p=_number(body, "top_p", 1.0, float, 0.0, 1.0, lo_open=True),
                              top_k=_number(body, "top_k", 0, int, 0),
                              repetition_penalty=_number(body, "repetition_penalty", 1.0, float, 0.0, lo_open=True),
                              # the engine's seeds are non-negative (-1: random)
                              seed=None if seed is None else seed % 2**63)
    return dict(max_new_tokens=_number(body, key, None, int, 0), sampling=sampling, stop=stop)


def chat_messages(messages) -> List[dict]:
    """OpenAI messages for the chat template: content given as a list of text parts becomes one string."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"message {i} must be an object with 'role' and 'content'")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise RequestError(f"message {i}: only text content parts are supported")
            m = {**m, "content": "".join(p["text"] for p in content)}
        out.append(m)
    return out
