#!/bin/bash
# usage: ab_prompt.sh ROUNDS THREADS SHAPE MODEL PROMPT (builds: $BASE, default /tmp/mc_base, and $CAND, default /tmp/mc): prompt tok/s of
# each, alternating, and their ratio per round
R=$1; T=$2; S=$3; M=$4; P=${5:-128}
for r in $(seq $R); do
  b=$("${BASE:-/tmp/mc_base}"/bench_decode --shape $S --threads $T --prompt $P --decode 4 --head f16 --keep $M 2>&1 | awk -v t=$T '$1==t && NF>5 {print $3; exit}')
  c=$("${CAND:-/tmp/mc}"/bench_decode --shape $S --threads $T --prompt $P --decode 4 --head f16 --keep $M 2>&1 | awk -v t=$T '$1==t && NF>5 {print $3; exit}')
  echo "$b $c" | awk '{printf "base %.1f cand %.1f ratio %.3f\n", $1, $2, $2/$1}'
done
