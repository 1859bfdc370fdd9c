"""`bllama serve` (bllama/serve/): the OpenAI-compatible endpoints give what Runtime gives for the same request,
streamed or not; bad requests get a 400 that names the problem; a client that hangs up mid-stream does not block
the next one; concurrent clients are served one after the other, each with its own answer."""
from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from bllama.runtime import Runtime
from bllama.serve.protocol import RequestError
from bllama.serve.server import Server

from test_chat import TEMPLATE
from test_i2s import _weights, llama3_style_tokenizer, write_file

PROMPT = "ROMEO:\nWhat say you"
MSGS = [{"role": "user", "content": "Hi"}]


def start(runtime, name, **kw):
    server = Server(runtime, ("127.0.0.1", 0), name, quiet=True, **kw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_tiny):
    """(a random-weight file with a chat template, the trained tiny model's file: diverse samples, no template)."""
    from bllama.convert.gguf_export import export_gguf

    d = tmp_path_factory.mktemp("serve")
    return (write_file(d / "chat.gguf", _weights(), "tq2_0", "bitnet-b1.58", llama3_style_tokenizer(), False,
                       chat_template=TEMPLATE),
            export_gguf(trained_tiny["model"], trained_tiny["tokenizer"], d / "trained.gguf"))


@pytest.fixture(scope="module")
def served(files):
    """(URL of a server on the trained model, a second Runtime on the same file for the expected answers)."""
    server = start(Runtime.load(files[1], threads=1), "tiny")
    yield server.url, Runtime.load(files[1], threads=1)
    stop(server)


@pytest.fixture(scope="module")
def served_chat(files):
    server = start(Runtime.load(files[0], threads=1), "tiny-chat")
    yield server.url, Runtime.load(files[0], threads=1)
    stop(server)


def post(url, path, body, raw=None):
    """(status, parsed JSON or the list of SSE data payloads)."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            text = r.read().decode()
            if r.headers.get("Content-Type") == "text/event-stream":
                return r.status, [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
            return r.status, json.loads(text)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def expected(rt, **kw):
    """Runtime's answer and its usage/finish reason, computed the way the server reports them."""
    text = rt.chat(MSGS, **kw) if kw.pop("chat", False) else rt.generate(PROMPT, **kw)
    s = rt.stats
    finish = {"stop_token": "stop", "callback": "stop", "length": "length"}[s["stop_reason"]]  # OpenAI's names
    return text, finish, s["prompt_tokens"], s["generated_tokens"]


def test_completion_equals_runtime(served):
    url, rt = served
    text, finish, n_prompt, n_gen = expected(rt, max_new_tokens=12)
    status, r = post(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 12, "temperature": 0})
    assert status == 200, r
    assert r["object"] == "text_completion" and r["model"] == "tiny"
    assert r["choices"][0]["text"] == text and r["choices"][0]["finish_reason"] == finish
    assert r["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": n_gen, "total_tokens": n_prompt + n_gen}
    assert n_prompt == len(rt.tokenizer.encode(PROMPT))
    # sampling with a seed: the same as Runtime with that seed (the engine's own RNG)
    want = [rt.generate(PROMPT, max_new_tokens=24, do_sample=True, temperature=0.9, top_p=0.95, seed=s)
            for s in (11, 12)]
    assert want[0] != want[1] and want[0] != text
    for s, w in zip((11, 12), want):
        status, r = post(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 24, "temperature": 0.9,
                                                  "top_p": 0.95, "seed": s})
        assert status == 200 and r["choices"][0]["text"] == w


