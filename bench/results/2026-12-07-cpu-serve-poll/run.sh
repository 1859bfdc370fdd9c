#!/bin/bash
# Eighth session (2026-12-07), 2-vCPU AMD EPYC (Zen 3) VM, AVX2 only, nothing else running: `bllama serve` with the
# spin that gives way (the new default, --poll 1) against the same server with --poll 0 and the issue-time server
# (6121ac7, its own engine build: `git worktree add OLD 6121ac7 && cd OLD && BLLAMA_CUDA=OFF python setup.py
# build_ext --inplace`), open-loop load, from the repository root.
#   OLD=<that checkout> OUT=<output folder> bash run.sh
set -eux
: "${OLD:?}"; OUT=${OUT:-.}; mkdir -p "$OUT"
common="--open-loop --preset small --vocab 2048 --sequences 8 --threads 2 --reply-tokens 8 48 --prompt-words 8 64"
servers=(--server "issue-time=$OLD:-" --server "nopoll=.:continuous:--poll 0" --server continuous=.:continuous)
python bench/serve_throughput.py $common "${servers[@]}" --rates 4 8 16 24 40 --per-rate 48 --repeats 3 \
  --chat-turns 10 --out "$OUT/serve48" > "$OUT/serve-48.txt" 2>&1
python bench/serve_throughput.py $common "${servers[@]}" --rates 4 8 40 --per-rate 128 --repeats 3 \
  --out "$OUT/serve128" > "$OUT/serve-128.txt" 2>&1
