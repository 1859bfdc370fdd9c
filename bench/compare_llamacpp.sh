#!/usr/bin/env bash
# Our engine and llama.cpp on the same file, same machine, same session (ratios are what to compare).
# Usage: bench/compare_llamacpp.sh /path/to/llama-bench [preset=1.7b] [out_dir=bench/results]
# llama.cpp is not part of this repository: build it yourself (cmake, target llama-bench).
set -euo pipefail
LLAMA_BENCH=${1:?path to llama-bench}
PRESET=${2:-1.7b}
OUT=${3:-bench/results}
mkdir -p "$OUT"
MODEL=$(mktemp -d)/random-$PRESET.gguf
python - "$PRESET" "$MODEL" <<'PY'
import sys
from pathlib import Path
from bllama.tools.bench import write_random_gguf
from bllama.model.config import bLlamaConfig
write_random_gguf(bLlamaConfig.preset(sys.argv[1]), Path(sys.argv[2]))
print("wrote", sys.argv[2])
PY
STAMP=$(date -u +%Y-%m-%dT%H%MZ)
"$LLAMA_BENCH" -m "$MODEL" -p 128 -n 64 -t 1,2 -r 5 -o md | tee "$OUT/llamacpp_${PRESET}_${STAMP}.md"
bllama bench "$MODEL" --threads 1 2 --repeats 5 --json "$OUT/bllama_${PRESET}_${STAMP}.json"
rm -f "$MODEL"