def test_stream_equals_plain_reply(served):
    url, rt = served
    _, plain = post(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 12, "temperature": 0})
    status, events = post(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 12, "temperature": 0,
                                                   "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == plain["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_chat_plain_and_streamed(served_chat):
    url, rt = served_chat
    text, finish, n_prompt, n_gen = expected(rt, chat=True, max_new_tokens=10)
    status, r = post(url, "/v1/chat/completions", {"messages": MSGS, "max_tokens": 10, "temperature": 0})
    assert status == 200, r
    assert r["object"] == "chat.completion"
    assert r["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert r["choices"][0]["finish_reason"] == finish and r["usage"]["prompt_tokens"] == n_prompt
    status, events = post(url, "/v1/chat/completions", {"messages": MSGS, "max_completion_tokens": 10,
                                                        "temperature": 0, "stream": True})
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == finish and chunks[-1]["choices"][0]["delta"] == {}
    status, r = post(url, "/v1/chat/completions", {"messages": [{"role": "user"}]})
    assert status == 400 and "message 0" in r["error"]["message"], r


def test_stop_strings_and_zero_tokens(served):
    url, rt = served
    full = rt.generate(PROMPT, max_new_tokens=16)
    stop = full.strip()[1:3]
    assert stop, f"the model's greedy continuation is too short to test stop strings: {full!r}"
    status, r = post(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 16, "temperature": 0, "stop": [stop]})
    assert status == 200 and r["choices"][0]["text"] == full[:full.find(stop)]
    assert r["choices"][0]["finish_reason"] == "stop"
    status, r = post(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 0})
    assert status == 200 and r["choices"][0]["text"] == "" and r["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/completions", {"max_tokens": 4}, 400, "'prompt' must be a non-empty string"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "'prompt' must be a non-empty string"),
    ("/v1/completions", {"prompt": "a", "n": 0}, 400, "'n' must be in [1, 16]"),
    ("/v1/completions", {"prompt": "a", "presence_penalty": 0.5}, 400, "'presence_penalty' is not supported"),
    ("/v1/completions", {"prompt": "a", "temperature": 5}, 400, "'temperature' must be in [0.0, 2.0]"),
    ("/v1/completions", {"prompt": "a", "top_p": 0}, 400, "'top_p' must be in (0.0, 1.0]"),
    ("/v1/completions", {"prompt": "a", "stream": "false"}, 400, "'stream' must be true or false"),
    ("/v1/completions", {"prompt": "a", "stream": True, "stream_options": "x"}, 400, "'stream_options' must be"),
    ("/v1/completions", {"prompt": "a", "response_format": {"type": "json_object"}}, 400, "'response_format' is not"),
    ("/v1/completions", {"prompt": "a", "max_tokens": "ten"}, 400, "'max_tokens' must be an integer"),
    ("/v1/completions", {"prompt": "a", "stop": 3}, 400, "'stop' must be a string or a list"),
    ("/v1/completions", {"prompt": "word " * 400, "max_tokens": 4}, 400, "context length"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 5000}, 400, "+ max_tokens (5000) exceeds the context length"),
    ("/v1/chat/completions", {"messages": []}, 400, "'messages' must be a non-empty list"),
    ("/v1/chat/completions", {"messages": MSGS}, 400, "no chat template"),
    ("/v1/embeddings", {"input": "a"}, 404, "no such endpoint"),
    ("/v1/completions", {"prompt": "a", "model": "gpt-4"}, 404, "'gpt-4' is not served here"),
    ("/v1/chat/completions", {"messages": MSGS, "model": "gpt-4"}, 404, "serves 'tiny'"),
    ("/v1/completions", {"prompt": "a", "model": 3}, 404, "3 is not served"),
    ("/v1/completions", {"prompt": "a", "max_token": 3}, 400, "unknown field 'max_token'"),  # was ignored: 256 tokens
    ("/v1/completions", {"prompt": "a", "messages": MSGS}, 400, "unknown field 'messages'"),
    ("/v1/chat/completions", {"messages": MSGS, "prompt": "a"}, 400, "unknown field 'prompt'"),
])
def test_bad_requests_say_why(served, path, body, status, message):
    url, _ = served
    got, r = post(url, path, body)
    assert got == status and message in r["error"]["message"], r
    assert r["error"]["type"] == "invalid_request_error"


