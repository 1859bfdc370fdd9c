"""`bllama serve`: an OpenAI-compatible HTTP server over one Runtime (Python's standard library only).

    POST /v1/completions       {"prompt": "...", "max_tokens": 64, "temperature": 0, "stream": false, ...}
    POST /v1/chat/completions  {"messages": [{"role": "user", "content": "..."}], ...}  (the file's chat template)
    GET  /v1/models, GET /health

Each connection has its own thread; it tokenizes its request and hands it to the one engine thread, which decodes
waiting requests of the same sampling together (up to the runtime's max_sequences; a seeded request alone, so it
gets exactly its own samples) and sends each its text as the tokens come. A streamed reply (`"stream": true`) goes
out as server-sent events piece by piece. A client that hangs up, or stops reading for `client_timeout` seconds,
ends its own sequence; the others go on. Requests the engine cannot honour (a prompt longer than the context, an
option it does not have, a malformed value) get a 400 with an OpenAI-style error body that names the problem,
never a silently different answer; a request for a model other than the one served gets a 404 naming both.
"""
from __future__ import annotations

import json
import queue
import select
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional, Tuple

from ..sampling import SamplingParams
from .protocol import MAX_BODY, RequestError, bool_option, chat_messages, refuse_constant, sampling_options

@dataclass
class _Job:
    """A tokenized request. The engine thread puts ("delta", text) (streams only), then ("done", result) or
    ("error", exception) on `events`; the handler sets `cancelled` when its client is gone."""

    ids: List[int]
    opts: dict
    stream: bool
    events: "queue.Queue" = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

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

    def done(self, text: str, completion_tokens: int, finish_reason: str) -> None:
        p = len(self.ids)
        self.events.put(("done", {"text": text, "finish_reason": finish_reason, "usage": {
            "prompt_tokens": p, "completion_tokens": completion_tokens, "total_tokens": p + completion_tokens}}))


