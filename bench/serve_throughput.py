"""Throughput of `bllama serve` under concurrent clients: one engine sequence at a time vs several decoded together.

    python bench/serve_throughput.py                          # random 1.7B-shaped model, 8192-piece vocabulary
    python bench/serve_throughput.py MODEL.gguf --sequences 1 4 --clients 4 --requests 16 --max-tokens 48

Open-loop load (--open-loop): requests arrive at random (Poisson, --rates per second) with mixed prompt and reply
lengths, streamed, against `bllama serve` subprocesses, one per server to compare (--server NAME=DIR:SCHEDULER, DIR
a checkout whose bllama is imported; SCHEDULER "-" for a server without --scheduler). Servers alternate at every
rate (--repeats times). Reported per run: completion tokens/s, time to first token and inter-token latency p50/p99,
and requests refused (429/503) or lost (anything else). --chat-turns N also runs one growing conversation of N
turns per server and reports each turn's time to first token.

    python bench/serve_throughput.py --open-loop --preset small --rates 1 2 4 --server old=/tmp/serve-old:- \
        --server new=.:continuous --sequences 8 --threads 2

Each of --clients threads sends its share of --requests greedy completions (prompts cut from the built-in corpus)
one after another over HTTP to an in-process server (bllama.serve.server.Server). For every --sequences value the model
is loaded with that max_sequences. Reported: completion tokens per second over the whole run (wall clock), the
median and worst request latency, and the batches the server ran. Without a model file, a random model of
--preset's shapes is written with a SentencePiece tokenizer trained on the built-in corpus (--vocab pieces).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bllama import bLlamaConfig  # noqa: E402
from bllama.train.corpus import default_corpus_text  # noqa: E402
from bllama.runtime import Runtime  # noqa: E402
from bllama.serve.server import Server  # noqa: E402


def random_model(preset: str, vocab: int, folder: Path) -> Path:
    from bllama.tools.bench import write_random_gguf
    from bllama.tokenizers.sentencepiece import SentencePieceTokenizer, train_sentencepiece

    text = folder / "corpus.txt"
    text.write_text(default_corpus_text(), encoding="utf-8")
    tok = SentencePieceTokenizer(train_sentencepiece([str(text)], folder / "tok", vocab_size=vocab))
    cfg = bLlamaConfig.preset(preset, vocab_size=tok.vocab_size)
    return write_random_gguf(cfg, folder / f"random-{preset}.gguf", tokenizer=tok)


def run(path: Path, sequences: int, clients: int, requests: int, max_tokens: int, threads: int,
        stream: bool = False) -> dict:
    rt = Runtime.load(path, threads=threads, max_sequences=sequences)
    server = Server(rt, ("127.0.0.1", 0), "bench", quiet=True, scheduler="static")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    words = default_corpus_text(max_chars=200_000).split()
    latencies, tokens, errors = [], [0], []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(c, requests, clients):
            prompt = " ".join(words[r * 37 % (len(words) - 40):][:24])
            body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
                               "stream_options": {"include_usage": True} if stream else None}).encode()
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(urllib.request.Request(server.url + "/v1/completions", data=body),
                                            timeout=600) as resp:
                    if stream:  # the usage comes in the last event before [DONE]
                        events = [e[6:] for e in resp.read().decode().split("\n\n") if e.startswith("data: {")]
                        n = json.loads(events[-1])["usage"]["completion_tokens"]
                    else:
                        n = json.loads(resp.read())["usage"]["completion_tokens"]
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                tokens[0] += n

    t0 = time.perf_counter()
    workers = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    server.shutdown()
    server.server_close()
    return {"sequences": sequences, "stream": stream, "clients": clients, "requests": requests, "max_tokens": max_tokens,
            "threads": threads, "completion_tokens": tokens[0], "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens[0] / wall, 1), "latency_median_s": round(statistics.median(latencies), 2),
            "latency_max_s": round(max(latencies), 2), "batches": dict(sorted(server.batch_sizes.items())),
            "errors": errors}


from serve_open_loop import add_open_loop_args, run_open_loop  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, help="model.gguf (default: a random model of --preset)")
    p.add_argument("--preset", default="1.7b", help="shapes of the random model")
    p.add_argument("--vocab", type=int, default=8192, help="pieces of the random model's tokenizer")
    p.add_argument("--sequences", type=int, nargs="+", default=[1, 4], help="max_sequences values to compare")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients")
    p.add_argument("--requests", type=int, default=16, help="requests in all")
    p.add_argument("--max-tokens", type=int, default=48, help="new tokens per request")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    p.add_argument("--stream", action="store_true", help="streamed requests (server-sent events) instead of plain")
    p.add_argument("--json", default=None, help="also write the results here")
    add_open_loop_args(p)
    a = p.parse_args(argv)
    if a.open_loop:
        return run_open_loop(a, random_model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(a.model) if a.model else random_model(a.preset, a.vocab, Path(tmp))
        print(f"model {path.name if a.model else f'random {a.preset}, vocab {a.vocab}'}; {a.clients} clients, "
              f"{a.requests} requests x {a.max_tokens} tokens, greedy{', streamed' if a.stream else ''}", flush=True)
        rows = []
        for s in a.sequences:
            r = run(path, s, a.clients, a.requests, a.max_tokens, a.threads, a.stream)
            rows.append(r)
            print(f"max_sequences {s}: {r['tokens_per_s']:8.1f} tok/s  latency median {r['latency_median_s']} s, "
                  f"max {r['latency_max_s']} s  batches {r['batches']}  errors {len(r['errors'])}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
        print(f"wrote {a.json}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
