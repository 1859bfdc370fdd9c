#!/bin/bash
# The sixth session's batch (2026-12-07), on a 2-vCPU AMD EPYC (Zen 3) VM with AVX2 and no AVX-512, from the
# repository root, nothing else running: decode against the session's start (54f7482) with the same-run bandwidth
# probe (1.7B at 2 and 1 threads, 2B4T at 2), then longer contexts, where attention weighs more (1.7B at position
# ~800; 2B4T, whose query heads share kv heads, at ~520), alternating the two builds.
#   WORK=<build+model folder> OUT=<output folder> bash run.sh
set -eux
: "${WORK:?}"; OUT=${OUT:-qb}; mkdir -p "$OUT"
python bench/decode_bw_ab.py --base 54f7482 --rounds 5 --work "$WORK/bwab" --out "$OUT/decode_bw" > "$OUT/decode_bw.txt" 2>&1
python bench/decode_bw_ab.py --base 54f7482 --rounds 3 --threads 1 --heads q4 --work "$WORK/bwab" --out "$OUT/decode_bw_1t" > "$OUT/decode_bw_1t.txt" 2>&1
python bench/decode_bw_ab.py --base 54f7482 --rounds 3 --shape 2b4t --work "$WORK/bwab2b" --out "$OUT/decode_bw_2b4t" > "$OUT/decode_bw_2b4t.txt" 2>&1
for r in 1 2 3; do
  for v in base cand; do
    "$WORK/bwab/$v-build/bench_decode" --shape 1.7b --threads 2 --prompt 768 --decode 32 --head q4 \
      --keep "$WORK/bwab/model-1.7b.gguf" > "$OUT/pos800_${v}_$r.txt" 2>&1
    "$WORK/bwab2b/$v-build/bench_decode" --shape 2b4t --threads 2 --prompt 512 --decode 32 --head q4 \
      --keep "$WORK/bwab2b/model-2b4t.gguf" > "$OUT/2b4t_pos520_${v}_$r.txt" 2>&1
  done
done
# Then ik_llama.cpp (the fastest CPU BitNet peer) on the same weights, 1.7B only: IK=<ik_llama.cpp source>
# (its llama-bench took ~40 minutes to build on these 2 vCPUs; bench/peer_engines.py builds it under $WORK).
if [ -n "${IK:-}" ]; then
  python bench/peer_compare.py --ik "$IK" --work "$WORK" --presets 1.7b --rounds 3 --json "$OUT/peers.json" > "$OUT/peers.txt" 2>&1
fi
