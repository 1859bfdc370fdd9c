#!/bin/bash
# Ninth session (2026-12-07), 2-vCPU AMD EPYC (Zen 3) VM, AVX2 only, nothing else running: `bllama serve` with
# prompts that finish in a step joining first and inline tokenization (the default server of ff39b94) against the
# server at b6fc4b9 (the eighth session's: oldest-first joining, every prompt tokenized in a worker) and the issue-time
# server (6121ac7), each with its own engine build (`git worktree add DIR REV && cd DIR && BLLAMA_CUDA=OFF python
# setup.py build_ext --inplace`), open-loop load, from the repository root.
#   OLD=<6121ac7 checkout> PREV=<b6fc4b9 checkout> OUT=<output folder> bash run.sh
set -eux
: "${OLD:?}" "${PREV:?}"; OUT=${OUT:-.}; mkdir -p "$OUT"
common="--open-loop --preset small --vocab 2048 --sequences 8 --threads 2 --reply-tokens 8 48 --prompt-words 8 64"
servers=(--server "issue-time=$OLD:-" --server "previous=$PREV:continuous" --server continuous=.:continuous)
python bench/serve_throughput.py $common "${servers[@]}" --rates 4 8 16 40 --per-rate 128 --repeats 3 \
  --chat-turns 10 --out "$OUT/serve128" > "$OUT/serve-128.txt" 2>&1
# Then 4 req/s alone, 5 repeats (serve-128-rate4.txt):
python bench/serve_throughput.py $common --server "issue-time=$OLD:-" --server continuous=.:continuous --rates 4 \
  --per-rate 128 --repeats 5 --out "$OUT/serve128-rate4" > "$OUT/serve-128-rate4.txt" 2>&1
# Time to first token pooled over every repeat's requests (pooled.py): more requests behind each percentile than the
# per-repeat p99 that serve_throughput.py prints.
python "$(dirname "$0")/pooled.py" "$OUT/serve128" "$OUT/serve128-rate4" > "$OUT/pooled.txt"
