"""Time to first token pooled over every repeat of an open-loop run (the raw records that
`bench/serve_throughput.py --open-loop --out DIR` writes): mean and percentiles per server and rate.
    python pooled.py DIR [DIR ...]"""
import glob
import json
import statistics
import sys
from collections import defaultdict

for folder in sys.argv[1:]:
    ttft = defaultdict(list)
    for path in sorted(glob.glob(f"{folder}/*-rate*-rep*.json")):
        run = json.load(open(path))
        ttft[(run["server"], run["rate"])] += [(r["events"][0] - r["sent"]) * 1e3 for r in run["records"]
                                               if r["status"] == 200 and r["events"]]
    print(f"{folder}: TTFT in ms, pooled over repeats")
    print("| server | rate /s | requests | mean | p50 | p90 | p95 | p99 | max |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (server, rate), t in sorted(ttft.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        t.sort()
        q = lambda p: t[min(len(t) - 1, int(len(t) * p))]  # noqa: E731
        print(f"| {server} | {rate:g} | {len(t)} | {statistics.mean(t):.1f} | {q(.5):.1f} | {q(.9):.1f} | {q(.95):.1f} | "
              f"{q(.99):.1f} | {t[-1]:.1f} |")
