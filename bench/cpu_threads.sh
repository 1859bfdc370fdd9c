#!/usr/bin/env bash
# CPU decode and prompt speed against the thread count, with the memory read bandwidth probe at each count in the
# same run (issue 20: do threads scale where bandwidth allows?). Meant for a machine with many cores (the GPU
# machine has 16: bench/gpu_check.sh runs it as its `cputhreads` section); works anywhere the Python module is built.
#
#   bash bench/cpu_threads.sh                  # THREADS="1 2 4 8 16" PRESETS="1.7b 2b4t" ROUNDS=3 HEAD=q4 PIN="0 1"
#
# Each round measures every (preset, threads, pinning) once, in rotating order; the table shows medians: prompt 128
# and decode 64 tokens right after it (tok/s), decode GB/s (bytes a token reads x tok/s) as a share of the probe,
# and the scaling over one thread. Output: $OUT or
# bench/results/<date>-<host>-cpu-threads/ (cpu_threads.json + the table).
set -euo pipefail
cd "$(dirname "$0")/.."
RES=${OUT:-bench/results/$(date -u +%Y-%m-%d)-$(hostname -s)-cpu-threads}
mkdir -p "$RES"
N=$(nproc)
THREADS=${THREADS:-$(for t in 1 2 4 8 16 32 64; do [ "$t" -le "$N" ] && printf '%s ' "$t"; done)}
export THREADS PRESETS=${PRESETS:-"1.7b 2b4t"} ROUNDS=${ROUNDS:-3} HEAD=${HEAD:-q4} PIN=${PIN:-"0 1"} RES
python - <<'PY' | tee "$RES/table.txt"
import json, os, statistics, subprocess, sys, tempfile
from pathlib import Path
from bllama.model.config import bLlamaConfig
from bllama.tools.bench import bytes_per_token, write_random_gguf

threads = [int(t) for t in os.environ["THREADS"].split()]
presets, rounds, head = os.environ["PRESETS"].split(), int(os.environ["ROUNDS"]), os.environ["HEAD"]
pins = [p == "1" for p in os.environ["PIN"].split()]
ONE = r"""
import json, os, sys
import numpy as np
from bllama import _engine
path, t, head = sys.argv[1], int(sys.argv[2]), sys.argv[3]
eng = _engine.Engine(path, t, head=head)
rng = np.random.default_rng(0)
eng.generate(rng.integers(3, eng.vocab_size, size=16).tolist(), 4, stop_ids=[])
eng.generate(rng.integers(3, eng.vocab_size, size=128).tolist(), 64, stop_ids=[])
s = eng.last_stats
print(json.dumps([s["prompt_tokens_per_second"], s["decode_tokens_per_second"], eng.config["head_bytes"]]))
"""
work = Path(tempfile.mkdtemp(prefix="cpu_threads_"))
runs, bw, bpt = {}, {}, {}
for preset in presets:
    cfg = bLlamaConfig.preset(preset)
    path = write_random_gguf(cfg, work / f"{preset}.gguf")
    base = bytes_per_token(path) - 2 * cfg.vocab_size * cfg.hidden_size
    combos = [(t, p) for t in threads for p in pins]
    for r in range(rounds):
        for t, p in combos[r % len(combos):] + combos[:r % len(combos)]:
            env = dict(os.environ, BLLAMA_PIN="1" if p else "0")
            out = subprocess.run([sys.executable, "-c", ONE, str(path), str(t), head], env=env, check=True,
                                 capture_output=True, text=True).stdout
            pp, tg, hb = json.loads(out.strip().splitlines()[-1])
            bpt[preset] = base + hb
            runs.setdefault((preset, t, p), []).append((pp, tg))
            if p == pins[0]:
                g = subprocess.run([sys.executable, "-c", f"from bllama import _engine; print(_engine.read_bandwidth({t}))"],
                                   check=True, capture_output=True, text=True).stdout
                bw.setdefault(t, []).append(float(g.strip().splitlines()[-1]))
    path.unlink()
print(f"{os.cpu_count()} CPUs, {head} head, fp16 KV, median of {rounds} rounds")
print(f"{'preset':<6} {'thr':>3} {'pin':>3} {'prompt':>8} {'decode':>8} {'GB/s':>6} {'probe':>6} {'%bw':>5} {'x1thr':>6}")
for (preset, t, p), v in sorted(runs.items()):
    pp, tg = statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)
    one = statistics.median(x[1] for x in runs[(preset, threads[0], p)])
    gbs, probe = tg * bpt[preset] / 1e9, statistics.median(bw[t])
    print(f"{preset:<6} {t:>3} {int(p):>3} {pp:>8.1f} {tg:>8.2f} {gbs:>6.1f} {probe:>6.1f} {100 * gbs / probe:>4.0f}% {tg / one:>5.2f}x")
Path(os.environ["RES"], "cpu_threads.json").write_text(json.dumps(
    {"runs": {f"{k[0]} {k[1]} {int(k[2])}": v for k, v in runs.items()}, "bandwidth_GB_s": bw, "bytes_per_token": bpt}))
PY
