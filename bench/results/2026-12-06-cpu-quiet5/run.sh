#!/bin/bash
# The quiet-VM batch of 2026-12-06 (fifth session), from the repository root with the extension built, nothing else
# running: decode against the session's start (02388b5) with the same-run bandwidth probe (1.7B at 2 and 1 threads,
# 2B4T at 2), 1.7B decode at position ~800 against the start, the peer comparison, and the open-loop serving runs
# (the server as the issue found it, static, continuous, continuous with --poll 1; then overload).
#   IK=<ik_llama.cpp source> LLAMACPP=<llama.cpp source> BITNET=<bitnet.cpp source> WORK=<build+model folder>
#   OLD=<a checkout of 6121ac7 with its extension built> OUT=<output folder> bash run.sh
set -eux
: "${IK:?}" "${LLAMACPP:?}" "${BITNET:?}" "${WORK:?}" "${OLD:?}"; OUT=${OUT:-qb}; mkdir -p "$OUT"
python bench/decode_bw_ab.py --base 02388b5 --rounds 5 --work "$WORK/bwab" --out "$OUT/decode_bw" > "$OUT/decode_bw.txt" 2>&1
python bench/decode_bw_ab.py --base 02388b5 --rounds 3 --threads 1 --heads q4 --work "$WORK/bwab" --out "$OUT/decode_bw_1t" > "$OUT/decode_bw_1t.txt" 2>&1
python bench/decode_bw_ab.py --base 02388b5 --rounds 3 --shape 2b4t --work "$WORK/bwab2b" --out "$OUT/decode_bw_2b4t" > "$OUT/decode_bw_2b4t.txt" 2>&1
for r in 1 2 3; do
  for v in base cand; do
    "$WORK/bwab/$v-build/bench_decode" --shape 1.7b --threads 2 --prompt 768 --decode 32 --head q4 \
      --keep "$WORK/bwab/model-1.7b.gguf" > "$OUT/pos800_${v}_$r.txt" 2>&1
  done
done
python bench/peer_compare.py --ik "$IK" --llamacpp "$LLAMACPP" --bitnet "$BITNET" --work "$WORK" --presets 1.7b 2b4t --rounds 3 --json "$OUT/peers.json" > "$OUT/peers.txt" 2>&1
python bench/serve_throughput.py --open-loop --preset small --vocab 2048 --sequences 8 --threads 2 --reply-tokens 8 48 \
  --prompt-words 8 64 --server "issue-time=$OLD:-" --server static=.:static --server continuous=.:continuous \
  --server "poll=.:continuous:--poll 1" --rates 4 8 16 24 40 --per-rate 48 --repeats 3 --chat-turns 10 \
  --out "$OUT/serve" > "$OUT/serve.txt" 2>&1
python bench/serve_throughput.py --open-loop --preset small --vocab 2048 --sequences 8 --threads 2 --reply-tokens 8 48 \
  --prompt-words 8 64 --server static=.:static --server continuous=.:continuous --rates 80 --per-rate 96 \
  --repeats 2 --max-queue 16 --out "$OUT/serve_over" > "$OUT/serve_over.txt" 2>&1
