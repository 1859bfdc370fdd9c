#!/usr/bin/env bash
# Issue 20 req. 2 (pool sync): decode tok/s of two bench_decode builds, alternating in one run (order rotates each
# round), at 1, 2 and 4 threads (4: oversubscribed on a 2-core VM), and at 2 threads next to a CPU hog (a busy loop
# at nice 0). Prints one line per run; summarize.py makes the medians and ratios.
#   BASE=path/to/old/bench_decode NEW=build/release/bench_decode ROUNDS=4 SHAPES="1.7b 2b4t" PROMPT=32 DECODE=48 bash run.sh
set -euo pipefail
BASE=${BASE:?old bench_decode}; NEW=${NEW:?new bench_decode}; ROUNDS=${ROUNDS:-4}; SHAPES=${SHAPES:-"1.7b 2b4t"}
HEAD=${HEAD:-f16}; WORK=${WORK:-/tmp}; PROMPT=${PROMPT:-32}; DECODE=${DECODE:-48}
for shape in $SHAPES; do
  m=$WORK/sync_bench_$shape.gguf
  "$NEW" --shape "$shape" --threads 1 --prompt 8 --decode 2 --keep "$m" >/dev/null  # writes the model once
  combos=()
  for t in 1 2 4; do for b in base new; do combos+=("$t $b none"); done; done
  for b in base new; do combos+=("2 $b hog"); done
  n=${#combos[@]}
  for r in $(seq 0 $((ROUNDS - 1))); do
    for i in $(seq 0 $((n - 1))); do
      read -r t b load <<<"${combos[$(((i + r * 3) % n))]}"
      bin=$BASE; [ "$b" = new ] && bin=$NEW
      hog=
      if [ "$load" = hog ]; then nice -n 0 bash -c 'while :; do :; done' & hog=$!; fi
      # decode t/s from the table row; handoffs and worker sleeps per token from the pool row (the new build only);
      # the process's CPU seconds (user + sys, load and prompt included): what spinning costs the machine.
      out=$(/usr/bin/time -f "cpu_s=%U+%S" -o "$WORK/sync_time" "$bin" --shape "$shape" --threads "$t" --prompt "$PROMPT" \
              --decode "$DECODE" --head "$HEAD" --keep "$m" |
            awk -v t="$t" '$1 == t && $2 != "pool:" && NF >= 9 {print $4} $2 == "pool:" {print $3, $5}' | paste -sd' ')
      out="$out $(cat "$WORK/sync_time")"
      [ -n "$hog" ] && kill "$hog" && wait "$hog" 2>/dev/null || true
      echo "$shape round=$r threads=$t build=$b load=$load decode_tps_handoffs=$out"
    done
  done
  rm -f "$m"
done
