"""`bllama serve` (bllama/server.py): the OpenAI-compatible endpoints give what Runtime gives for the same request,
streamed or not; bad requests get a 400 that names the problem; a client that hangs up mid-stream does not block
the next one; concurrent clients are served one after the other, each with its own answer."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from bllama.runtime import Runtime
from bllama.server import Server

from test_chat import TEMPLATE
from test_i2s import _weights, llama3_style_tokenizer, write_file

PROMPT = "ROMEO:\nWhat say you"
MSGS = [{"role": "user", "content": "Hi"}]


def start(runtime, name):
    server = Server(runtime, ("127.0.0.1", 0), name, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_tiny):
    """(a random-weight file with a chat template, the trained tiny model's file: diverse samples, no template)."""
    from bllama.export import export_gguf

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
    ("/v1/completions", {"prompt": "a", "n": 2}, 400, "'n' is not supported"),
    ("/v1/completions", {"prompt": "a", "presence_penalty": 0.5}, 400, "'presence_penalty' is not supported"),
    ("/v1/completions", {"prompt": "a", "temperature": 5}, 400, "'temperature' must be in [0.0, 2.0]"),
    ("/v1/completions", {"prompt": "a", "max_tokens": "ten"}, 400, "'max_tokens' must be an integer"),
    ("/v1/completions", {"prompt": "a", "stop": 3}, 400, "'stop' must be a string or a list"),
    ("/v1/completions", {"prompt": "word " * 400, "max_tokens": 4}, 400, "context length"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 5000}, 400, "context length"),
    ("/v1/chat/completions", {"messages": []}, 400, "'messages' must be a non-empty list"),
    ("/v1/chat/completions", {"messages": MSGS}, 400, "no chat template"),
    ("/v1/embeddings", {"input": "a"}, 404, "no such endpoint"),
])
def test_bad_requests_say_why(served, path, body, status, message):
    url, _ = served
    got, r = post(url, path, body)
    assert got == status and message in r["error"]["message"], r
    assert r["error"]["type"] == "invalid_request_error"


def test_bad_bodies_models_and_health(served, files):
    url, _ = served
    status, r = post(url, "/v1/completions", None, raw=b"{not json")
    assert status == 400 and "not valid JSON" in r["error"]["message"]
    status, r = post(url, "/v1/completions", None, raw=b"[1, 2]")
    assert status == 400 and "JSON object" in r["error"]["message"]
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


def test_hang_up_mid_stream_frees_the_engine(served):
    url, rt = served
    host, port = url[len("http://"):].split(":")
    body = json.dumps({"prompt": PROMPT, "max_tokens": 100, "temperature": 0.8, "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
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
        url = line.split(" at ")[1].split()[0]
        status, r = post(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3, "temperature": 0})
        assert status == 200 and r["model"] == "cli-model"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
