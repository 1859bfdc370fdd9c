"""The ASGI application of `bllama serve` (Starlette): the OpenAI-compatible endpoints over a scheduler.

    POST /v1/completions       {"prompt": "...", "max_tokens": 64, "temperature": 0, "stream": false, ...}
    POST /v1/chat/completions  {"messages": [{"role": "user", "content": "..."}], ...}  (the file's chat template)
    GET  /v1/models, GET /v1/models/{id}, GET /health, GET /metrics (Prometheus text)

An endpoint reads and checks the body (size and deadline first), tokenizes the prompt (a long one in a worker
thread, a few at a time), queues one Job per choice with the scheduler and answers as JSON or as server-sent events
while the engine thread produces the text. A client that hangs up ends its sequences; one that stops reading for
client_timeout seconds is disconnected. Every refusal is a JSON error with the status that fits.
"""
from __future__ import annotations

import asyncio
import re
import time
import uuid
from http import HTTPStatus
from typing import List, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .handoff import Mailbox
from .limits import ServeLimits
from .protocol import (RequestError, bool_option, chat_messages, check_text, error_object, parse_body,
                       sampling_options, stream_usage, text_length)
from .scheduler import Job


# Prompts up to this many characters are tokenized on the event loop (~0.1 ms at most), longer ones in a worker.
INLINE_TOKENIZE_CHARS = 1024


CLIENT_GONE = 499  # /metrics' status for a client that hung up before its answer ended (nginx's code for it)


class ClientGone(Exception):
    """The client hung up (or stopped reading): its sequences have been cancelled."""


def json_error(status: int, message: str, headers: Optional[dict] = None, close: bool = False) -> JSONResponse:
    headers = dict(headers or {})
    if close:  # the body may be unread: nothing more can be parsed from this connection
        headers["Connection"] = "close"
    return JSONResponse(error_object(status, message), status_code=int(status), headers=headers)


