#!/usr/bin/env bash
# Every CPU engine benchmark in one go, on a quiet machine; outputs land in one folder, bench/results/<UTC stamp>-cpu-suite/.
#   bash bench/run_cpu_suite.sh                 # kernels, 1.7B and 2B4T end to end, PyTorch comparison, batched
#   LLAMA_BENCH=/path/to/llama-bench bash bench/run_cpu_suite.sh   # also llama.cpp on the same files
set -euo pipefail
cd "$(dirname "$0")/.."
STAMP=$(date -u +%Y-%m-%dT%H%MZ)
OUT=bench/results/${STAMP}-cpu-suite
mkdir -p "$OUT"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load: $(cat /proc/loadavg)"
cmake -G Ninja -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DBLLAMA_BUILD_PYTHON=OFF >/dev/null
cmake --build build/release -j 2 --target bench_kernels bench_decode >/dev/null
./build/release/bench_kernels | tee "$OUT/kernels_${STAMP}.txt"
bllama bench --preset 1.7b --threads 1 2 --repeats 5 --torch --json "$OUT/e2e_1.7b_${STAMP}.json"
for head in f16 q8; do
  bllama bench --preset 2b4t --threads 1 2 --repeats 3 --head "$head" --json "$OUT/e2e_2b4t_${head}_${STAMP}.json"
done
# Batched decoding: 2, 4 and 8 sequences together against one (Model::forward_batch), 1.7B shapes, 2 threads.
./build/release/bench_decode --shape 1.7b --threads 2 --prompt 64 --decode 64 --batch 2,4,8 | tee "$OUT/batched_1.7b_${STAMP}.txt"
if [ -n "${LLAMA_BENCH:-}" ]; then
  bash bench/compare_llamacpp.sh "$LLAMA_BENCH" 1.7b "$OUT"
  bash bench/compare_llamacpp.sh "$LLAMA_BENCH" 2b4t "$OUT"
fi
