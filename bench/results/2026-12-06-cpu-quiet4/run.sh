#!/bin/bash
# The quiet-VM batch of 2026-12-06 (fourth session), in this order, from the repository root with the extension
# built: the prompt/decode A/B against the session's start (b9a1ced) on three shapes, the decode-bandwidth A/B,
# the peer comparison, the open-loop serving runs (static vs continuous, asyncio client).
#   IK=<ik_llama.cpp source> LLAMACPP=<llama.cpp source> BITNET=<bitnet.cpp source> WORK=<build+model folder> BUILD=<CPU release build with benchmarks>
#   BASE=<bench_decode built at b9a1ced> OUT=<output folder> bash run.sh
set -eux
: "${IK:?}" "${LLAMACPP:?}" "${BITNET:?}" "${WORK:?}" "${BUILD:?}" "${BASE:?}"; OUT=${OUT:-qb}; mkdir -p "$OUT"
for r in 1 2 3; do
  for v in base new; do
    bin=$BASE; [ $v = new ] && bin=$BUILD/bench_decode
    for s in small 1.7b 2b4t; do
      "$bin" --shape $s --threads 1,2 --prompt 128 --decode 32 --keep "$WORK/ab-$s.gguf" > "$OUT/ab_${s}_${v}_$r.txt" 2>&1
    done
  done
done
python bench/decode_bw_ab.py --base b9a1ced --rounds 5 --work "$WORK/bwab" --out "$OUT/decode_bw" > "$OUT/decode_bw.txt" 2>&1
python bench/peer_compare.py --ik "$IK" --llamacpp "$LLAMACPP" --bitnet "$BITNET" --work "$WORK" --presets 1.7b 2b4t --rounds 3 --json "$OUT/peers.json" > "$OUT/peers.txt" 2>&1
python bench/serve_throughput.py --open-loop --preset small --vocab 2048 --sequences 8 --threads 2 --reply-tokens 8 48 \
  --prompt-words 8 64 --server static=.:static --server continuous=.:continuous --rates 4 8 16 24 40 --per-rate 48 \
  --repeats 3 --chat-turns 10 --out "$OUT/serve" > "$OUT/serve.txt" 2>&1
python bench/serve_throughput.py --open-loop --preset small --vocab 2048 --sequences 8 --threads 2 --reply-tokens 8 48 \
  --prompt-words 8 64 --server static=.:static --server continuous=.:continuous --rates 80 --per-rate 96 \
  --repeats 2 --max-queue 16 --out "$OUT/serve_over" > "$OUT/serve_over.txt" 2>&1
# The decode-range start prefetch and the weight arena together, against the commit before them (NOPS: bench_decode
# built at a9bad72), 1.7B f16 and q4 heads, 2 threads, alternating.
if [ -n "${NOPS:-}" ]; then
  for r in 1 2 3 4; do
    for h in f16 q4; do
      "$NOPS" --shape 1.7b --threads 2 --prompt 16 --decode 64 --head $h --keep "$WORK/ab-1.7b.gguf" > "$OUT/ps_before_${h}_$r.txt" 2>&1
      "$BUILD/bench_decode" --shape 1.7b --threads 2 --prompt 16 --decode 64 --head $h --keep "$WORK/ab-1.7b.gguf" > "$OUT/ps_after_${h}_$r.txt" 2>&1
    done
  done
fi