class Server(ThreadingHTTPServer):
    """An HTTP server bound to one Runtime; `model_id` is the name /v1/models reports and replies carry.
    default_max_tokens: the most new tokens of a request that sets no max_tokens (fewer if the context is fuller).
    client_timeout: seconds a client may stall (not send, not read) before its connection is dropped.
    batch_wait_s: with room in a batch, how long the engine thread waits for more requests before it starts one
    (clients whose replies just went out send their next request within milliseconds)."""

    daemon_threads = True

    def __init__(self, runtime, address: Tuple[str, int], model_id: str, default_max_tokens: int = 256,
                 quiet: bool = False, client_timeout: float = 60.0, batch_wait_s: float = 0.01):
        if default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {default_max_tokens}")
        if not client_timeout > 0:
            raise ValueError(f"client_timeout must be > 0 seconds, got {client_timeout}")
        self.runtime, self.model_id, self.default_max_tokens = runtime, model_id, default_max_tokens
        self.quiet, self.client_timeout, self.batch_wait_s = quiet, client_timeout, batch_wait_s
        # The CPU engine's batched head rounds differently above 8 sequences (docs/engine.md): beyond that a
        # request's greedy answer could differ from its answer alone.
        self.max_batch = int(runtime.config.get("max_sequences", 1))
        if runtime.config.get("device", "cpu") == "cpu":
            self.max_batch = min(self.max_batch, 8)
        self.pending: List[_Job] = []
        self.work = threading.Condition()
        self.batch_sizes: Counter = Counter()  # how many batches of each size ran
        self._closing = False
        self._running: List[_Job] = []
        super().__init__(address, Handler)
        self._engine_thread = threading.Thread(target=self._engine_loop, name="bllama-engine", daemon=True)
        self._engine_thread.start()

    def submit(self, job: _Job) -> None:
        with self.work:
            if self._closing:
                raise RequestError("the server is shutting down", HTTPStatus.SERVICE_UNAVAILABLE)
            self.pending.append(job)
            self.work.notify()

    def server_close(self) -> None:
        """Stops the engine thread: waiting requests get a 503, running ones end at their next token."""
        with self.work:
            self._closing = True
            for j in self.pending:
                j.events.put(("error", RequestError("the server is shutting down", HTTPStatus.SERVICE_UNAVAILABLE)))
            self.pending.clear()
            for j in self._running:
                j.cancelled.set()
            self.work.notify()
        self._engine_thread.join(timeout=30)
        super().server_close()

    def _engine_loop(self) -> None:
        while True:
            with self.work:
                while not self.pending and not self._closing:
                    self.work.wait()
                if self._closing:
                    return
                room = len(self.pending) < self.max_batch
            if room and self.max_batch > 1 and self.batch_wait_s > 0:
                time.sleep(self.batch_wait_s)
            batch: List[_Job] = []
            try:
                with self.work:
                    batch = self._running = self._take_batch()
                if batch:
                    self._run(batch)
            except BaseException as e:  # noqa: BLE001 - the engine thread must outlive any one batch
                for j in batch:  # a handler takes the first end event it sees; a second one is never read
                    j.events.put(("error", e))
            finally:
                with self.work:
                    self._running = []

    def _take_batch(self) -> List[_Job]:
        """The oldest waiting job and up to max_batch - 1 more with its sampling, such that every prompt still fits
        the context with the batch's largest max_tokens (the engine checks every prompt against it)."""
        for j in [j for j in self.pending if j.cancelled.is_set()]:  # their clients left while they waited
            self.pending.remove(j)
            j.events.put(("error", ConnectionResetError("the client hung up")))
        if not self.pending:
            return []
        job = self.pending.pop(0)
        batch, ctx = [job], self.runtime.context_length
        if len(job.ids) + job.n > ctx:
            return batch  # the engine refuses it with its own message
        for j in list(self.pending):
            if len(batch) == self.max_batch:
                break
            top = max(m.n for m in batch + [j])
            if j.key == job.key and all(len(m.ids) + top <= ctx for m in batch + [j]):
                batch.append(j)
                self.pending.remove(j)
        return batch

    def _run(self, batch: List[_Job]) -> None:
        """Decodes a batch; every job ends with exactly one "done" or "error" event."""
        rt = self.runtime
        for j in [j for j in batch if j.n == 0]:  # nothing to decode (the engine would still step them once)
            if len(j.ids) > rt.context_length:
                j.events.put(("error", RequestError(f"the prompt ({len(j.ids)} tokens) exceeds the context length "
                                                    f"{rt.context_length}")))
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
                j.events.put(("error", e))
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
            batch[i].events.put(("error", error))
            finished[i] = True

        def finish(i: int, ended_early: bool) -> None:
            j, t = batch[i], texts[i]
            rest = t.flush()
            if rest and j.stream:
                j.events.put(("delta", rest))
            j.done(t.emitted, used[i], "stop" if t.stopped or ended_early else "length")
            finished[i] = True

        def on_token(i: int, token: int) -> bool:
            j, t = batch[i], texts[i]
            count_batch()
            try:
                used[i] += 1
                delta = t.push(token)
                if delta and j.stream:
                    j.events.put(("delta", delta))
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
        except Exception as e:  # noqa: BLE001 - each waiting handler reports it
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
            body = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant)
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
            body = self._body()
            self._check_model(body)
            route(body)
        except RequestError as e:
            self._reply_error(e.status, str(e))
        except OSError:  # the client hung up or stalled past client_timeout; its generation has been stopped
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug of ours: reported, not hidden behind a dropped connection
            self._reply_error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")

    def _check_model(self, body: dict) -> None:
        """A request naming another model is refused (404, as OpenAI answers model_not_found), not answered by ours;
        a request that names no model gets ours."""
        model = body.get("model")
        if model is not None and model != self.server.model_id:
            raise RequestError(f"the model {model!r} is not served here; this server serves "
                               f"{self.server.model_id!r} (GET /v1/models)", HTTPStatus.NOT_FOUND)

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
        """Tokenizes here, hands the request to the engine thread, answers as JSON or as a stream."""
        stream = bool_option(body, "stream")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise RequestError(f"'stream_options' must be an object, got {options!r}")
        include_usage = bool_option(options or {}, "include_usage")
        rt = self.server.runtime
        try:
            ids = prompt_ids(rt)  # the Runtime's checks: empty prompt, no chat template, a message without content
        except (ValueError, TypeError, KeyError) as e:
            raise RequestError(str(e).strip("'\"")) from None
        vocab = getattr(rt, "vocab_size", None)  # checked here, so that no bad prompt fails the others of a batch
        if not ids or (vocab is not None and not all(0 <= t < vocab for t in ids)):
            raise RequestError("the prompt encodes to no tokens" if not ids else
                               f"the prompt has token ids outside the vocabulary [0, {vocab})")
        if opts["max_new_tokens"] is None:  # as much as asked for by default, as fits in the context
            opts["max_new_tokens"] = max(0, min(self.server.default_max_tokens, rt.context_length - len(ids)))
        rid, created = f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time())
        job = _Job(ids, opts, stream)
        self.server.submit(job)
        try:
            first = self._next_event(job)  # an error before any text (context length, sampling values) is a 400
            if first[0] == "error":
                raise first[1]
            if stream:
                self._stream(kind, rid, created, job, first, include_usage)
            else:
                self._send_json(HTTPStatus.OK, self._final(kind, rid, created, first[1]))
        finally:
            job.cancelled.set()  # a no-op for a finished job; ends the sequence of one whose client is gone

    def _next_event(self, job: _Job) -> tuple:
        """The job's next event; raises ConnectionResetError if the client hangs up while it waits."""
        while True:
            try:
                return job.events.get(timeout=0.05)
            except queue.Empty:
                if self._client_gone():  # nobody will read the reply: end the sequence now
                    raise ConnectionResetError("the client hung up") from None

    def _client_gone(self) -> bool:
        """Whether the client has closed its connection (readable, and a peek reads end of file)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _final(self, kind: str, rid: str, created: int, result: dict) -> dict:
        """The reply object for result {text, finish_reason, usage}."""
        if kind == "chat.completion":
            choice = {"index": 0, "message": {"role": "assistant", "content": result["text"]}}
        else:
            choice = {"index": 0, "text": result["text"], "logprobs": None}
        choice["finish_reason"] = result["finish_reason"]
        return {"id": rid, "object": kind, "created": created, "model": self.server.model_id, "choices": [choice],
                "usage": result["usage"]}

    def _stream(self, kind: str, rid: str, created: int, job: _Job, first: tuple, include_usage: bool) -> None:
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
        kind_, value = first
        while kind_ == "delta":
            event([delta(value)])
            kind_, value = self._next_event(job)
        if kind_ == "error":
            raise value
        end = delta("")
        end["finish_reason"] = value["finish_reason"]
        if chat:
            end["delta"] = {}
        event([end])
        if include_usage:
            event([], value["usage"])
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
