"""The OpenAI request bodies `bllama serve` accepts: reading their options, refusing what the engine cannot honour
(a 400 that names the problem, never a silently different answer, never a 500 for a strange value)."""
from __future__ import annotations

import json
import math
from http import HTTPStatus
from typing import List

from ..sampling import INT32_MAX, SamplingParams
from ..tokenizers.text import check_text as tokenizer_text

# Fields this server cannot honour, each with the values that mean "not used" (those are accepted).
UNSUPPORTED = {"best_of": (1,), "frequency_penalty": (0,), "presence_penalty": (0,), "echo": (False,),
               "logit_bias": ({},), "suffix": ("",), "tools": ([],), "tool_choice": ("none",),
               "response_format": ({"type": "text"},)}
# Every other field a request may hold: anything else is refused, so a misspelt one ("max_token") is never a silent
# default. `user` (OpenAI's tag for the end user) is accepted and not used.
REQUEST_FIELDS = {"model", "user", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
                  "top_p", "seed", "stop", "n", "logprobs", "top_k", "repetition_penalty", *UNSUPPORTED}
CHAT_FIELDS, COMPLETION_FIELDS = REQUEST_FIELDS | {"messages", "top_logprobs"}, REQUEST_FIELDS | {"prompt"}
INT_MAX = INT32_MAX  # the engine's token counts and top_k are 32-bit: a larger value is refused here, not overflowed
MAX_TOP_LOGPROBS = 20  # OpenAI's own bound (chat: top_logprobs <= 20; completions: logprobs <= 5)


class RequestError(ValueError):
    """A request the server refuses, with the HTTP status to answer (and headers, e.g. Retry-After)."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST, headers: dict = None):
        super().__init__(message)
        self.status = int(status)
        self.headers = headers or {}


def refuse_constant(name: str):
    raise RequestError(f"the request body holds {name}, which is not a JSON number")


def parse_body(raw: bytes) -> dict:
    """A request body as a JSON object; RequestError for anything else (bad UTF-8 or JSON, NaN, nesting too deep,
    an integer past Python's digit limit)."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise RequestError("the request body is nested too deeply") from None
    except ValueError as e:  # int() past sys.get_int_max_str_digits()
        raise RequestError(f"the request body holds a number too long to read: {e}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def check_text(value: str, what: str) -> str:
    """A lone surrogate (JSON allows "\\ud800") cannot be encoded to UTF-8: refused here, not in the tokenizer."""
    try:
        return tokenizer_text(value, what)
    except ValueError as e:
        raise RequestError(str(e)) from None


def _number(body: dict, key: str, default, kind, lo=None, hi=None, lo_open=False):
    value = body.get(key)
    if value is None:
        return default
    try:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) \
            and (isinstance(value, int) or math.isfinite(value)) and (kind is not int or value == int(value))
        if ok and kind is float and isinstance(value, int):
            float(value)  # a 400-digit integer where a float is expected: OverflowError
    except OverflowError:  # a 400-digit integer where a float is expected
        ok = False
    if not ok:
        raise RequestError(f"'{key}' must be {'an integer' if kind is int else 'a number'}, got {_short(value)}")
    value = kind(value)
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        raise RequestError(f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}], "
                           f"got {_short(value)}")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + f"... ({len(text)} characters)"