def test_bad_bodies_models_and_health(served, files):
    url, _ = served
    for raw, message in ((b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"),
                         (b'{"prompt": "a", "temperature": NaN}', "NaN"), (b"[" * 100000, "nested too deeply"),
                         (b'{"prompt": "a", "max_tokens": 1e400}', "'max_tokens' must be an integer"),
                         (b'{"prompt": "a", "temperature": 1e400}', "'temperature' must be a number")):
        status, r = post(url, "/v1/completions", None, raw=raw)
        assert status == 400 and message in r["error"]["message"], (raw[:40], r)
    host, port = url[len("http://"):].split(":")
    for headers, status, message in (("Content-Length: -5\r\n", 400, "Content-Length"),
                                     ("", 411, "Content-Length"),
                                     (f"Content-Length: {(8 << 20) + 1}\r\n", 413, "at most")):
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
            reply = s.makefile("rb").read().decode()
        assert reply.startswith(f"HTTP/1.1 {status}") and message in reply, reply
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as resp:
        assert [m["id"] for m in json.loads(resp.read())["data"]] == ["tiny"]
    with urllib.request.urlopen(url + "/health", timeout=30) as resp:
        assert json.loads(resp.read()) == {"status": "ok"}
    # the chat-template file: its own model id
    server = start(Runtime.load(files[0], threads=1), "other")
    try:
        with urllib.request.urlopen(server.url + "/v1/models", timeout=30) as resp:
            assert [m["id"] for m in json.loads(resp.read())["data"]] == ["other"]
    finally:
        stop(server)


def test_hang_up_mid_stream_frees_the_real_engine(served):
    url, rt = served
    host, port = url[len("http://"):].split(":")
    body = json.dumps({"prompt": PROMPT, "max_tokens": 100, "temperature": 0.8, "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert s.recv(64).startswith(b"HTTP/1.1 200")  # the stream has started; hang up now
    text, *_ = expected(rt, max_new_tokens=5)
    status, r = post(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "temperature": 0})
    assert status == 200 and r["choices"][0]["text"] == text


def test_concurrent_clients_each_get_their_answer(served):
    url, rt = served
    prompts = ["ROMEO:", "First Citizen:\nWe are", "The king", "KING HENRY:\nNow"]
    want = [rt.generate(p, max_new_tokens=8) for p in prompts]
    got = [None] * len(prompts)

    def ask(i):
        got[i] = post(url, "/v1/completions", {"prompt": prompts[i], "max_tokens": 8, "temperature": 0})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [g[0] for g in got] == [200] * len(prompts)
    assert [g[1]["choices"][0]["text"] for g in got] == want


def test_cli_serve(files):
    proc = subprocess.Popen([sys.executable, "-m", "bllama.cli", "serve", str(files[1]), "--port", "0",
                             "--threads", "1", "--name", "cli-model"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert "serving" in line and "'cli-model'" in line, line + proc.stderr.read() if proc.poll() is not None else line
        assert "GET /v1/models[/{id}], /health, /metrics)" in line, line
        url = line.split(" at ")[1].split()[0]
        status, r = post(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3, "temperature": 0})
        assert status == 200 and r["model"] == "cli-model"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_prompts_tokenized_inline_or_in_a_worker_get_one_answer(served, served_chat, monkeypatch):
    """Short prompts are tokenized on the event loop, long ones in a worker thread: the same tokens either way, and
    a tokenizer error is a 400 on both paths."""
    import bllama.serve.app as app
    url, rt = served
    chat_url, _ = served_chat
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    chat = {"messages": MSGS, "max_tokens": 6, "temperature": 0}
    assert len(PROMPT) <= app.INLINE_TOKENIZE_CHARS
    inline = post(url, "/v1/completions", body), post(chat_url, "/v1/chat/completions", chat)
    monkeypatch.setattr(app, "INLINE_TOKENIZE_CHARS", 0)
    worker = post(url, "/v1/completions", body), post(chat_url, "/v1/chat/completions", chat)
    for (s1, r1), (s2, r2) in zip(inline, worker):
        assert s1 == s2 == 200 and r1["choices"] == r2["choices"] and r1["usage"] == r2["usage"], (r1, r2)
    assert inline[0][1]["choices"][0]["text"] == rt.generate(PROMPT, 6)
    for limit in (0, 1 << 20):  # the plain-text model has no chat template: the same refusal on both paths
        monkeypatch.setattr(app, "INLINE_TOKENIZE_CHARS", limit)
        status, r = post(url, "/v1/chat/completions", chat)
        assert status == 400 and "template" in r["error"]["message"], r


def test_defaults_fit_the_context_and_harmless_fields_pass(served):
    url, rt = served
    prompt = "ROMEO:"
    while len(rt.encode(prompt + " ROMEO:")) < rt.context_length - 30:  # the default 256 new tokens cannot fit
        prompt += " ROMEO:"
    room = rt.context_length - len(rt.encode(prompt))
    assert 0 < room < 100
    status, r = post(url, "/v1/completions", {"prompt": prompt, "temperature": 0})
    assert status == 200, r
    assert r["usage"]["completion_tokens"] <= room and r["choices"][0]["text"] == rt.generate(prompt, room)
    status, r = post(url, "/v1/completions", {"prompt": PROMPT, "max_completion_tokens": None, "max_tokens": 2,
                                              "temperature": 0, "response_format": {"type": "text"},
                                              "logit_bias": {}, "tools": [], "n": 1, "seed": -7})
    assert status == 200 and r["usage"]["completion_tokens"] <= 2, r
    status, r = post(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2, "model": "tiny", "user": "u-1"})
    assert status == 200 and r["model"] == "tiny", r


def test_content_parts_and_keep_alive(served_chat):
    url, rt = served_chat
    parts = [{"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]}]
    host, port = url[len("http://"):].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    replies = []
    for messages in (MSGS, parts):  # two requests, one connection
        conn.request("POST", "/v1/chat/completions", json.dumps({"messages": messages, "max_tokens": 6,
                                                                 "temperature": 0}))
        resp = conn.getresponse()
        assert resp.status == 200
        replies.append(json.loads(resp.read())["choices"][0]["message"]["content"])
    conn.close()
    assert replies[0] == replies[1] == rt.chat(MSGS, max_new_tokens=6)
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    status, r = post(url, "/v1/chat/completions", {"messages": bad})
    assert status == 400 and "only text content parts" in r["error"]["message"]


class FakeText:
    """A text stream double: each token is `piece`."""

    def __init__(self, piece):
        self.piece, self.emitted, self.stopped = piece, "", False

    def push(self, token):
        self.emitted += self.piece
        return self.piece

    def flush(self):
        return ""


class SlowRuntime:
    """Stands in for Runtime where the server's own behaviour is tested: big pieces, forever, and a record of
    whether the server ended the generation (its callback returning true is what stops the real engine)."""

    path, context_length, config = "slow.gguf", 1 << 30, {"max_sequences": 1}

    def __init__(self):
        self.produced, self.closed = 0, threading.Event()

    def encode(self, prompt):
        return [1, 2, 3]

    def text_stream(self, ids, stop):
        return FakeText("x" * 65536)

    def generate_ids_batch(self, prompt_ids, max_new_tokens, *args, on_token=None):
        out = []
        try:
            for i in range(max_new_tokens):
                time.sleep(0.001)
                self.produced = i + 1
                out.append(1)
                if on_token(0, 1):
                    break
        finally:
            self.closed.set()
        return [out]


def _stream_request(host, port, rcvbuf):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((host, port))
    body = json.dumps({"prompt": "a", "max_tokens": 10**6, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + str(len(body)).encode()
              + b"\r\n\r\n" + body)
    assert s.recv(64).startswith(b"HTTP/1.1 200")
    return s


def test_hang_up_stops_the_generation_and_a_stalled_reader_times_out():
    rt = SlowRuntime()
    server = start(rt, "slow")
    server.limits = server.app.limits = dataclasses.replace(server.limits, client_timeout_s=1.0)
    host, port = server.server_address[:2]
    try:
        _stream_request(host, port, 4096).close()  # hang up
        assert rt.closed.wait(30) and rt.produced < 10**6
        rt.closed.clear()
        rt.produced = 0
        # not streamed: the reply would come at the end, but a client that hangs up ends the generation too
        with socket.create_connection((host, port), timeout=30) as s:
            body = json.dumps({"prompt": "a", "max_tokens": 10**6}).encode()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + str(len(body)).encode()
                      + b"\r\n\r\n" + body)
            deadline = time.monotonic() + 30
            while rt.produced < 5 and time.monotonic() < deadline:  # it has started
                time.sleep(0.01)
        assert rt.closed.wait(30) and rt.produced < 10**6
        rt.closed.clear()
        stalled = _stream_request(host, port, 4096)  # never reads again: the server's writes block
        t0 = time.monotonic()
        status, r = post(server.url, "/v1/completions", {"prompt": "b", "max_tokens": 2})
        assert status == 200 and r["usage"]["completion_tokens"] == 2
        assert rt.closed.is_set() and time.monotonic() - t0 < 30
        stalled.close()
    finally:
        stop(server)


@pytest.fixture(scope="module")
def served_batched(files):
    """A server whose runtime decodes up to 4 sequences together, and a one-sequence Runtime for the answers."""
    server = start(Gated(Runtime.load(files[1], threads=1, max_sequences=4)), "tiny", scheduler="static")
    yield server, Runtime.load(files[1], threads=1)
    stop(server)


class Gated:
    """A runtime whose decoding waits while `gate` is clear (everything else is the wrapped runtime's)."""

    def __init__(self, rt):
        self.rt, self.gate, self.entered = rt, threading.Event(), threading.Event()
        self.gate.set()

    def __getattr__(self, name):
        return getattr(self.rt, name)

    def generate_ids_batch(self, *args, **kw):
        self.entered.set()
        self.gate.wait(60)
        return self.rt.generate_ids_batch(*args, **kw)


def _wait(cond, seconds=60):
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert cond()


def _ask_together(server, bodies, hold_prompt="O"):
    """Sends every body while the engine thread is busy (a request held at the gate), so that they all wait in
    `pending` together before any is decoded; returns the replies in order."""
    got = [None] * (len(bodies) + 1)

    def ask(i, body):
        got[i] = post(server.url, "/v1/completions", body)

    gate = server.runtime.gate
    gate.clear()
    threads = [threading.Thread(target=ask, args=(len(bodies), {"prompt": hold_prompt, "max_tokens": 1, "seed": 1}))]
    server.runtime.entered.clear()
    threads[0].start()
    assert server.runtime.entered.wait(60)  # the engine thread took it and waits at the gate
    assert not server.scheduler.pending
    time.sleep(0.05)
    threads += [threading.Thread(target=ask, args=(i, b)) for i, b in enumerate(bodies)]
    for t in threads[1:]:
        t.start()
    _wait(lambda: len(server.scheduler.pending) == len(bodies))
    gate.set()
    for t in threads:
        t.join(timeout=120)
    return got[:-1]


def test_waiting_requests_decode_together_with_their_own_answers(served_batched):
    server, rt = served_batched
    cases = [("ROMEO:", 16, None), ("First Citizen:\nWe are", 9, None), ("The king", 12, ["e"]),
             ("KING HENRY:\nNow", 10, None), ("JULIET:", 16, None), ("O, ", 8, None)]
    bodies = [{"prompt": p, "max_tokens": n, "temperature": 0, **({"stop": s} if s else {})} for p, n, s in cases]
    before = server.batch_sizes.copy()
    got = _ask_together(server, bodies)
    for (prompt, n, stop_), (status, r) in zip(cases, got):
        want = rt.generate(prompt, max_new_tokens=n, stop=stop_)  # alone, through the engine's callback path
        finish = {"stop_token": "stop", "callback": "stop", "length": "length"}[rt.stats["stop_reason"]]
        assert status == 200, r
        assert r["choices"][0]["text"] == want, prompt
        assert r["choices"][0]["finish_reason"] == finish, prompt
        assert r["usage"]["prompt_tokens"] == rt.stats["prompt_tokens"]
        assert r["usage"]["completion_tokens"] == rt.stats["generated_tokens"], prompt
    # six requests, at most four at a time: two batches (4 + 2); the 1 is _ask_together's held request
    assert server.batch_sizes - before == {4: 1, 2: 1, 1: 1}


def test_seeded_requests_run_alone(served_batched):
    server, rt = served_batched
    bodies = [{"prompt": "ROMEO:", "max_tokens": 16, "temperature": 0.9, "seed": s} for s in (1, 2, 3)]
    before = server.batch_sizes.copy()
    got = _ask_together(server, bodies)  # all three wait for the engine at once, and still must not share it
    for b, (status, r) in zip(bodies, got):
        assert status == 200
        assert r["choices"][0]["text"] == rt.generate("ROMEO:", max_new_tokens=16, do_sample=True, temperature=0.9,
                                                      seed=b["seed"])
    assert server.batch_sizes - before == {1: 4}  # the three and _ask_together's own held request


def test_random_benchmark_model_carries_a_tokenizer(tmp_path, sp_tokenizer):
    """bench/serve_throughput.py's model: write_random_gguf with a SentencePiece tokenizer loads in Runtime."""
    from bllama import bLlamaConfig
    from bllama.tools.bench import write_random_gguf

    cfg = bLlamaConfig.preset("tiny", vocab_size=sp_tokenizer.vocab_size, num_layers=1)
    rt = Runtime.load(write_random_gguf(cfg, tmp_path / "r.gguf", tokenizer=sp_tokenizer), threads=1)
    assert rt.encode("To be") == sp_tokenizer.encode("To be") and isinstance(rt.generate("To be", 4), str)
    with pytest.raises(ValueError, match="vocab_size"):
        write_random_gguf(cfg.replace(vocab_size=cfg.vocab_size + 1), tmp_path / "bad.gguf", tokenizer=sp_tokenizer)


def test_streamed_and_plain_requests_share_a_batch(served_batched):
    server, rt = served_batched
    prompts = ["ROMEO:", "JULIET:", "The king", "O, "]
    bodies = [{"prompt": p, "max_tokens": 10 + 3 * i, "temperature": 0, "stream": i % 2 == 0,
               "stream_options": {"include_usage": True} if i % 2 == 0 else None} for i, p in enumerate(prompts)]
    before = server.batch_sizes.copy()
    got = _ask_together(server, bodies)
    assert server.batch_sizes - before == {4: 1, 1: 1}
    for i, (prompt, (status, r)) in enumerate(zip(prompts, got)):
        want = rt.generate(prompt, max_new_tokens=10 + 3 * i)
        assert status == 200
        if i % 2 == 0:  # SSE: the deltas, then the finish, then the usage, then [DONE]
            chunks = [json.loads(e) for e in r[:-1]]
            assert r[-1] == "[DONE]" and "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == want
            assert chunks[-1]["usage"]["completion_tokens"] == rt.stats["generated_tokens"]
        else:
            assert r["choices"][0]["text"] == want and r["usage"]["completion_tokens"] == rt.stats["generated_tokens"]


def test_batches_keep_sampling_and_lengths_apart(served_batched):
    server, rt = served_batched
    greedy = {"prompt": "ROMEO:", "max_tokens": 12, "temperature": 0}
    bodies = [greedy, {**greedy, "prompt": "JULIET:", "top_p": 0.5},  # greedy ignores top_p: same batch
              {"prompt": "ROMEO:", "max_tokens": 24, "temperature": 0.9}, {"prompt": "ROMEO:", "max_tokens": 24,
                                                                            "temperature": 0.9},
              {**greedy, "repetition_penalty": 1.3}, {**greedy, "prompt": "JULIET:", "repetition_penalty": 1.3},
              {**greedy, "max_tokens": 1}, {**greedy, "max_tokens": 60}]  # each leaves the batch at its own end
    before = server.batch_sizes.copy()
    got = _ask_together(server, bodies)
    assert all(status == 200 for status, _ in got), got
    ran = server.batch_sizes - before
    assert ran == {4: 1, 2: 2, 1: 1}, ran  # 4 greedy, 2 sampled, 2 with the penalty; 1: the held request
    texts = [r["choices"][0]["text"] for _, r in got]
    assert texts[2] != texts[3]  # one batch, unseeded: prompt i samples with its own seed
    assert texts[4] == rt.generate("ROMEO:", 12, repetition_penalty=1.3) != texts[0]
    assert texts[0] == rt.generate("ROMEO:", 12) and texts[6] == rt.generate("ROMEO:", 1)
    assert texts[7] == rt.generate("ROMEO:", 60) and texts[1] == rt.generate("JULIET:", 12)


class BatchRuntime:
    """A runtime double for the batch bookkeeping: prompt [7] ends at EOS after 2 tokens, a prompt holding 666 is
    one the engine refuses, a prompt holding 999 breaks the text stream."""

    path, context_length, vocab_size, config = "fake.gguf", 1000, 1000, {"max_sequences": 4, "device": "cpu"}

    def __init__(self):
        self.calls, self.gate, self.entered = [], threading.Event(), threading.Event()
        self.gate.set()

    def encode(self, prompt):
        return [int(t) for t in prompt.split()]

    def text_stream(self, ids, stop):
        if 999 in ids:
            raise RuntimeError("the text stream broke")
        return FakeText("a")

    def generate_ids_batch(self, prompt_ids, max_new_tokens, *args, on_token=None):
        self.entered.set()
        self.gate.wait(60)
        self.calls.append(len(prompt_ids))
        if any(666 in p for p in prompt_ids):
            raise IndexError("a prompt the engine refuses")
        outs = []
        for i, p in enumerate(prompt_ids):
            outs.append([])
            for t in ([1, 1] if p == [7] else [1] * max_new_tokens):
                outs[-1].append(t)
                if on_token(i, t):
                    break
        return outs


def test_close_answers_waiting_requests_and_refuses_new_ones():
    rt = BatchRuntime()
    server = start(rt, "fake")
    got = {}
    rt.gate.clear()
    held = threading.Thread(target=lambda: got.setdefault("held", post(server.url, "/v1/completions",
                                                                       {"prompt": "5", "max_tokens": 3})))
    held.start()
    assert rt.entered.wait(60)
    waiting = threading.Thread(target=lambda: got.setdefault("waiting", post(server.url, "/v1/completions",
                                                                             {"prompt": "6", "max_tokens": 3})))
    waiting.start()
    _wait(lambda: len(server.scheduler.pending) == 1)
    server.shutdown()  # stops accepting connections; the engine thread still holds "held" at the gate
    closer = threading.Thread(target=server.server_close)
    closer.start()
    waiting.join(30)
    assert got["waiting"][0] == 503 and "shutting down" in got["waiting"][1]["error"]["message"]
    with pytest.raises(RequestError, match="shutting down"):
        server.scheduler.submit([])
    rt.gate.set()  # the running request ends at its next token (cancelled), and the engine thread exits
    closer.join(30)
    held.join(30)
    assert not closer.is_alive() and not server.scheduler._thread.is_alive()


def test_batch_bookkeeping_eos_and_failures():
    rt = BatchRuntime()
    server = start(rt, "fake")
    try:
        ask = lambda prompts: _ask_together(server, [{"prompt": p, "max_tokens": 5, "temperature": 0} for p in prompts],
                                            hold_prompt="5")
        got = ask(("7", "8", "9 9"))
        assert rt.calls == [1, 3]
        assert [(r["choices"][0]["finish_reason"], r["usage"]["completion_tokens"]) for _, r in got] == \
            [("stop", 2), ("length", 5), ("length", 5)]
        # a prompt the engine refuses fails alone: the others of its batch are decoded again without it
        rt.calls.clear()
        got = ask(("8", "666", "9"))
        assert [status for status, _ in got] == [200, 400, 200] and rt.calls == [1, 3, 1, 1, 1]
        assert "refuses" in got[1][1]["error"]["message"]
        # one request's own failure (its text stream) fails it alone; the engine thread goes on
        got = ask(("8", "999", "9"))
        assert [status for status, _ in got] == [200, 500, 200] and not server.scheduler.pending
        assert "text stream broke" in got[1][1]["error"]["message"]
        status, r = post(server.url, "/v1/completions", {"prompt": "8", "max_tokens": 2, "temperature": 0})
        assert status == 200 and r["choices"][0]["text"] == "aa"
        status, r = post(server.url, "/v1/completions", {"prompt": "1000", "max_tokens": 2, "temperature": 0})
        assert status == 400 and "outside the vocabulary" in r["error"]["message"]
    finally:
        stop(server)
