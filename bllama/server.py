"""`bllama serve`: an OpenAI-compatible HTTP server over one Runtime (Python's standard library only).

    POST /v1/completions       {"prompt": "...", "max_tokens": 64, "temperature": 0, "stream": false, ...}
    POST /v1/chat/completions  {"messages": [{"role": "user", "content": "..."}], ...}  (the file's chat template)
    GET  /v1/models, GET /health

One engine serves one request at a time: the others wait for it (a lock), each on its own connection thread, with
their prompts already tokenized. A streamed reply (`"stream": true`) goes out as server-sent events piece by piece;
a client that hangs up, or stops reading for `client_timeout` seconds, ends its generation and frees the engine.
Requests the engine cannot honour (a prompt longer than the context, an option it does not have, a malformed
value) get a 400 with an OpenAI-style error body that names the problem, never a silently different answer.
"""
from __future__ import annotations

import json
import math
import select
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, List, Optional, Tuple

MAX_BODY = 8 << 20  # bytes: a larger request is refused unread (and its connection closed)
FINISH = {"stop_token": "stop", "callback": "stop", "length": "length"}  # engine stop reasons -> OpenAI's
# Fields this server cannot honour, each with the values that mean "not used" (those are accepted).
UNSUPPORTED = {"n": (1,), "best_of": (1,), "frequency_penalty": (0,), "presence_penalty": (0,), "echo": (False,),
               "logprobs": (False, 0), "top_logprobs": (0,), "logit_bias": ({},), "suffix": ("",), "tools": ([],),
               "tool_choice": ("none",), "response_format": ({"type": "text"},)}