class ServeApp:
    """runtime: the Runtime (or a double); scheduler: a started StaticScheduler / ContinuousScheduler on it."""

    def __init__(self, runtime, scheduler, metrics, model_id: str, default_max_tokens: int = 256,
                 limits: ServeLimits = ServeLimits()):
        if default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {default_max_tokens}")
        self.runtime, self.scheduler, self.metrics = runtime, scheduler, metrics
        self.model_id, self.default_max_tokens, self.limits = model_id, default_max_tokens, limits
        self._tokenizing: Optional[asyncio.Semaphore] = None  # made on the event loop, at the first request
        self._waiting_to_tokenize = 0
        self._mailbox: Optional[Mailbox] = None  # the engine thread's events for the event loop (handoff.py)
        self._token_texts: dict = {}  # token id -> its text in a logprobs object
        self._token_bytes: dict = {}  # token id -> its bytes (None: its text's), for tokens whose text has U+FFFD
        self._anchor_ids: Optional[List[int]] = None
        routes = [Route("/health", self.health, methods=["GET"]), Route("/v1/models", self.models, methods=["GET"]),
                  # the OpenAI clients' models.retrieve(id); an id may hold "/" (--name org/model)
                  Route("/v1/models/{model:path}", self.model, methods=["GET"]),
                  Route("/metrics", self.metrics_text, methods=["GET"]),
                  Route("/v1/completions", self.completions, methods=["POST"]),
                  Route("/v1/chat/completions", self.chat, methods=["POST"])]
        self.app = Starlette(routes=routes, exception_handlers={HTTPException: self._http_error,
                                                                 RequestError: self._request_error,
                                                                 Exception: self._server_error})

    def token_text(self, token: int) -> str:
        """One token's text as it reads inside a reply: decoded after an anchor token and cut after the anchor's
        text, so SentencePiece keeps the piece's leading space (decode([t]) alone drops it at the start of a
        text). Byte tokens of a character split over several tokens give U+FFFD, as OpenAI's do."""
        cache = self._token_texts
        if token not in cache:
            tok, anchor = self.runtime.tokenizer, self._anchor()
            text = tok.decode([token])
            if anchor:
                head, joined = tok.decode(anchor), tok.decode(anchor + [token])
                if joined.startswith(head):
                    text = joined[len(head):]
            if len(cache) < 1 << 16:
                cache[token] = text
            return text
        return cache[token]

    def token_bytes(self, token: int) -> List[int]:
        """The UTF-8 bytes a token adds to the text (a logprobs object's `bytes`): for a byte token, part of a
        character split over several tokens, its own byte(s), which token_text() can only show as U+FFFD; joined
        in order they give the reply's text."""
        text = self.token_text(token)
        if "\ufffd" not in text:
            return list(text.encode("utf-8"))
        cache = self._token_bytes
        if token not in cache:
            try:
                piece = self.runtime.tokenizer.id_to_piece(token)
            except Exception:  # noqa: BLE001 - a tokenizer without pieces: the text's bytes
                piece = None
            raw = _piece_bytes(piece) if isinstance(piece, str) else None
            if len(cache) < 1 << 16:
                cache[token] = raw
            return list(raw if raw is not None else text.encode("utf-8"))
        raw = cache[token]
        return list(raw if raw is not None else text.encode("utf-8"))

    def _anchor(self) -> List[int]:
        """A token that decodes to plain text on its own (the last one of "a"), or [] when none is found."""
        if self._anchor_ids is None:
            tok, self._anchor_ids = self.runtime.tokenizer, []
            try:
                ids = list(tok.encode("a", add_bos=False))
            except Exception:  # noqa: BLE001 - a tokenizer without that signature: decode([t]) alone
                ids = []
            if ids and tok.decode(ids[-1:]).strip():
                self._anchor_ids = ids[-1:]
        return self._anchor_ids

    # ---- errors -----------------------------------------------------------------------------------------
    async def _http_error(self, request: Request, e: HTTPException) -> Response:
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path} (allowed: "
                        f"{(e.headers or {}).get('Allow', '')})"}.get(e.status_code, e.detail)
        self.metrics.request(e.status_code)
        return json_error(e.status_code, message, e.headers)

    async def _request_error(self, request: Request, e: RequestError) -> Response:
        self.metrics.request(e.status)
        return json_error(e.status, str(e), e.headers, close=True)

    async def _server_error(self, request: Request, e: Exception) -> Response:  # a bug of ours: said, not hidden
        status, message = _status_and_message(e)
        self.metrics.request(status)
        return json_error(status, message, close=True)

    # ---- GET --------------------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def _model_object(self) -> dict:
        ctx = self.runtime.context_length
        return {"id": self.model_id, "object": "model", "created": 0, "owned_by": "bllama", "context_length": ctx,
                "max_model_len": ctx}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_object()]})

    async def model(self, request: Request) -> Response:
        model = request.path_params["model"]
        if model != self.model_id:  # as a request naming another model: 404, OpenAI's model_not_found
            raise RequestError(f"the model {model!r} is not served here; this server serves {self.model_id!r} "
                               f"(GET /v1/models)", HTTPStatus.NOT_FOUND)
        return JSONResponse(self._model_object())

    async def metrics_text(self, request: Request) -> Response:
        s = self.scheduler
        return PlainTextResponse(self.metrics.render(s.queue_depth() + self._waiting_to_tokenize, s.running(),
                                                     s.capacity), media_type="text/plain; version=0.0.4")

    # ---- POST -------------------------------------------------------------------------------------------
    async def _body(self, request: Request) -> dict:
        """The JSON body, refused before it is read when too large, and after body_timeout_s when too slow."""
        limit = self.limits.max_body_bytes
        length = request.headers.get("content-length")
        if length is None and "transfer-encoding" not in request.headers:
            raise RequestError("a request body with a Content-Length is required", HTTPStatus.LENGTH_REQUIRED)
        if length is not None and int(length) > limit:  # h11 has checked it is a number
            raise RequestError(f"the request body must be at most {limit} bytes (--max-body-bytes)",
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:  # chunked transfer: no length up front
                    raise RequestError(f"the request body must be at most {limit} bytes (--max-body-bytes)",
                                       HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            raw = await asyncio.wait_for(read(), self.limits.body_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(f"the request body did not arrive within {self.limits.body_timeout_s:g} s "
                               f"(--body-timeout)", HTTPStatus.REQUEST_TIMEOUT) from None
        body = parse_body(raw)
        model = body.get("model")  # another model's name is refused (404, as OpenAI's model_not_found)
        if model is not None and model != self.model_id:
            raise RequestError(f"the model {model!r} is not served here; this server serves {self.model_id!r} "
                               f"(GET /v1/models)", HTTPStatus.NOT_FOUND)
        return body

    def _check_chars(self, n: int) -> None:
        limit = self.limits.prompt_chars(self.runtime.context_length)
        if n > limit:
            raise RequestError(f"the prompt is {n} characters long; at most {limit} are allowed "
                               f"(--max-prompt-chars), and a prompt that long could not fit the context length "
                               f"{self.runtime.context_length} anyway")

    def _options(self, body: dict, chat: bool) -> dict:
        lim = self.limits
        opts = sampling_options(body, chat, lim.max_stop, lim.max_stop_chars, lim.max_n)
        if opts["n"] > lim.max_queue:  # n choices queue n sequences: a 429 on every retry
            raise RequestError(f"'n' is {opts['n']}, but this server queues at most {lim.max_queue} sequences "
                               f"(--max-queue): ask for at most {lim.max_queue} choices")
        return opts

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("'prompt' must be a non-empty string (one prompt per request)")
        check_text(prompt, "'prompt'")
        self._check_chars(len(prompt))
        opts = self._options(body, chat=False)
        return await self._reply(body, "text_completion", "cmpl", lambda rt: rt.encode(prompt), opts, len(prompt))

    async def chat(self, request: Request) -> Response:
        body = await self._body(request)
        messages = chat_messages(body.get("messages"))
        chars = text_length(messages)
        self._check_chars(chars)
        opts = self._options(body, chat=True)
        def prompt_ids(rt) -> List[int]:
            unused_names(rt, messages)
            return rt.chat_prompt_ids(messages)

        return await self._reply(body, "chat.completion", "chatcmpl", prompt_ids, opts, chars)

    async def _tokenize(self, prompt_ids, chars: int) -> List[int]:
        """prompt_ids(runtime) in a worker thread, at most max_tokenizing at once; the waiting ones count against
        max_queue like the sequences waiting for a slot. A prompt of at most INLINE_TOKENIZE_CHARS characters is
        tokenized on the event loop instead (tens of microseconds): the trip to a worker thread and back cost
        ~0.4 ms, 3-5 ms when the engine's threads held both cores (bench/NOTES-serve.md, item 11)."""
        def tokenize(rt) -> List[int]:
            try:
                return prompt_ids(rt)
            except (ValueError, TypeError, KeyError) as e:  # empty prompt, no chat template, a message without content
                raise RequestError(str(e).strip("'\"")) from None

        if chars <= INLINE_TOKENIZE_CHARS:
            return tokenize(self.runtime)
        if self._tokenizing is None:
            self._tokenizing = asyncio.Semaphore(self.limits.max_tokenizing)
        if self._waiting_to_tokenize + self.scheduler.queue_depth() >= self.limits.max_queue:
            raise RequestError(f"the server is busy (--max-queue {self.limits.max_queue}); retry later",
                               HTTPStatus.TOO_MANY_REQUESTS, {"Retry-After": "1"})
        self._waiting_to_tokenize += 1
        try:
            async with self._tokenizing:
                return await asyncio.get_running_loop().run_in_executor(None, tokenize, self.runtime)
        finally:
            self._waiting_to_tokenize -= 1

    async def _reply(self, body: dict, kind: str, prefix: str, prompt_ids, opts: dict, chars: int) -> Response:
        stream = bool_option(body, "stream")
        include_usage = stream_usage(body)
        if opts["logprobs"] is not None and not getattr(self.scheduler, "logprobs", False):
            raise RequestError("logprobs need the continuous scheduler (--scheduler continuous)")
        ids = await self._tokenize(prompt_ids, chars)
        rt = self.runtime
        vocab = getattr(rt, "vocab_size", None)  # checked here, so that no bad prompt fails the others of a batch
        if not ids or (vocab is not None and not all(0 <= t < vocab for t in ids)):
            raise RequestError("the prompt encodes to no tokens" if not ids else
                               f"the prompt has token ids outside the vocabulary [0, {vocab})")
        room = rt.context_length - len(ids)
        if room < 0 or (room == 0 and opts["max_new_tokens"] is None):  # not even one new token fits
            raise RequestError(f"the prompt ({len(ids)} tokens) {'exceeds' if room else 'fills'} the context length "
                               f"{rt.context_length}, leaving no room for new tokens: shorten it")
        if opts["max_new_tokens"] is None:  # as much as asked for by default, as fits in the context
            opts["max_new_tokens"] = min(self.default_max_tokens, room)
        elif opts["max_new_tokens"] > room:  # said here in the request's own terms (the engine says max_new_tokens)
            raise RequestError(f"the prompt ({len(ids)} tokens) + max_tokens ({opts['max_new_tokens']}) exceeds the "
                               f"context length {rt.context_length}: ask for at most {room}")
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        if self._mailbox is None or self._mailbox.loop is not loop:
            self._mailbox = Mailbox(loop)
        post = self._mailbox.post

        def sink(index: int, what: str, value) -> None:  # called from the engine thread
            post(events, (index, what, value))

        seed = opts["sampling"].seed
        jobs = [Job(ids, {**opts, "sampling": opts["sampling"] if seed is None or i == 0 else
                          _with_seed(opts["sampling"], (seed + i) % 2**63)}, stream, sink, index=i)
                for i in range(opts["n"])]
        self.scheduler.submit(jobs)  # 429 when the queue is full, 503 when closing
        return _Reply(self, jobs, events, kind, f"{prefix}-{uuid.uuid4().hex[:24]}", stream, include_usage,
                      opts["logprobs"])


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback pieces


def _byte_level_chars() -> dict:
    """Byte-level BPE's (GPT-2, LLaMA-3) printable stand-in of each byte -> the byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
          *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, extra = {chr(b): b for b in bs}, 0
    for b in range(256):
        if b not in bs:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_LEVEL = _byte_level_chars()


def _piece_bytes(piece: str) -> Optional[bytes]:
    """The bytes a vocabulary piece stands for, when it spells them: <0xC3> (SentencePiece) or byte-level BPE's
    stand-in characters ("\u00c3" for 0xC3); None otherwise."""
    hit = _BYTE_PIECE.fullmatch(piece)
    if hit:
        return bytes([int(hit.group(1), 16)])
    if piece and all(c in _BYTE_LEVEL for c in piece):
        return bytes(_BYTE_LEVEL[c] for c in piece)
    return None


def unused_names(runtime, messages: List[dict]) -> None:
    """RequestError when a message has a `name` (OpenAI's participant name) that the model's chat template does not
    render, such as ChatML's: the model would never see it, and a multi-party chat would read as one speaker's."""
    named = [i for i, m in enumerate(messages) if m.get("name") not in (None, "")]
    if not named:
        return
    for i in named:
        if not isinstance(messages[i]["name"], str):
            raise RequestError(f"message {i}'s 'name' must be a string, got {messages[i]['name']!r:.60}")
        check_text(messages[i]["name"], f"message {i}'s name")
    template = getattr(runtime.tokenizer, "chat_template", None)
    if not template:
        return  # chat_prompt_ids says there is no template
    from ..tokenizers.chat import render_chat

    nameless = [{k: v for k, v in m.items() if k != "name"} for m in messages]
    if render_chat(template, messages) == render_chat(template, nameless):
        raise RequestError(f"message {named[0]} has a 'name', which this model's chat template does not use: the "
                           f"model would not see it. Leave it out, or write it into the content")


def _status_and_message(error: BaseException) -> tuple:
    if isinstance(error, RequestError):
        return error.status, str(error)
    return 500, f"{type(error).__name__}: {error}"


def _with_seed(sampling, seed):
    import dataclasses

    return dataclasses.replace(sampling, seed=seed)


class _Reply(Response):
    """Waits on its jobs' events and answers: one JSON object, or server-sent events as the text comes."""

    def __init__(self, app: ServeApp, jobs: List[Job], events: asyncio.Queue, kind: str, rid: str, stream: bool,
                 include_usage: bool, logprobs: Optional[int]):
        self.app, self.jobs, self.events, self.kind, self.rid = app, jobs, events, kind, rid
        self.stream, self.include_usage, self.logprobs = stream, include_usage, logprobs
        self.created = int(time.time())
        self.chat = kind == "chat.completion"
        self.background = None
        self._counted = False

    async def __call__(self, scope, receive, send) -> None:
        watcher = asyncio.ensure_future(self._watch(receive))
        self._send_raw, self._abort = send, scope.get("bllama.abort")
        try:
            await (self._streamed() if self.stream else self._plain())
        except ClientGone:
            self._count(CLIENT_GONE)
        finally:
            for j in self.jobs:  # a no-op for finished jobs; ends the sequences of a client that is gone
                j.cancelled.set()
            watcher.cancel()

    async def _watch(self, receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        for j in self.jobs:
            j.cancelled.set()
        self.events.put_nowait((None, "gone", None))

    async def _next(self) -> tuple:
        index, what, value = await self.events.get()
        if what == "gone":
            raise ClientGone()
        return index, what, value

    async def _send(self, message: dict) -> None:
        """Sends, or drops the connection of a client that has not read for client_timeout seconds."""
        try:
            await asyncio.wait_for(self._send_raw(message), self.app.limits.client_timeout_s)
        except asyncio.TimeoutError:
            if self._abort is not None:
                self._abort()
            raise ClientGone() from None
        except OSError:
            raise ClientGone() from None

    async def _send_json(self, status: int, obj: dict, headers: Optional[dict] = None) -> None:
        import json

        data = json.dumps(obj).encode("utf-8")
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        head += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
        await self._send({"type": "http.response.start", "status": int(status), "headers": head})
        await self._send({"type": "http.response.body", "body": data})

    def _count(self, status: int, prompt_tokens: int = 0) -> None:
        """Counts this request in /metrics once, by how it ended."""
        if not self._counted:
            self._counted = True
            self.app.metrics.request(status, prompt_tokens)

    async def _error(self, error: BaseException) -> None:
        status, message = _status_and_message(error)
        self._count(status)
        await self._send_json(status, error_object(status, message), {"Connection": "close"})

    async def _plain(self) -> None:
        results = {}
        while len(results) < len(self.jobs):
            index, what, value = await self._next()
            if what == "error":
                return await self._error(value)
            if what == "done":
                results[index] = value
        usage = {k: sum(r["usage"][k] for r in results.values()) for k in ("completion_tokens",)}
        p = len(self.jobs[0].ids)
        usage = {"prompt_tokens": p, "completion_tokens": usage["completion_tokens"],
                 "total_tokens": p + usage["completion_tokens"]}
        choices = [self._choice(i, results[i]) for i in range(len(self.jobs))]
        self._count(200, p)
        await self._send_json(200, {"id": self.rid, "object": self.kind, "created": self.created,
                                    "model": self.app.model_id, "choices": choices, "usage": usage})

    def _choice(self, i: int, result: dict) -> dict:
        lp = self._logprobs(result.get("logprobs") or []) if self.logprobs is not None else None
        if self.chat:
            choice = {"index": i, "message": {"role": "assistant", "content": result["text"]}, "logprobs": lp}
        else:
            choice = {"index": i, "text": result["text"], "logprobs": lp}
        choice["finish_reason"] = result["finish_reason"]
        return choice

    def _logprobs(self, entries, offset: int = 0) -> Optional[dict]:
        """OpenAI's logprobs object for [(token id, logprob, ((id, logprob), ...)), ...]."""
        text = self.app.token_text
        k = self.logprobs
        if self.chat:
            item = lambda t, lp: {"token": text(t), "logprob": lp, "bytes": self.app.token_bytes(t)}
            return {"content": [{**item(t, lp), "top_logprobs": [item(a, b) for a, b in tops[:k]]}
                                for t, lp, tops in entries]}
        tokens = [text(t) for t, _, _ in entries]
        offsets = []
        for s in tokens:
            offsets.append(offset)
            offset += len(s)
        return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [{text(a): b for a, b in tops[:k]} for _, _, tops in entries] if k else None,
                "text_offset": offsets}

    async def _streamed(self) -> None:
        first = await self._next()
        if first[1] == "error":
            return await self._error(first[2])
        await self._send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"connection", b"close")]})
        obj = self.kind + ".chunk" if self.chat else self.kind
        import json

        out: List[bytes] = []  # events not yet written: those that came together go out in one write

        async def event(choices, usage=None):
            chunk = {"id": self.rid, "object": obj, "created": self.created, "model": self.app.model_id,
                     "choices": choices}
            if self.include_usage:
                chunk["usage"] = usage
            out.append(b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n")

        async def flush(last: bytes = b"") -> None:
            body = b"".join(out) + last
            out.clear()
            if body:
                await self._send({"type": "http.response.body", "body": body, "more_body": not last})

        # completions' text_offset counts from the start of the choice's text, across its events (each event's
        # tokens are offset from where the previous event's ended, as in the unstreamed reply)
        text_offset = [0] * len(self.jobs)

        def delta(i: int, text: str, entries=()) -> dict:
            lp = None
            if self.logprobs is not None:
                lp = self._logprobs(list(entries), text_offset[i])
                if not self.chat:
                    text_offset[i] += sum(map(len, lp["tokens"]))
            return {"index": i, "delta": {"content": text}, "logprobs": lp, "finish_reason": None} if self.chat \
                else {"index": i, "text": text, "logprobs": lp, "finish_reason": None}

        if self.chat:
            for i in range(len(self.jobs)):
                await event([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
        done = {}
        index, what, value = first
        while True:
            if what == "delta":
                text, entries = value if isinstance(value, tuple) else (value, ())
                await event([delta(index, text, entries)])
            elif what == "error":  # the 200 and some events are out: the error is the last event
                status, message = _status_and_message(value)
                self._count(status)
                await flush(b"data: " + json.dumps(error_object(status, message)).encode() + b"\n\n")
                return
            else:
                done[index] = value
                end = delta(index, "")
                end["finish_reason"] = value["finish_reason"]
                if self.chat:
                    end["delta"] = {}
                await event([end])
                if len(done) == len(self.jobs):
                    break
            if self.events.empty():  # nothing more has come: what is buffered goes out now
                await flush()
            index, what, value = await self._next()
        p = len(self.jobs[0].ids)
        self._count(200, p)
        if self.include_usage:
            c = sum(r["usage"]["completion_tokens"] for r in done.values())
            await event([], {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
        await flush(b"data: [DONE]\n\n")
