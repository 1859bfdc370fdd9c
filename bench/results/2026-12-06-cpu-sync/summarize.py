"""Medians (tok/s) and new/base ratios of run.sh's output (stdin), per shape, threads and load."""
import re, statistics, sys
from collections import defaultdict

runs, hand, cpus = defaultdict(list), {}, defaultdict(list)
for line in sys.stdin:
    m = re.match(r"(\S+) round=(\d+) threads=(\d+) build=(\w+) load=(\w+) decode_tps_handoffs=(.*)", line)
    if not m:
        continue
    shape, r, t, b, load, rest = m.groups()
    cpu = re.search(r"cpu_s=([0-9.]+)\+([0-9.]+)", rest)
    if cpu:
        cpus[(shape, int(t), load, b)].append(float(cpu.group(1)) + float(cpu.group(2)))
        rest = rest[:cpu.start()]
    nums = [x for x in rest.split() if re.fullmatch(r"[0-9.]+", x)]  # decode t/s [handoffs [sleeps]] per token
    tps, h = nums[0], " / ".join(nums[1:])
    runs[(shape, int(t), load, b)].append((int(r), float(tps)))
    if h:
        hand[(shape, int(t), load)] = h
print(f"{'shape':6} {'thr':>3} {'load':5} {'base t/s':>9} {'new t/s':>8} {'ratio':>6} {'per-round ratios':30} {'CPU s base/new':15} new handoffs / sleeps per token")
for (shape, t, load, b) in sorted(k for k in runs if k[3] == "base"):
    base, new = dict(runs[(shape, t, load, "base")]), dict(runs.get((shape, t, load, "new"), []))
    rs = [new[r] / base[r] for r in sorted(base) if r in new]
    mb, mn = statistics.median(base.values()), statistics.median(new.values()) if new else float("nan")
    cb, cn = cpus.get((shape, t, load, "base")), cpus.get((shape, t, load, "new"))
    cs = f"{statistics.median(cb):.1f}/{statistics.median(cn):.1f}" if cb and cn else "-"
    print(f"{shape:6} {t:>3} {load:5} {mb:9.2f} {mn:8.2f} {mn / mb:6.3f} {' '.join(f'{x:.2f}' for x in rs):30} {cs:15} {hand.get((shape, t, load), '-')}")
