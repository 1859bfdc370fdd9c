"""A fuzz of `bllama serve` over raw sockets: malformed request lines, headers and bodies, odd JSON values, slow
clients and hang-ups, from many clients at once. Every answer must be an HTTP response with a JSON body and a
status below 500 (503 only for overload), and the server must still answer a plain request correctly afterwards.

    python bench/serve_fuzz.py --seconds 600 --clients 32            # against an in-process server on a random model
    python bench/serve_fuzz.py --url http://127.0.0.1:8080 --seconds 60

tests/test_server_limits.py runs fuzz() for a few seconds in CI.
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

WEIRD = [None, True, False, 0, -1, 1, 2**31, 2**63, -2**63 - 1, 2**64, 10**400, 1.5, -0.0, 1e308, "", "x", "\u00e9",
         "\ud800", "\udfff\ud800", "0", "NaN", [], [1], ["a"] * 40, {}, {"a": 1}, [[[[[]]]]], "a" * 5000, " " * 300]
FIELDS = ["prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed",
          "stop", "stream", "stream_options", "n", "logprobs", "top_logprobs", "model", "repetition_penalty",
          "response_format", "echo", "best_of", "logit_bias", "suffix"]
PATHS = ["/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/", "/v1/../x", "/%ff",
         "/v1/completions?x=1", "*", "/" + "a" * 3000]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO", "G\x00T"]


def _body(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        body = {"prompt": rng.choice(["ROMEO:", "a", "\u00e9t\u00e9", "x " * 50]), "max_tokens": rng.randint(0, 6)}
    else:
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": rng.randint(0, 6)}
    for _ in range(rng.randint(0, 4)):
        body[rng.choice(FIELDS)] = rng.choice(WEIRD)
    if rng.random() < 0.3:
        body["stream"] = True
    try:
        raw = json.dumps(body).encode()
    except ValueError:
        raw = b"{}"
    r = rng.random()
    if r < 0.1:
        raw = raw[:rng.randint(0, len(raw))]
    elif r < 0.2:
        raw = bytes(b if rng.random() > 0.05 else rng.randrange(256) for b in raw)
    elif r < 0.25:
        raw = b"[" * rng.randint(1, 200000)
    elif r < 0.3:
        raw = b'{"max_tokens": ' + b"9" * rng.choice([400, 5000]) + b"}"
    return raw


def _request(rng: random.Random, host: str) -> tuple:
    """(bytes to send, how: "full" / "hangup" / "slow" / "short-body")."""
    body = _body(rng)
    method = "POST" if rng.random() < 0.8 else rng.choice(METHODS)
    path = rng.choice(PATHS[:2]) if rng.random() < 0.8 else rng.choice(PATHS)
    headers = [f"Host: {host}", "Content-Type: application/json"]
    r = rng.random()
    if r < 0.05:
        headers.append("Content-Length: " + rng.choice(["-5", "\u0661\u0662", "1e3", "", "99999999999999999999",
                                                        "12, 13", " 7"]))
    elif r < 0.1:
        headers.append("Transfer-Encoding: chunked")
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n" if rng.random() < 0.7 else b"zz\r\n" + body
    else:
        headers.append(f"Content-Length: {len(body)}")
    if rng.random() < 0.05:
        headers.append(rng.choice(["X: " + "a" * 20000, "Bad Header", "Origin: http://evil.example",
                                   "Content-Type: text/plain", "Host: second", "\x00: x"]))
    line = f"{method} {path} HTTP/1.1"
    if rng.random() < 0.03:
        line = rng.choice(["GARBAGE", "GET / HTTP/9.9", "POST /v1/completions", "\x16\x03\x01\x00"])
    data = ("\r\n".join([line] + headers) + "\r\n\r\n").encode("utf-8", "surrogatepass") + body
    if rng.random() < 0.03:
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    how = rng.choices(["full", "hangup", "slow", "short-body"], [0.75, 0.1, 0.05, 0.1])[0]
    return data, how


def _check(reply: bytes, head_request: bool = False) -> str:
    """'' if the reply is acceptable, else what is wrong with it."""
    if not reply:
        return ""  # the server closed the connection (malformed input it would not answer, or our hang-up)
    if not reply.startswith(b"HTTP/1.1 "):
        return f"not an HTTP response: {reply[:60]!r}"
    status = int(reply[9:12])
    head, _, body = reply.partition(b"\r\n\r\n")
    if b"content-length:" in head.lower():  # the first reply only (a malformed rest of the input has its own)
        body = body[:int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])]
    if status >= 500 and status != 503:
        return f"status {status}: {body[:200]!r}"
    if status >= 400 and not head_request:  # a reply to HEAD has no body
        try:
            err = json.loads(body.split(b"\r\n")[0] if b"transfer-encoding: chunked" in head.lower() else body)
            assert isinstance(err["error"]["message"], str)
        except Exception:  # noqa: BLE001
            return f"status {status} without a JSON error: {reply[:300]!r}"
    return ""


def one_case(host: str, port: int, rng: random.Random, timeout: float) -> tuple:
    data, how = _request(rng, f"{host}:{port}")
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            if how == "hangup":
                s.sendall(data[:rng.randint(0, len(data))])
                return "hangup", ""
            if how == "slow":
                for i in range(0, min(len(data), 40), 8):
                    s.sendall(data[i:i + 8])
                    time.sleep(0.05)
                s.sendall(data[40:])
            elif how == "short-body":
                s.sendall(data[:max(0, len(data) - rng.randint(1, 10))])
                s.shutdown(socket.SHUT_WR)
            else:
                s.sendall(data)
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"data: [DONE]" in chunk or (rng.random() < 0.1 and b"data: " in chunk):
                    break  # a stream: done, or hang up in the middle
                joined = b"".join(chunks)
                head, sep, body = joined.partition(b"\r\n\r\n")
                if sep and data.startswith(b"HEAD "):
                    break
                if sep and b"content-length:" in head.lower():
                    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(body) >= n:
                        break
            reply = b"".join(chunks)
    except socket.timeout:
        return "timeout", ""
    except OSError:
        return "reset", ""  # e.g. the server closed while we were still sending a refused body
    status = reply[9:12].decode("latin-1") if reply.startswith(b"HTTP/1.1 ") else "closed"
    return status, _check(reply, data.startswith(b"HEAD "))


def fuzz(url: str, seconds: float, seed: int = 0, clients: int = 24, timeout: float = 60.0, log=print) -> dict:
    host, port = url[len("http://"):].rsplit(":", 1)
    port = int(port)
    statuses, failures = Counter(), []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(c: int) -> None:
        rng = random.Random(seed * 1000 + c)
        while time.monotonic() < deadline:
            status, problem = one_case(host, port, rng, timeout)
            with lock:
                statuses[status] += 1
                if problem:
                    failures.append(problem)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = {"cases": sum(statuses.values()), "statuses": dict(statuses), "failures": failures}
    log(json.dumps({k: v if k != "failures" else v[:10] for k, v in result.items()}))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running server (default: an in-process one on a random model)")
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.url:
        return 1 if fuzz(a.url, a.seconds, a.seed, a.clients)["failures"] else 0
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bllama.runtime import Runtime
    from bllama.serve.server import Server
    from serve_throughput import random_model

    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime.load(random_model("tiny", 512, Path(tmp)), threads=1, max_sequences=4)
        server = Server(rt, ("127.0.0.1", 0), "fuzz", quiet=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            r = fuzz(server.url, a.seconds, a.seed, a.clients)
        finally:
            server.shutdown()
            server.server_close()
    return 1 if r["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
