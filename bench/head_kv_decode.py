"""Decode speed of each LM head / KV cache combination on one file, alternating round by round (issue 20: what the
low-byte defaults buy). Each run is a fresh process: load, a 16-token warm-up, then a 128-token prompt and 64
decoded tokens; medians over rounds, and the same-run bandwidth probe.

    python bench/head_kv_decode.py model.gguf --threads 1 2 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_compare import bandwidth, run_ours  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--threads", nargs="+", type=int, default=[2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--configs", nargs="+", default=["f16:float32", "f16:float16", "q8:float16", "q4:float16"],
                   help="head:kv_cache_dtype pairs; the first is the baseline of the ratios")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    configs = [tuple(c.split(":")) for c in args.configs]
    runs, bw = {}, {t: [] for t in args.threads}
    for r in range(args.rounds):
        for t in args.threads:
            bw[t].append(bandwidth(t))
            for head, kv in configs[r % len(configs):] + configs[:r % len(configs)]:
                pp, tg, _ = run_ours(Path(args.model), t, head, kv)
                runs.setdefault((t, head, kv), []).append((pp, tg))
                print(f"round {r + 1}: {t} thr {head} head, {kv} KV: prompt {pp:.1f} decode {tg:.2f} tok/s", flush=True)
    print(f"{args.model}: median of {args.rounds} rounds; probe " +
          ", ".join(f"{t} thr {statistics.median(v):.1f} GB/s" for t, v in bw.items()))
    print(f"{'thr':>3} {'head':<4} {'kv':<8} {'prompt':>8} {'decode':>8} {'x base':>7}")
    for t in args.threads:
        base = statistics.median(x[1] for x in runs[(t, *configs[0])])
        for head, kv in configs:
            v = runs[(t, head, kv)]
            tg = statistics.median(x[1] for x in v)
            print(f"{t:>3} {head:<4} {kv:<8} {statistics.median(x[0] for x in v):>8.1f} {tg:>8.2f} {tg / base:>6.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth_GB_s": bw, "runs": {f"{k[0]} {k[1]} {k[2]}": v
                                                                            for k, v in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
