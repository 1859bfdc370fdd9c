"""`bllama serve` with continuous batching (issue #15): a request joining a running batch gets exactly the answer
it gets alone (greedy, or sampled with its seed), a chat's next turn reuses the kept cache and still answers as a
cold one, logprobs are the log-softmax of the model's logits, n > 1 are separate seeded sequences, and a client
that hangs up frees its slot."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("uvicorn")

from bllama import Runtime  # noqa: E402
from bllama.serve.server import Server  # noqa: E402

from test_server import post  # noqa: E402
from test_slots import model_path  # noqa: E402,F401 - the same random chat model the engine's slot tests use


@pytest.fixture(scope="module")
def served(model_path):
    """(server with 4 slots, continuous; a one-sequence Runtime on the same file for the expected answers). A step
    budget of 5 rows makes joining prompts span several steps, mixed with the running decodes."""
    server = Server(Runtime.load(model_path, threads=1, max_sequences=4), ("127.0.0.1", 0), "m", quiet=True,
                    scheduler="continuous", step_tokens=5)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, Runtime.load(model_path, threads=1)
    server.shutdown()
    server.server_close()


def _wait(cond, seconds=60):
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert cond()


def test_requests_joining_a_running_batch_get_their_solo_answers(served):
    server, rt = served
    host, port = server.server_address[:2]
    long_body = json.dumps({"prompt": "The long one", "max_tokens": 200, "temperature": 0, "stream": True}).encode()
    s = socket.create_connection((host, port), timeout=120)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + str(len(long_body)).encode()
              + b"\r\n\r\n" + long_body)
    reader = s.makefile("rb")
    assert reader.readline().startswith(b"HTTP/1.1 200")
    _wait(lambda: server.scheduler.running() == 1)
    joined = server.scheduler.joined_running
    bodies = [{"prompt": "ROMEO:", "max_tokens": 12, "temperature": 0},
              {"prompt": "To be or", "max_tokens": 16, "temperature": 0.9, "top_k": 40, "seed": 5},
              {"prompt": "ROMEO:", "max_tokens": 16, "temperature": 0.8, "top_p": 0.9, "seed": 6},
              {"prompt": "JULIET: ah", "max_tokens": 9, "temperature": 0, "repetition_penalty": 1.3, "stop": ["e"]}]
    got = [None] * len(bodies)
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, post(server.url, "/v1/completions", bodies[i])))
               for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert server.scheduler.joined_running - joined >= len(bodies) - 1  # they joined a running batch
    assert server.scheduler.slots.step_tokens == 5
    for b, (status, r) in zip(bodies, got):
        want = rt.generate(b["prompt"], max_new_tokens=b["max_tokens"], do_sample=b["temperature"] > 0,
                           temperature=b["temperature"] or 1.0, top_k=b.get("top_k", 0), top_p=b.get("top_p", 1.0),
                           seed=b.get("seed"), repetition_penalty=b.get("repetition_penalty", 1.0),
                           stop=b.get("stop"))
        assert status == 200 and r["choices"][0]["text"] == want, (b, r)
        assert r["usage"]["completion_tokens"] == rt.stats["generated_tokens"]
    rest = reader.read().decode()  # the long one, to its end
    s.close()
    # chunked transfer: each event is its own chunk
    text = "".join(json.loads(e)["choices"][0]["text"] for e in re.findall(r"data: (\{.*\})\n\n", rest))
    assert text == rt.generate("The long one", max_new_tokens=200)


def test_chat_turns_reuse_the_cache_and_answer_as_cold(served):
    server, rt = served
    messages = [{"role": "user", "content": "Hello there, how are you?"}]
    for turn in range(3):
        before = server.metrics.cached_tokens
        status, r = post(server.url, "/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0})
        assert status == 200
        rt.reset_cache()  # the expected answer from a cold cache
        assert r["choices"][0]["message"]["content"] == rt.chat(messages, max_new_tokens=8)
        if turn:  # the history is in a kept slot: only the new turn is prefilled
            assert server.metrics.cached_tokens - before >= len(rt.chat_prompt_ids(messages[:-2])) - 1
        messages = messages + [r["choices"][0]["message"], {"role": "user", "content": f"And turn {turn}?"}]


def test_logprobs_are_the_models(served):
    server, rt = served
    status, r = post(server.url, "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 3, "temperature": 0,
                                                     "logprobs": 3})
    assert status == 200, r
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 3 == len(lp["token_logprobs"]) == len(lp["top_logprobs"])
    ids = rt.encode("ROMEO:")
    logits = rt.logits(ids)[-1].astype(np.float64)
    want = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    best = np.argsort(-want)[:3]
    assert abs(lp["token_logprobs"][0] - want[best[0]]) < 1e-3
    assert [round(v, 3) for v in lp["top_logprobs"][0].values()] == [round(want[b], 3) for b in best] or \
        len(set(rt.tokenizer.decode([b]) for b in best)) < 3  # two ids may print alike
    status, r = post(server.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                          "max_tokens": 2, "temperature": 0, "logprobs": True,
                                                          "top_logprobs": 2})
    content = r["choices"][0]["logprobs"]["content"]
    assert status == 200 and len(content) == 2 and all(len(c["top_logprobs"]) == 2 for c in content)
    assert content[0]["logprob"] == pytest.approx(content[0]["top_logprobs"][0]["logprob"], abs=1e-6)
    status, events = post(server.url, "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 3, "temperature": 0,
                                                          "logprobs": 0, "stream": True})
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = [v for c in chunks for v in (c["choices"][0]["logprobs"] or {}).get("token_logprobs", [])]
    assert streamed == pytest.approx(lp["token_logprobs"], abs=1e-6)


def test_logprob_tokens_keep_their_leading_space(served):
    server, rt = served
    tok = rt.tokenizer
    spaced = [i for i in range(tok.vocab_size) if tok.id_to_piece(i).startswith("\u2581") and len(tok.id_to_piece(i)) > 1
              and tok.decode([i]).strip()][:50]
    assert spaced  # a SentencePiece vocabulary has word-initial pieces
    for i in spaced:  # decode([i]) alone drops the space a word-initial piece carries inside a text
        assert server.app.token_text(i) == " " + tok.id_to_piece(i)[1:], tok.id_to_piece(i)
    status, r = post(server.url, "/v1/completions", {"prompt": "ROMEO: the", "max_tokens": 12, "temperature": 0,
                                                     "logprobs": 0})
    assert status == 200, r
    tokens, text = r["choices"][0]["logprobs"]["tokens"], r["choices"][0]["text"]
    if "\ufffd" not in "".join(tokens):  # byte tokens of one character print as U+FFFD each
        assert "".join(tokens) == text
        assert r["choices"][0]["logprobs"]["text_offset"] == [len("".join(tokens[:k])) for k in range(len(tokens))]


def test_streamed_logprobs_are_the_unstreamed_ones(served):
    """Every field of a completion's logprobs object, gathered from its events, is the unstreamed reply's:
    text_offset used to restart at 0 in every event."""
    server, _ = served
    body = {"prompt": "ROMEO:", "max_tokens": 12, "temperature": 0.9, "seed": 3, "logprobs": 2, "n": 2}
    status, plain = post(server.url, "/v1/completions", body)
    assert status == 200, plain
    status, events = post(server.url, "/v1/completions", {**body, "stream": True})
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    for choice in plain["choices"]:
        want = choice["logprobs"]
        assert len(want["tokens"]) == 12 and want["text_offset"][-1] > 0
        mine = [c["logprobs"] for c in chunks if c["index"] == choice["index"]]
        got = {k: [v for lp in mine for v in lp[k]] for k in want}
        assert got == want
        assert "".join(c["text"] for c in chunks if c["index"] == choice["index"]) == choice["text"]


def test_logprob_bytes_of_byte_tokens_are_their_own(served):
    """A character split over byte tokens: each token's text is U+FFFD, and its logprobs `bytes` are its own byte(s)
    (they were U+FFFD's three bytes), so that joined they give the reply's text, in SentencePiece's byte fallback
    (<0xC3>) and in byte-level BPE (LLaMA-3)."""
    from types import SimpleNamespace

    from bllama.serve.app import ServeApp, _Reply
    from test_i2s import llama3_style_tokenizer

    server, rt = served
    text = "Stra\u00dfe \u0436 \u2603 \U0001F980!"  # characters the test tokenizers have no piece for
    for app, ids in ((server.app, rt.encode(text)),
                     (ServeApp(SimpleNamespace(tokenizer=llama3_style_tokenizer()), server.scheduler, server.metrics,
                               "m"), None)):
        tok = app.runtime.tokenizer
        ids = ids if ids is not None else tok.encode(text, add_bos=False)
        assert any(app.token_text(t) == "\ufffd" for t in ids)  # the test needs byte tokens
        reply = _Reply(app, [], None, "chat.completion", "id", False, False, 1)
        content = reply._logprobs([(t, -1.0, ((t, -1.0),)) for t in ids])["content"]
        # (a SentencePiece word-initial piece keeps its space, as inside a reply)
        assert b"".join(bytes(c["bytes"]) for c in content).decode("utf-8").lstrip(" ") == text
        assert [c["top_logprobs"][0]["bytes"] for c in content] == [c["bytes"] for c in content]


def test_a_name_the_template_drops_is_refused(served):
    """OpenAI's message `name` under a template that does not render it (this one, as ChatML) was dropped without a
    word: the model answered as if one speaker had said everything."""
    server, rt = served
    url = server.url
    hi = {"role": "user", "content": "Hi"}
    named = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi", "name": "alice"}]
    status, r = post(url, "/v1/chat/completions", {"messages": named, "max_tokens": 2})
    assert status == 400 and "message 1 has a 'name', which this model's chat template does not use" in \
        r["error"]["message"], r
    status, r = post(url, "/v1/chat/completions", {"messages": [{**hi, "name": ["x"]}], "max_tokens": 2})
    assert status == 400 and "message 0's 'name' must be a string" in r["error"]["message"], r
    status, r = post(url, "/v1/chat/completions", {"messages": [{**hi, "name": None}], "max_tokens": 3,
                                                   "temperature": 0})  # no name: as without the field
    assert status == 200 and r["choices"][0]["message"]["content"] == rt.chat([hi], max_new_tokens=3)


def test_a_name_the_template_renders_passes():
    from types import SimpleNamespace

    from bllama.serve.app import unused_names

    template = "{% for m in messages %}{{ m.role }}{% if m.name %} {{ m.name }}{% endif %}: {{ m.content }}\n{% endfor %}"
    unused_names(SimpleNamespace(tokenizer=SimpleNamespace(chat_template=template)),
                 [{"role": "user", "content": "Hi", "name": "alice"}])


def test_n_choices_are_separate_seeded_slots(served):
    server, rt = served
    status, r = post(server.url, "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 10, "temperature": 0.9,
                                                     "seed": 40, "n": 3})
    assert status == 200 and [c["index"] for c in r["choices"]] == [0, 1, 2]
    want = [rt.generate("ROMEO:", max_new_tokens=10, do_sample=True, temperature=0.9, seed=40 + i) for i in range(3)]
    assert [c["text"] for c in r["choices"]] == want and len(set(want)) > 1
    status, events = post(server.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                               "max_tokens": 5, "temperature": 0, "n": 2,
                                                               "stream": True})
    chunks = [json.loads(e) for e in events[:-1]]
    texts = ["".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"][0]["index"] == i)
             for i in range(2)]
    assert texts[0] == texts[1] == rt.chat([{"role": "user", "content": "Hi"}], max_new_tokens=5)


def test_hang_up_frees_the_slot(served):
    server, rt = served
    host, port = server.server_address[:2]
    # greedy: a sampled reply may draw the end-of-text token early and finish before the test sees it running
    body = json.dumps({"prompt": "ROMEO:", "max_tokens": 500, "temperature": 0, "stream": True}).encode()
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " + str(len(body)).encode()
                  + b"\r\n\r\n" + body)
        assert s.recv(64).startswith(b"HTTP/1.1 200")
        _wait(lambda: server.scheduler.running() == 1)
    _wait(lambda: server.scheduler.running() == 0 and server.scheduler.slots.active() == 0, 30)
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    assert "bllama_running_sequences 0" in text and "bllama_slots 4" in text


def test_a_bad_step_budget_is_refused_before_serving(model_path):
    with pytest.raises(ValueError, match="step_tokens"):
        Server(Runtime.load(model_path, threads=1, max_sequences=2), ("127.0.0.1", 0), "m", quiet=True,
               scheduler="continuous", step_tokens=0)


def test_bench_clients_read_the_same_stream(served):
    """bench/serve_open_loop.py's two load clients (asyncio with HTTP/1.1 by hand, and urllib in threads) read the
    same text, usage and event count from one streamed reply, and both count a refused request as its status."""
    import asyncio
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from serve_open_loop import astream_request, stream_request

    server, rt = served
    body = {"prompt": "ROMEO:", "max_tokens": 24, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    a = asyncio.run(astream_request(server.url, "/v1/completions", body))
    t = stream_request(server.url, "/v1/completions", body)
    assert a["status"] == t["status"] == 200
    assert a["text"] == t["text"] == rt.generate("ROMEO:", max_new_tokens=24)
    assert a["tokens"] == t["tokens"] == 24 and len(a["events"]) == len(t["events"]) > 1
    bad = {**body, "max_tokens": -1}
    assert asyncio.run(astream_request(server.url, "/v1/completions", bad))["status"] == 400


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_a_polling_engine_thread_answers_as_a_sleeping_one_and_stops_at_once(model_path, scheduler):
    """--poll: requests that arrive while the idle engine thread spins (not sleeps) get the answers they get alone,
    the spin sees each arrival (the doorbell rings once per request), and closing ends a 60 s spin at once."""
    server = Server(Runtime.load(model_path, threads=1, max_sequences=2), ("127.0.0.1", 0), "m", quiet=True,
                    scheduler=scheduler, poll_s=60.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rt = Runtime.load(model_path, threads=1)
    try:
        for i, prompt in enumerate(["ROMEO:", "To be or", "JULIET: ah"]):
            time.sleep(0.05)  # the engine thread is idle, spinning on the doorbell
            status, r = post(server.url, "/v1/completions", {"prompt": prompt, "max_tokens": 8, "temperature": 0})
            assert status == 200 and r["choices"][0]["text"] == rt.generate(prompt, max_new_tokens=8)
            assert server.scheduler._bell.rings() == i + 1
    finally:
        t0 = time.monotonic()
        server.shutdown()
        server.server_close()
        assert time.monotonic() - t0 < 10  # the close rang the bell: no 60 s spin to sit out


@pytest.mark.parametrize("bad", [-1, 61, float("nan"), float("inf"), True, "1"])
def test_a_bad_poll_is_refused_before_serving(model_path, bad):
    with pytest.raises(ValueError, match="poll"):
        Server(Runtime.load(model_path, threads=1, max_sequences=2), ("127.0.0.1", 0), "m", quiet=True,
               scheduler="continuous", poll_s=bad)


def test_a_script_that_exits_without_closing_the_server_exits_cleanly(model_path, tmp_path):
    """The engine thread comes back from its idle spin while the interpreter finalizes (a module-level object's
    __del__ holds finalization for 1.5 s): the scheduler is closed at exit, so the process ends with 0 instead of
    aborting in the bindings ("terminate called without an active exception", status 134 before the fix)."""
    script = tmp_path / "exits.py"
    script.write_text(f"""
import json, threading, time, urllib.request
class SlowTeardown:
    def __del__(self):
        time.sleep(1.5)
keep = SlowTeardown()
from bllama import Runtime
from bllama.serve.server import Server
srv = Server(Runtime.load({str(model_path)!r}, threads=1, max_sequences=1), ("127.0.0.1", 0), "t", quiet=True,
             scheduler="continuous", poll_s=1.0)
threading.Thread(target=srv.serve_forever, daemon=True).start()
req = urllib.request.Request(srv.url + "/v1/completions", data=json.dumps({{"prompt": "hi", "max_tokens": 2}}).encode(),
                             headers={{"Content-Type": "application/json"}})
print(urllib.request.urlopen(req, timeout=60).status)
""")
    root = Path(__file__).resolve().parents[1]  # this tree's bllama
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert p.returncode == 0 and p.stdout.strip() == "200" and "terminate" not in p.stderr, (p.returncode, p.stderr)