class RequestError(ValueError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


def _refuse_constant(name: str):
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


def _flag(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be true or false, got {value!r}")
    return value


def sampling_options(body: dict) -> dict:
    """Runtime keyword arguments from an OpenAI request body (max_new_tokens: None when the request sets none);
    refuses what the engine would not honour."""
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
    return dict(max_new_tokens=_number(body, key, None, int, 0), do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else 1.0,
                top_p=_number(body, "top_p", 1.0, float, 0.0, 1.0, lo_open=True),
                top_k=_number(body, "top_k", 0, int, 0),
                repetition_penalty=_number(body, "repetition_penalty", 1.0, float, 0.0, lo_open=True),
                seed=None if seed is None else seed % 2**63,  # the engine's seeds are non-negative (-1: random)
                stop=stop)


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


@dataclass
class _Job:
    """A non-streamed request waiting for the engine; whichever handler gets the engine first runs it."""

    ids: List[int]
    opts: dict
    result: Optional[dict] = None
    error: Optional[BaseException] = None

    @property
    def key(self) -> tuple:  # requests decode together only with the same sampling (greedy ignores the rest)
        o = self.opts
        if not o["do_sample"]:
            return False, o["repetition_penalty"]
        return True, o["temperature"], o["top_k"], o["top_p"], o["repetition_penalty"]

    @property
    def n(self) -> int:
        return self.opts["max_new_tokens"]


class Server(ThreadingHTTPServer):
    """An HTTP server bound to one Runtime; `model_id` is the name /v1/models reports and replies carry.
    default_max_tokens: the most new tokens of a request that sets no max_tokens (fewer if the context is fuller).
    client_timeout: seconds a client may stall (not send, not read) before its connection is dropped.
    A runtime loaded with max_sequences > 1 decodes waiting non-streamed requests together (greedy ones, and
    sampled ones without a seed: a seeded request runs alone so that it gets exactly its own samples)."""

    daemon_threads = True

    def __init__(self, runtime, address: Tuple[str, int], model_id: str, default_max_tokens: int = 256,
                 quiet: bool = False, client_timeout: float = 60.0, batch_wait_s: float = 0.01):
        if default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {default_max_tokens}")
        if not client_timeout > 0:
            raise ValueError(f"client_timeout must be > 0 seconds, got {client_timeout}")
        self.runtime, self.model_id, self.default_max_tokens = runtime, model_id, default_max_tokens
        self.quiet, self.client_timeout, self.batch_wait_s = quiet, client_timeout, batch_wait_s
        self.engine_lock = threading.Lock()
        # The CPU engine's batched head rounds differently above 8 sequences (docs/engine.md): beyond that a
        # request's greedy answer could differ from its answer alone.
        self.max_batch = int(runtime.config.get("max_sequences", 1))
        if runtime.config.get("device", "cpu") == "cpu":
            self.max_batch = min(self.max_batch, 8)
        self.pending: List[_Job] = []
        self.pending_lock = threading.Lock()
        self.batch_sizes: Counter = Counter()  # how many batches of each size ran
        super().__init__(address, Handler)

    def run_batch(self, job: _Job) -> None:
        """Under the engine lock: decodes `job` with the waiting jobs that can share its steps and sets a result or
        an error on every one of them. With room in the batch it first waits batch_wait_s for more: clients whose
        replies just went out send their next request within milliseconds, and a decode step of a large model
        takes longer than that wait."""
        with self.pending_lock:
            room = len(self.pending) < self.max_batch
        if room and self.batch_wait_s > 0:
            time.sleep(self.batch_wait_s)
        with self.pending_lock:
            batch = self._take_batch(job)
        try:
            self._decode(batch)
        except (ValueError, IndexError) as e:  # the engine's checks cover every prompt: find whose it is
            if len(batch) == 1:
                job.error = RequestError(str(e))
            else:
                for j in batch:
                    self._decode_alone(j)
        except Exception as e:  # noqa: BLE001 - reported by each waiting handler
            for j in batch:
                j.error = e
        finally:
            for j in batch:  # no handler may find its job neither answered nor failed
                if j.result is None and j.error is None:
                    j.error = RuntimeError("the batch this request was in failed")

    def _decode_alone(self, job: _Job) -> None:
        try:
            self._decode([job])
        except (ValueError, IndexError) as e:
            job.error = RequestError(str(e))
        except Exception as e:  # noqa: BLE001
            job.error = e

    def _decode(self, batch: List[_Job]) -> None:
        rt, o = self.runtime, batch[0].opts
        outs = rt.generate_ids_batch([j.ids for j in batch], max(j.n for j in batch), o["do_sample"],
                                     o["temperature"], o["top_k"], o["top_p"], o["repetition_penalty"], None)
        self.batch_sizes[len(batch)] += 1
        for j, out in zip(batch, outs):
            text, used, stopped = rt.text_of(j.ids, out[:j.n], j.opts["stop"])
            j.result = {"text": text, "finish_reason": "stop" if stopped or len(out) < j.n else "length",
                        "usage": {"prompt_tokens": len(j.ids), "completion_tokens": used,
                                  "total_tokens": len(j.ids) + used}}

    def _take_batch(self, job: _Job) -> List[_Job]:
        """job and up to max_batch - 1 waiting jobs with its sampling whose max_tokens are within a factor of 2 of
        its own (the engine decodes every sequence of a batch as far as the longest: a short request must not wait
        long for a long one), such that every prompt still fits the context with the batch's largest max_tokens."""
        self.pending.remove(job)
        batch, ctx = [job], self.runtime.context_length
        if len(job.ids) + job.n > ctx:
            return batch  # the engine refuses it with its own message
        for j in list(self.pending):
            if len(batch) == self.max_batch:
                break
            top = max(m.n for m in batch + [j])
            if j.key == job.key and job.n / 2 <= j.n <= job.n * 2 and all(len(m.ids) + top <= ctx for m in batch + [j]):
                batch.append(j)
                self.pending.remove(j)
        return batch

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive for JSON replies; a stream closes its connection at its end
    _streaming = False

    def setup(self):
        self.timeout = self.server.client_timeout  # StreamRequestHandler applies it to the socket
        super().setup()

    # ---- plumbing ---------------------------------------------------------------------------------------
    def log_message(self, fmt, *args):
        if not self.server.quiet:
            super().log_message(fmt, *args)

    def _send_json(self, status: int, obj: dict, close: bool = False) -> None:
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str) -> None:
        error = {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                 "code": int(status)}
        if self._streaming:  # the 200 and some events are out: the error is the last event
            self.wfile.write(b"data: " + json.dumps({"error": error}).encode("utf-8") + b"\n\n")
            self.wfile.flush()
            self.close_connection = True
            return
        # The body may be unread: nothing more can be parsed from this connection.
        self._send_json(status, {"error": error}, close=True)

    def _body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError("a request body with a Content-Length is required", HTTPStatus.LENGTH_REQUIRED)
        if not length.strip().isdigit():
            raise RequestError(f"invalid Content-Length {length!r}")
        if int(length) > MAX_BODY:
            raise RequestError(f"the request body must be at most {MAX_BODY} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(f"the request body is not valid JSON: {e}") from None
        except RecursionError:
            raise RequestError("the request body is nested too deeply") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    def do_GET(self):
        if self.path == "/health":
            self._send_json(HTTPStatus.OK, {"status": "ok"})
        elif self.path == "/v1/models":
            self._send_json(HTTPStatus.OK, {"object": "list", "data": [
                {"id": self.server.model_id, "object": "model", "created": 0, "owned_by": "bllama"}]})
        else:
            self._send_error(HTTPStatus.NOT_FOUND, f"no such endpoint: GET {self.path}")

    def do_POST(self):
        self._streaming = False
        routes = {"/v1/completions": self._completions, "/v1/chat/completions": self._chat}
        try:
            route = routes.get(self.path)
            if route is None:
                raise RequestError(f"no such endpoint: POST {self.path}", HTTPStatus.NOT_FOUND)
            route(self._body())
        except RequestError as e:
            self._reply_error(e.status, str(e))
        except OSError:  # the client hung up or stalled past client_timeout; its generation has been stopped
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug of ours: reported, not hidden behind a dropped connection
            self._reply_error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")

    def _reply_error(self, status: int, message: str) -> None:
        try:
            self._send_error(status, message)
        except OSError:
            self.close_connection = True

    # ---- endpoints --------------------------------------------------------------------------------------
    def _completions(self, body: dict) -> None:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("'prompt' must be a non-empty string (one prompt per request)")
        opts = sampling_options(body)
        self._reply(body, "text_completion", "cmpl", lambda rt: rt.encode(prompt), opts)

    def _chat(self, body: dict) -> None:
        messages = chat_messages(body.get("messages"))
        opts = sampling_options(body)
        self._reply(body, "chat.completion", "chatcmpl", lambda rt: rt.chat_prompt_ids(messages), opts)

    def _reply(self, body: dict, kind: str, prefix: str, prompt_ids, opts: dict) -> None:
        """Tokenizes (outside the engine lock), then generates under it; answers as JSON or as a stream."""
        stream = _flag(body, "stream")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise RequestError(f"'stream_options' must be an object, got {options!r}")
        include_usage = _flag(options or {}, "include_usage")
        rt = self.server.runtime
        try:
            ids = prompt_ids(rt)  # the Runtime's checks: empty prompt, no chat template, a message without content
        except (ValueError, TypeError, KeyError) as e:
            raise RequestError(str(e).strip("'\"")) from None
        if opts["max_new_tokens"] is None:  # as much as asked for by default, as fits in the context
            opts["max_new_tokens"] = max(0, min(self.server.default_max_tokens, rt.context_length - len(ids)))
        rid, created = f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time())
        srv = self.server
        if not stream and srv.max_batch > 1 and (not opts["do_sample"] or opts["seed"] is None):
            vocab = getattr(rt, "vocab_size", None)  # checked here so that no bad prompt fails a whole batch
            if not ids or (vocab is not None and not all(0 <= t < vocab for t in ids)):
                raise RequestError("the prompt encodes to no tokens" if not ids else "the prompt has token ids "
                                   f"outside the vocabulary [0, {vocab})")
            job = _Job(ids, opts)
            with srv.pending_lock:
                srv.pending.append(job)
            with srv.engine_lock:
                if job.result is None and job.error is None:  # else a batch that ran meanwhile took it
                    srv.run_batch(job)
            if job.error is not None:
                raise job.error
            self._send_json(HTTPStatus.OK, self._final(kind, rid, created, job.result))
            return
        with self.server.engine_lock:
            pieces = rt.stream_ids(ids, **opts)
            try:
                try:
                    first = next(pieces, None)  # the engine's checks (context length, sampling values) raise here
                except (ValueError, IndexError) as e:
                    raise RequestError(str(e)) from None
                if not stream:
                    parts = [first or ""]
                    for piece in pieces:
                        parts.append(piece)
                        if self._client_gone():  # nobody will read the reply: stop the engine now
                            raise ConnectionResetError("the client hung up")
                    text = "".join(parts)
                    result = {"text": text, "finish_reason": self._finish_reason(), "usage": self._usage()}
                    self._send_json(HTTPStatus.OK, self._final(kind, rid, created, result))
                    return
                self._stream(kind, rid, created, first, pieces, include_usage)
            finally:
                pieces.close()  # a client gone mid-stream stops the engine here

    def _client_gone(self) -> bool:
        """Whether the client has closed its connection (readable, and a peek reads end of file)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _usage(self) -> dict:
        s = self.server.runtime.stats
        return {"prompt_tokens": s.get("prompt_tokens", 0), "completion_tokens": s.get("generated_tokens", 0),
                "total_tokens": s.get("prompt_tokens", 0) + s.get("generated_tokens", 0)}

    def _finish_reason(self) -> str:
        return FINISH.get(self.server.runtime.stats.get("stop_reason"), "stop")

    def _final(self, kind: str, rid: str, created: int, result: dict) -> dict:
        """The reply object for result {text, finish_reason, usage}."""
        if kind == "chat.completion":
            choice = {"index": 0, "message": {"role": "assistant", "content": result["text"]}}
        else:
            choice = {"index": 0, "text": result["text"], "logprobs": None}
        choice["finish_reason"] = result["finish_reason"]
        return {"id": rid, "object": kind, "created": created, "model": self.server.model_id, "choices": [choice],
                "usage": result["usage"]}

    def _stream(self, kind: str, rid: str, created: int, first: Optional[str], pieces: Iterator[str],
                include_usage: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the end of the stream is the end of the connection
        self.end_headers()
        self.close_connection = self._streaming = True
        chat = kind == "chat.completion"
        obj = kind + ".chunk" if chat else kind

        def event(choices, usage=None):
            chunk = {"id": rid, "object": obj, "created": created, "model": self.server.model_id, "choices": choices}
            if include_usage:
                chunk["usage"] = usage
            self.wfile.write(b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n")
            self.wfile.flush()

        def delta(text: str) -> dict:
            return {"index": 0, "delta": {"content": text}, "finish_reason": None} if chat else \
                {"index": 0, "text": text, "logprobs": None, "finish_reason": None}

        if chat:
            event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        if first:
            event([delta(first)])
        for piece in pieces:
            event([delta(piece)])
        end = delta("")
        end["finish_reason"] = self._finish_reason()
        if chat:
            end["delta"] = {}
        event([end])
        if include_usage:
            event([], self._usage())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def serve(runtime, host: str = "127.0.0.1", port: int = 8080, model_id: Optional[str] = None,
          default_max_tokens: int = 256) -> None:
    """Serves `runtime` until interrupted (Ctrl-C)."""
    from pathlib import Path

    try:
        server = Server(runtime, (host, port), model_id or Path(runtime.path).stem, default_max_tokens)
    except OSError as e:  # the port is taken, the address is not this machine's, ...
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    print(f"serving {runtime.path} as '{server.model_id}' at {server.url} "
          f"(OpenAI-compatible: POST /v1/completions, POST /v1/chat/completions; GET /v1/models, /health)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