def bool_option(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be true or false, got {_short(value)}")
    return value


def stop_strings(body: dict, max_count: int, max_chars: int) -> list:
    """The request's stop strings, capped: each is searched for after every token, so their number and length
    bound the work one request can ask of the engine thread."""
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise RequestError(f"'stop' must be a string or a list of strings, got {_short(stop)}")
    if stop and len(stop) > max_count:
        raise RequestError(f"'stop' holds {len(stop)} strings; at most {max_count} are allowed (--max-stop)")
    for s in stop or []:
        if len(s) > max_chars:
            raise RequestError(f"a 'stop' string is {len(s)} characters long; at most {max_chars} are allowed "
                               f"(--max-stop-chars)")
        check_text(s, "a 'stop' string")
    return stop


# stream_options fields: include_usage (a last event with the usage); include_obfuscation (OpenAI pads events with
# random characters against length side channels) changes no text and is accepted as a no-op.
STREAM_OPTIONS = ("include_usage", "include_obfuscation")


def stream_usage(body: dict) -> bool:
    """stream_options.include_usage; a field of stream_options this server does not know is refused like a
    misspelt field of the body (an "include_usgae" was a stream without its usage, without a word)."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise RequestError(f"'stream_options' must be an object, got {_short(options)}")
    unknown = sorted(k for k in options if k not in STREAM_OPTIONS)
    if unknown:
        raise RequestError(f"unknown field {_short(unknown[0])} in 'stream_options' (it reads "
                           f"{', '.join(STREAM_OPTIONS)})")
    bool_option(options, "include_obfuscation")
    return bool_option(options, "include_usage")


def sampling_options(body: dict, chat: bool = False, max_stop: int = 16, max_stop_chars: int = 256,
                     max_n: int = 16) -> dict:
    """What an OpenAI request body asks for: {"max_new_tokens" (None when the request sets none), "sampling" (a
    SamplingParams), "stop", "n", "logprobs" (None: none; k: the sampled token's log-probability and the k most
    likely)}; refuses what the engine would not honour and fields it does not know."""
    unknown = sorted(k for k in body if k not in (CHAT_FIELDS if chat else COMPLETION_FIELDS))
    if unknown:
        raise RequestError(f"unknown field {_short(unknown[0])} (this endpoint reads "
                           f"{', '.join(sorted(CHAT_FIELDS if chat else COMPLETION_FIELDS))})")
    for key, off in UNSUPPORTED.items():
        if body.get(key) is not None and body[key] not in off:
            raise RequestError(f"'{key}' is not supported by this server (only {off[0]!r} or leaving it out)")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    temperature = _number(body, "temperature", 1.0, float, 0.0, 2.0)
    seed = _number(body, "seed", None, int, -2**63, 2**64 - 1)
    sampling = SamplingParams(do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
                              top_p=_number(body, "top_p", 1.0, float, 0.0, 1.0, lo_open=True),
                              top_k=_number(body, "top_k", 0, int, 0, INT_MAX),
                              repetition_penalty=_number(body, "repetition_penalty", 1.0, float, 0.0, 1e6,
                                                         lo_open=True),
                              # the engine's seeds are non-negative (-1: random)
                              seed=None if seed is None else seed % 2**63)
    if chat:  # chat: logprobs is a switch, top_logprobs the count
        logprobs = _number(body, "top_logprobs", 0, int, 0, MAX_TOP_LOGPROBS) if bool_option(body, "logprobs") \
            else None
        if logprobs is None and body.get("top_logprobs") not in (None, 0):
            raise RequestError("'top_logprobs' needs 'logprobs': true")
    else:  # completions: logprobs is the count (0: the sampled token's only)
        logprobs = body.get("logprobs")
        logprobs = None if logprobs is None or logprobs is False else \
            _number(body, "logprobs", 0, int, 0, 5) if logprobs is not True else 0
    return dict(max_new_tokens=_number(body, key, None, int, 0, INT_MAX), sampling=sampling,
                stop=stop_strings(body, max_stop, max_stop_chars), n=_number(body, "n", 1, int, 1, max_n),
                logprobs=logprobs)


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
        for field in ("role", "content"):
            if isinstance(m.get(field), str):
                check_text(m[field], f"message {i}'s {field}")
        out.append(m)
    return out


def text_length(messages: List[dict]) -> int:
    """Characters of the messages' text (what the prompt-size check counts before the template is rendered): every
    string a message holds, since a template may render any of them (every template writes the role, some the
    name). Counting the contents only let a 4 MB role through the check, to be rendered and tokenized in full on
    the event loop before the context check refused it."""
    chars, todo = 0, list(messages)
    while todo:  # not recursive: a body may nest as deep as the JSON parser allowed
        value = todo.pop()
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    return chars


def error_object(status: int, message: str) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "code"}}."""
    return {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                      "code": int(status)}}
