"""Medians of run.sh's bench_decode A/B (ab_<shape>_<base|new>_<round>.txt): prompt and decode tok/s per shape and
thread count, and new / base as the median of the per-round ratios.   python summarize_ab.py OUT"""
import re
import statistics
import sys
from pathlib import Path

ROW = re.compile(r"^\s*(\d+)\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s", re.M)  # threads, load s, prompt t/s, decode t/s
out = Path(sys.argv[1])
print("| shape | threads | prompt tok/s base / new | new / base (range) | decode tok/s base / new | new / base (range) |")
print("|---|---|---|---|---|---|")
for shape in ("small", "1.7b", "2b4t"):
    runs = {}
    for f in sorted(out.glob(f"ab_{shape}_*_*.txt")):
        _, _, v, r = f.stem.split("_")  # ab, shape, base|new, round
        for th, pp, tg in ROW.findall(f.read_text()):
            runs.setdefault((int(th), v), {})[r] = (float(pp), float(tg))
    for th in sorted({k[0] for k in runs}):
        base, new = runs.get((th, "base"), {}), runs.get((th, "new"), {})
        rounds = sorted(set(base) & set(new))
        if not rounds:
            continue
        cells = []
        for i in (0, 1):
            b = statistics.median(base[r][i] for r in rounds)
            n = statistics.median(new[r][i] for r in rounds)
            ratios = [new[r][i] / base[r][i] for r in rounds]
            cells += [f"{b:.1f} / {n:.1f}", f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"]
        print(f"| {shape} | {th} | " + " | ".join(cells) + " |")
