#!/bin/bash
# The quiet-VM batch of 2026-12-06 (third session), in this order, from the repository root with the extension
# built: the peer comparison, the open-loop serving runs, TQ1_0 layouts, the pool-sync A/B.
#   IK=<ik_llama.cpp source> WORK=<build+model folder> BUILD=<CPU release build with benchmarks>
#   BASE=<bench_decode built at a1494f9> OUT=<output folder> bash run.sh
set -eux
: "${IK:?}" "${WORK:?}" "${BUILD:?}" "${BASE:?}"; OUT=${OUT:-qb}; mkdir -p "$OUT"
python bench/peer_compare.py --ik "$IK" --work "$WORK" --presets 1.7b 2b4t --rounds 3 --json "$OUT/peers.json" > "$OUT/peers.txt" 2>&1
python bench/serve_throughput.py --open-loop --preset small --vocab 2048 --sequences 8 --threads 2 --reply-tokens 8 48 \
  --prompt-words 8 64 --server static=.:static --server continuous=.:continuous --rates 4 8 24 --per-rate 48 \
  --repeats 3 --chat-turns 10 --out "$OUT/serve" > "$OUT/serve.txt" 2>&1
python bench/serve_throughput.py --open-loop --preset small --vocab 2048 --sequences 8 --threads 2 --reply-tokens 8 48 \
  --prompt-words 8 64 --server static=.:static --server continuous=.:continuous --rates 12 16 40 --per-rate 48 \
  --repeats 3 --max-queue 16 --out "$OUT/serve_over" > "$OUT/serve_over.txt" 2>&1
bash bench/tq1_layout.sh "$BUILD" 3 1.7b 2b4t > "$OUT/tq1_rounds.txt" 2>&1
BASE=$BASE NEW=$BUILD/bench_decode ROUNDS=4 SHAPES="1.7b" PROMPT=128 DECODE=64 \
  bash bench/results/2026-12-06-cpu-sync/run.sh > "$OUT/sync_raw.txt" 2>&1
python bench/results/2026-12-06-cpu-sync/summarize.py < "$OUT/sync_raw.txt" > "$OUT/sync_table.txt"
