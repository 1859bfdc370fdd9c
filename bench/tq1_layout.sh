#!/usr/bin/env bash
# TQ1_0 at 1.6 bits (base-3 layout) against the 2-bit repack of the same file, alternating in one run (the order
# flips each round), with the memory read bandwidth probe at each thread count (bench_decode --probe).
# Prints every round's bench_decode rows (tagged shape, layout, round); bench/RESULTS.md ("TQ1_0 at 1.6 bits") has the medians.
#   bench/tq1_layout.sh [build dir] [rounds] [shapes...]      e.g. bench/tq1_layout.sh build/release 5 1.7b 2b4t
set -euo pipefail
BUILD=${1:-build/release}
ROUNDS=${2:-5}
shift 2 || true
SHAPES=${*:-1.7b 2b4t}
BIN=$BUILD/bench_decode
for shape in $SHAPES; do
  file=/tmp/bllama_tq1_$shape.gguf
  for r in $(seq 1 "$ROUNDS"); do
    if (( r % 2 )); then order="2bit base3"; else order="base3 2bit"; fi
    for layout in $order; do
      "$BIN" --shape "$shape" --tq1 --keep "$file" --tq1-layout "$layout" --threads 1,2 --probe \
        | sed -n '/^ *[0-9]/p' | sed "s/^/$shape $layout round $r: /"
    done
  done
  rm -f "$file"
done
