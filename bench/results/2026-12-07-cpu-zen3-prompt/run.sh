#!/bin/bash
# The seventh session's batch (2026-12-07), on a 2-vCPU AMD EPYC (Zen 3) VM with AVX2 and no AVX-512, from the
# repository root, nothing else running: the AVX2 prompt GEMM against the commit before it (64fad48), bench_decode's
# pp128 alternating the two builds; then ik_llama.cpp on the same weights; then serving under open-loop load.
#   BASE=<build dir of 64fad48> CAND=<build dir of this commit> WORK=<peer build + model folder>
#   IK=<ik_llama.cpp source> OLD=<a checkout of 6121ac7 with its extension built> OUT=<output folder> bash run.sh
set -eux
: "${BASE:?}" "${CAND:?}" "${WORK:?}" "${IK:?}" "${OLD:?}"; export BASE CAND; OUT=${OUT:-qb}; mkdir -p "$OUT"
HERE=$(dirname "$0")
"$CAND/bench_decode" --shape 1.7b --prompt 8 --decode 1 --keep "$WORK/m17.gguf" > /dev/null
"$CAND/bench_decode" --shape 2b4t --prompt 8 --decode 1 --keep "$WORK/m2b.gguf" > /dev/null
bash "$HERE/ab_prompt.sh" 5 2 1.7b "$WORK/m17.gguf" 128 > "$OUT/pp_2t.txt"
bash "$HERE/ab_prompt.sh" 5 1 1.7b "$WORK/m17.gguf" 128 > "$OUT/pp_1t.txt"
bash "$HERE/ab_prompt.sh" 5 2 2b4t "$WORK/m2b.gguf" 128 > "$OUT/pp_2b4t.txt"
python bench/peer_compare.py --ik "$IK" --work "$WORK" --presets 1.7b 2b4t --rounds 3 --json "$OUT/peers.json" > "$OUT/peers.txt" 2>&1
python bench/serve_throughput.py --open-loop --preset small --vocab 2048 --sequences 8 --threads 2 --reply-tokens 8 48 \
  --prompt-words 8 64 --server "issue-time=$OLD:-" --server static=.:static --server continuous=.:continuous \
  --server "poll=.:continuous:--poll 1" --rates 4 8 16 24 40 --per-rate 48 --repeats 3 --chat-turns 10 \
  --out "$OUT/serve" > "$OUT/serve.txt" 2>&1
