"""Open-loop load for bench/serve_throughput.py: Poisson arrivals against `bllama serve` subprocesses.

Each request is a streamed greedy completion; its time to first token (TTFT) is from sending to the first event
with text, its inter-token latencies (ITL) the gaps between later events (one event per token, save where a held
character joins two). Nothing waits for a reply before sending the next request (open loop), so an overloaded server
shows as growing TTFT, or as 429/503 refusals, never as a slower arrival rate.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bllama.train.corpus import default_corpus_text


def add_open_loop_args(p) -> None:
    p.add_argument("--open-loop", action="store_true", help="Poisson arrivals against server subprocesses")
    p.add_argument("--server", action="append", default=[], metavar="NAME=DIR:SCHEDULER[:ARGS]",
                   help="a server to compare (repeatable; default: this tree, static and continuous); SCHEDULER - "
                        "passes none (a tree from before --scheduler); ARGS: more `bllama serve` options, e.g. "
                        "'--poll 1'")
    p.add_argument("--rates", type=float, nargs="+", default=[0.5, 1, 2], help="arrivals per second")
    p.add_argument("--per-rate", type=int, default=40, help="requests per run")
    p.add_argument("--repeats", type=int, default=1, help="runs per server and rate (alternating)")
    p.add_argument("--prompt-words", type=int, nargs=2, default=[8, 96], help="prompt length range, in words")
    p.add_argument("--reply-tokens", type=int, nargs=2, default=[8, 64], help="max_tokens range")
    p.add_argument("--chat-turns", type=int, default=0,
                   help="also a growing chat of this many turns per server (once per repeat, after the first rate)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="the servers' --max-queue: past it they refuse with 429 (set it low to test overload)")
    p.add_argument("--client", choices=("asyncio", "threads"), default="asyncio",
                   help="asyncio: every request on one event loop in this process (one thread stamps every event, so "
                        "the times do not include waits for the GIL between client threads); threads: a thread per "
                        "request with urllib (the first sessions' client)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the raw per-request records and the summary")


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q / 100 * len(v)))], 4)


def start_server(name, folder, scheduler, model, a, extra=()):
    cmd = [sys.executable, "-m", "bllama.cli", "serve", str(model), "--port", "0", "--max-sequences",
           str(max(a.sequences)), "--name", "bench"]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    if scheduler != "-":
        cmd += ["--scheduler", scheduler, "--quiet", "--max-queue", str(a.max_queue)]
    cmd += list(extra)
    env = {**os.environ, "PYTHONPATH": str(Path(folder).resolve())}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                            cwd=str(Path(folder).resolve()))
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"{name}: the server did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0]


def _on_sse_line(rec, line: bytes) -> None:
    """One server-sent-events line of a completion stream into rec: its usage, and a stamped event per text piece."""
    if not line.startswith(b"data: {"):
        return
    chunk = json.loads(line[6:])
    if chunk.get("usage"):
        rec["tokens"] = chunk["usage"]["completion_tokens"]
    c = (chunk.get("choices") or [{}])[0]
    piece = c.get("text") or (c.get("delta") or {}).get("content")
    if piece:
        rec["events"].append(time.perf_counter())
        rec["text"] = rec.get("text", "") + piece


def stream_request(url, path, body, timeout=600) -> dict:
    rec = {"sent": time.perf_counter(), "status": None, "events": [], "tokens": 0}
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            rec["status"] = resp.status
            for line in resp:
                _on_sse_line(rec, line.rstrip(b"\r\n"))
    except urllib.error.HTTPError as e:
        rec["status"] = e.code
    except Exception as e:  # noqa: BLE001 - a lost request: counted
        rec["status"] = f"lost: {type(e).__name__}: {e}"
    rec["end"] = time.perf_counter()
    return rec


async def astream_request(url, path, body, sent=None) -> dict:
    """stream_request on an event loop: HTTP/1.1 by hand (chunked or not), each SSE line stamped as it arrives."""
    rec = {"sent": sent if sent is not None else time.perf_counter(), "status": None, "events": [], "tokens": 0}
    host, _, port = url.split("//", 1)[1].rstrip("/").partition(":")
    data = json.dumps(body).encode()
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, int(port or 80))
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        rec["status"] = int(head.split(b" ", 2)[1])
        chunked = b"transfer-encoding: chunked" in head.lower()
        pending = b""
        while True:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    break
                piece = (await reader.readexactly(size + 2))[:-2]
            else:
                piece = await reader.read(65536)
                if not piece:
                    break
            pending += piece
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _on_sse_line(rec, line.rstrip(b"\r"))
        if pending:
            _on_sse_line(rec, pending.rstrip(b"\r"))
    except Exception as e:  # noqa: BLE001 - a lost request: counted
        rec["status"] = f"lost: {type(e).__name__}: {e}"
    finally:
        if writer is not None:
            writer.close()
    rec["end"] = time.perf_counter()
    return rec


def _arrivals(rate, a, seed) -> list:
    rng = random.Random(seed)
    words = default_corpus_text(max_chars=200_000).split()
    out, t = [], 0.0
    for i in range(a.per_rate):
        t += rng.expovariate(rate)
        n = rng.randint(*a.prompt_words)
        start = rng.randrange(len(words) - n)
        out.append((t, {"prompt": " ".join(words[start:start + n]), "max_tokens": rng.randint(*a.reply_tokens),
                        "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}))
    return out


async def _send_all(url, arrivals) -> list:
    loop_start = time.perf_counter()
    tasks = []
    for t, body in arrivals:
        delay = loop_start + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(astream_request(url, "/v1/completions", body, sent=time.perf_counter())))
    return list(await asyncio.gather(*tasks))


def one_run(url, rate, a, seed) -> dict:
    arrivals = _arrivals(rate, a, seed)
    if getattr(a, "client", "threads") == "asyncio":
        records = asyncio.run(_send_all(url, arrivals))
    else:
        threads, records = [], []
        t0 = time.perf_counter()
        for t, body in arrivals:
            delay = t0 + t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            th = threading.Thread(target=lambda b=body: records.append(stream_request(url, "/v1/completions", b)))
            th.start()
            threads.append(th)
        for th in threads:
            th.join()
    ok = [r for r in records if r["status"] == 200]
    ttft = [r["events"][0] - r["sent"] for r in ok if r["events"]]
    itl = [b - a_ for r in ok for a_, b in zip(r["events"], r["events"][1:])]
    # Time per output token after the first, per request: unlike the gaps between events it does not depend on how
    # many tokens one event (or one TCP read) carries.
    tpot = [(r["events"][-1] - r["events"][0]) / (r["tokens"] - 1) for r in ok if len(r["events"]) > 1 and r["tokens"] > 1]
    wall = max(r["end"] for r in records) - min(r["sent"] for r in records)
    return {"rate": rate, "requests": len(records), "ok": len(ok),
            "refused": sum(r["status"] in (429, 503) for r in records),
            "lost": [r["status"] for r in records if r["status"] not in (200, 429, 503)],
            "completion_tokens": sum(r["tokens"] for r in ok), "wall_s": round(wall, 2),
            "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 2),
            "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99), "itl_p50_s": pct(itl, 50),
            "itl_p99_s": pct(itl, 99), "tpot_p50_s": pct(tpot, 50), "tpot_p99_s": pct(tpot, 99), "records": records}


def chat_run(url, turns) -> list:
    """One growing conversation through /v1/completions (the random model has no chat template): each turn's prompt
    is the previous prompt, its reply and a new user line, so a kept slot holds all but the new line."""
    words = default_corpus_text(max_chars=20_000).split()
    prompt, out = "", []
    for t in range(turns):
        prompt += "\nUser: " + " ".join(words[t * 12:t * 12 + 12]) + "\nAssistant:"
        rec = stream_request(url, "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0,
                                                      "stream": True})
        out.append(round(rec["events"][0] - rec["sent"], 4) if rec["events"] else None)
        prompt += rec.get("text", "")
    return out


def summarize(rows, names, rates) -> list:
    """Medians over the repeats per server and rate, with each server's ratios to the first one (as a table);
    `python bench/serve_open_loop.py OUT/summary.json` prints it again from a run's summary."""
    keys = ("tokens_per_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "itl_p99_s")
    out = []
    for rate in rates:
        for name in names:
            runs = [r for r in rows if r["server"] == name and r["rate"] == rate]
            m = {k: statistics.median(r[k] for r in runs if r[k] is not None) if any(r[k] is not None for r in runs)
                 else None for k in keys}
            m.update(server=name, rate=rate, runs=len(runs), ok=sum(r["ok"] for r in runs),
                     refused=sum(r["refused"] for r in runs), lost=sum(len(r["lost"]) for r in runs),
                     requests=sum(r["requests"] for r in runs))
            # Ratios within a repeat (same arrivals, run back to back), then their median: steadier than a ratio of
            # medians on a machine whose load drifts between repeats.
            first = {r["repeat"]: r for r in rows if r["server"] == names[0] and r["rate"] == rate}
            pairs = [(first[r["repeat"]], r) for r in runs if r["repeat"] in first]
            tok = [r["tokens_per_s"] / f["tokens_per_s"] for f, r in pairs if f["tokens_per_s"]]
            ttft = [f["ttft_p99_s"] / r["ttft_p99_s"] for f, r in pairs if f["ttft_p99_s"] and r["ttft_p99_s"]]
            m["tok_s_vs_first"] = round(statistics.median(tok), 3) if tok else None
            m["first_ttft_p99_over_this"] = round(statistics.median(ttft), 2) if ttft else None
            m["first_ttft_p99_over_this_range"] = [round(min(ttft), 2), round(max(ttft), 2)] if ttft else None
            out.append(m)
    print("| server | rate /s | runs | tok/s | TTFT p50 | TTFT p99 | TPOT p50 | ITL p99 | answered / refused / lost | "
          f"tok/s / {names[0]}'s | {names[0]}'s TTFT p99 / this (range) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in out:
        ms = lambda v: "-" if v is None else f"{v * 1000:.0f} ms"  # noqa: E731
        print(f"| {m['server']} | {m['rate']:g} | {m['runs']} | {m['tokens_per_s']:.1f} | {ms(m['ttft_p50_s'])} | "
              f"{ms(m['ttft_p99_s'])} | {ms(m['tpot_p50_s'])} | {ms(m['itl_p99_s'])} | {m['ok']} / {m['refused']} / "
              f"{m['lost']} of {m['requests']} | {m['tok_s_vs_first']} | {m['first_ttft_p99_over_this']} "
              f"({m['first_ttft_p99_over_this_range']}) |", flush=True)
    return out


def run_open_loop(a, random_model) -> int:
    servers = [s.partition("=")[::2] for s in a.server] or [("static", ".:static"), ("continuous", ".:continuous")]
    servers = [(name, *(spec.split(":", 2) + [""])[:3]) for name, spec in servers]
    out = Path(a.out) if a.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    rows, chats = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(a.model) if a.model else random_model(a.preset, a.vocab, Path(tmp))
        print(f"model {model.name}; servers {[s[0] for s in servers]}; rates {a.rates}/s x {a.per_rate} requests; "
              f"{max(a.sequences)} slots", flush=True)
        for rep in range(a.repeats):
            for rate in a.rates:
                for name, folder, sched, extra in servers:  # alternating at every rate
                    proc, url = start_server(name, folder, sched, model, a, extra.split())
                    try:
                        stream_request(url, "/v1/completions", {"prompt": "warm up", "max_tokens": 4,
                                                                "stream": True})
                        r = one_run(url, rate, a, seed=a.seed * 1000 + int(rate * 100) + rep)
                        if a.chat_turns and rate == a.rates[0]:
                            chats.setdefault(name, []).append(chat_run(url, a.chat_turns))
                    finally:
                        proc.terminate()
                        proc.wait(30)
                    r.update(server=name, repeat=rep)
                    if out:
                        (out / f"{name}-rate{rate}-rep{rep}.json").write_text(json.dumps(r, indent=1))
                    r.pop("records")
                    rows.append(r)
                    print(f"{name:>11} rate {rate:5.2f}/s: {r['tokens_per_s']:7.2f} tok/s  TTFT p50 {r['ttft_p50_s']} "
                          f"p99 {r['ttft_p99_s']} s  ITL p50 {r['itl_p50_s']} p99 {r['itl_p99_s']} s  TPOT p50 "
                          f"{r['tpot_p50_s']} s  ok {r['ok']}/{r['requests']} refused {r['refused']} lost "
                          f"{len(r['lost'])}  (load {os.getloadavg()[0]:.1f})", flush=True)
    medians = summarize(rows, [s[0] for s in servers], a.rates)
    chat_medians = {name: [statistics.median(c[t] for c in runs if c[t] is not None) for t in range(a.chat_turns)]
                    for name, runs in chats.items()}
    summary = {"rows": rows, "medians": medians, "chat_ttft_s": chats, "chat_ttft_median_s": chat_medians}
    for name, ttfts in chat_medians.items():
        print(f"{name:>11} chat TTFT by turn (median of {len(chats[name])}): {[round(t, 4) for t in ttfts]}; "
              f"turn {len(ttfts)} / turn 1 = {ttfts[-1] / ttfts[0]:.2f}", flush=True)
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 1 if any(r["lost"] for r in rows) else 0


if __name__ == "__main__":  # the table of an earlier run: python bench/serve_open_loop.py OUT/summary.json
    _rows = json.loads(Path(sys.argv[1]).read_text())["rows"]
    _names = list(dict.fromkeys(r["server"] for r in _rows))
    summarize(_rows, _names, list(dict.fromkeys(r["rate"] for r in _rows)))
