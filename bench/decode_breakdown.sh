#!/usr/bin/env bash
# Where a decode token's time goes, per op (bench/NOTES-kernels.md, "Decode time breakdown"): builds bench_decode
# with -DBLLAMA_DECODE_PROFILE (csrc/cpu/decode_profile.h) into $BUILD, measures the bandwidth probe, then prints
# the per-op table (us per token, MB, GB/s, % of that probe, each pool thread's busy time) for each head and
# thread count.
#   SHAPE=1.7b THREADS="1 2" HEADS="f16 q4" DECODE=128 bash bench/decode_breakdown.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-${TMPDIR:-/tmp}/bllama_decode_profile}
SHAPE=${SHAPE:-1.7b}
THREADS=${THREADS:-"1 2"}
HEADS=${HEADS:-"f16 q4"}
DECODE=${DECODE:-128}
MODEL=${MODEL:-$BUILD/model-$SHAPE.gguf}
nice -n 10 cmake -G Ninja -S "$root" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBLLAMA_BUILD_PYTHON=OFF \
  -DBLLAMA_CUDA=OFF -DBLLAMA_BUILD_TESTS=OFF -DCMAKE_CXX_FLAGS=-DBLLAMA_DECODE_PROFILE >/dev/null
nice -n 10 cmake --build "$BUILD" -j2 --target bench_decode >/dev/null
for t in $THREADS; do
  for h in $HEADS; do
    probe=$("$BUILD/bench_decode" --shape "$SHAPE" --threads "$t" --decode 1 --probe --keep "$MODEL" 2>/dev/null |
            sed -n 's/.*probe: \([0-9.]*\) GB\/s.*/\1/p')
    echo "== $SHAPE, $t thread(s), $h head, probe $probe GB/s (2 MiB pages)"
    BLLAMA_PROFILE_PROBE_GBS=$probe "$BUILD/bench_decode" --shape "$SHAPE" --threads "$t" --head "$h" \
      --decode "$DECODE" --keep "$MODEL" 2>&1 | grep -v '^wrote\|^shape'
  done
done
