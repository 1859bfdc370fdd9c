#!/usr/bin/env bash
# Issue #5's GPU measurement in one call: training throughput of the default 1.7B b1.58 model on one GPU, and the
# FSDP + sharded-checkpoint resume path of `bllama train` on that GPU.
#
#   bash bench/gpu_train_check.sh            # on the GPU machine, from anywhere; 305 s on an H200 (2026-11-28)
#                                            # (device tool: timeout_s=540 for the default BUDGET_S=450)
#   DRY=1 bash bench/gpu_train_check.sh      # the same script path on a CPU with tiny shapes (a syntax/logic check)
#
# Runs, in order of value, each bounded in time, each failure logged and skipped (the script goes on):
#   1. seq 2048: micro-batch 8 x accum 4 = 65,536 tokens per optimizer step, bf16-mixed, per-block torch.compile,
#      fused AdamW. Out of memory (exit 3) -> the same with activation checkpointing -> micro 4 x accum 8 with it.
#   2. seq 1024: micro-batch 16 x accum 4 = 65,536 tokens per step, same settings (same OOM fallbacks).
#   3. `bllama train`'s Lightning path on this GPU: tests/scripts/parallel_resume.py fsdp (BitFSDPStrategy,
#      bf16-mixed, activation checkpointing, sharded checkpoints: crash + resume and extend runs vs uninterrupted).
#   4. if time is left: the fused Triton quantizer (bench/triton_quant_check.py: bit-identity and kernel times, then
#      eager seq-1024 training, micro-batch 4, with BLLAMA_TRITON=0 and =1: eager keeps ~4x the activations of the
#      compiled model), seq 2048 with activation checkpointing (its cost in tokens/s) and the FSDP check compiled.
#      These are optional: one cut by the budget is reported as such and does not fail the script. First among
#      them (issue 13): fine-tuning throughput of the 2B4T shapes, seq 2048, micro 4 x accum 4, act. checkpointing.
# Needs: python3 with torch (CUDA), pytorch-lightning, numpy, sentencepiece; the repository on PYTHONPATH (set
# here), no build: `import bllama` does not load the C++ engine.
# Output: $OUT (else bench/results/<UTC stamp>-gpu-train/): one JSON per run, gpu_train_check.log, summary.md;
# the summary table is printed last. Exit status 1 if a run failed or timed out.
# Env: OUT, PYTHON (python3), BUDGET_S (450: a run starts only if the time it needs is left: 150 s for a compiled
#      1.7B run (cold compile of forward and backward), 60 s for an eager one), DRY=1,
#      PRESET (1.7b), FORCE_OOM=1 (treat the first seq-2048 run as out of memory: exercises the fallback).
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
STAMP=$(date -u +%Y-%m-%dT%H%MZ)
RES=${OUT:-$REPO/bench/results/$STAMP-gpu-train}
mkdir -p "$RES"
exec > >(tee -a "$RES/gpu_train_check.log") 2>&1
START=$(date +%s)
BUDGET_S=${BUDGET_S:-450}
OPTIONAL=0  # set around the optional runs of step 4: a run they cannot finish is "cut", not a failure
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET_S - $(elapsed) )); }

if [ "${DRY:-0}" = 1 ]; then
    PRESET=${PRESET:-tiny}; DEV=cpu; SEQ_LONG=256; SEQ_SHORT=128; MB_LONG=4; MB_SHORT=8; ACCUM=2
    STEPS=5; WARM=2; TLIM=10; COMPILE=${DRY_COMPILE:+--compile}; RUN_TIMEOUT=300; RESUME_ARGS=""
    NEED_COMPILED=40; NEED_EAGER=40; MB_EAGER=$MB_SHORT
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
else
    PRESET=${PRESET:-1.7b}; DEV=cuda; SEQ_LONG=2048; SEQ_SHORT=1024; MB_LONG=8; MB_SHORT=16; ACCUM=4
    STEPS=12; WARM=2; TLIM=25; COMPILE=--compile; RUN_TIMEOUT=240; RESUME_ARGS="gpu"
    NEED_COMPILED=150; NEED_EAGER=60; MB_EAGER=4
fi

echo "== gpu_train_check: preset $PRESET on $DEV, results in $RES, budget ${BUDGET_S}s"
(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv) || true
$PY - <<'EOF' || { echo "FATAL: cannot import bllama/torch"; exit 1; }
import sys, torch, pytorch_lightning as pl, bllama, bllama.train.module, bllama.train.trainer
assert not any(m.startswith("bllama._engine") for m in sys.modules), "the C++ engine was imported"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, lightning {pl.__version__}, "
      f"cuda {torch.cuda.is_available()} {torch.cuda.get_device_name() if torch.cuda.is_available() else ''}")
EOF

STATUS=()  # "name: status" lines for the summary

# bench NAME SEQ MICRO ACCUM [extra args...]: one train_throughput run; returns its exit status (3 = out of memory)
bench() {
    local name=$1 seq=$2 micro=$3 accum=$4; shift 4
    local need=$NEED_EAGER
    [ -n "$COMPILE" ] && need=$NEED_COMPILED
    if [ "$(left)" -lt "$need" ]; then
        echo "-- $name: skipped (budget: $(elapsed)s used, needs ${need}s)"; STATUS+=("$name: skipped (budget)"); return 2
    fi
    local t=$(( $(left) < RUN_TIMEOUT ? $(left) : RUN_TIMEOUT ))
    echo "-- $name: seq $seq, micro-batch $micro x accum $accum $* (timeout ${t}s, $(elapsed)s used)"
    if [ "${FORCE_OOM:-0}" = 1 ] && [ "$name" = "seq${SEQ_LONG}" ]; then
        echo "   FORCE_OOM: pretending $name ran out of memory"; STATUS+=("$name: oom (forced)"); return 3
    fi
    timeout --signal=TERM --kill-after=10 "$t" $PY bench/train_throughput.py --preset "$PRESET" --device "$DEV" \
        --precision bf16-mixed $COMPILE --seq-len "$seq" --batch "$micro" --accum "$accum" --steps "$STEPS" \
        --warmup "$WARM" --time-limit "$TLIM" --json "$RES/$name.json" "$@"
    local rc=$?
    case $rc in
        0) STATUS+=("$name: ok") ;;
        3) echo "   $name: OUT OF MEMORY"; STATUS+=("$name: oom") ;;
        124|137) echo "   $name: TIMED OUT after ${t}s"
                 if [ "$OPTIONAL" = 1 ]; then STATUS+=("$name: cut (optional, budget)"); else STATUS+=("$name: timeout"); fi ;;
        *) echo "   $name: FAILED (exit $rc)"; STATUS+=("$name: failed ($rc)") ;;
    esac
    return $rc
}

# measure SEQ MICRO ACCUM: the configuration, falling back on out-of-memory as described above
measure() {
    local seq=$1 micro=$2 accum=$3
    bench "seq$seq" "$seq" "$micro" "$accum" && return 0
    [ $? -eq 3 ] || return 1
    bench "seq${seq}_ac" "$seq" "$micro" "$accum" --activation-checkpointing && return 0
    [ $? -eq 3 ] || return 1
    bench "seq${seq}_ac_half" "$seq" $(( micro / 2 )) $(( accum * 2 )) --activation-checkpointing
}

measure "$SEQ_LONG" "$MB_LONG" "$ACCUM"
measure "$SEQ_SHORT" "$MB_SHORT" "$ACCUM"

resume_check() {  # resume_check NAME ARGS...: the Lightning FSDP path (tests/scripts/parallel_resume.py)
    local name=$1; shift
    local need=60
    [ "${*: -1}" = compile ] && need=100
    if [ "$(left)" -lt "$need" ]; then echo "-- $name: skipped (budget)"; STATUS+=("$name: skipped (budget)"); return; fi
    echo "-- $name: tests/scripts/parallel_resume.py fsdp $* ($(elapsed)s used)"
    rm -rf "$RES/$name"; mkdir -p "$RES/$name"
    timeout --signal=TERM --kill-after=10 "$(left)" $PY tests/scripts/parallel_resume.py fsdp "$RES/$name" "$@" \
        > "$RES/$name/run.log" 2>&1
    local rc=$?
    grep -h "RESUME_SUMMARY" "$RES/$name/run.log" | sed 's/^RESUME_SUMMARY //' > "$RES/$name.json"
    if [ $rc -eq 0 ] && [ -s "$RES/$name.json" ]; then
        STATUS+=("$name: ok"); cat "$RES/$name.json"
    elif [ "$OPTIONAL" = 1 ] && { [ $rc -eq 124 ] || [ $rc -eq 137 ]; }; then
        STATUS+=("$name: cut (optional, budget)")
    else
        STATUS+=("$name: failed ($rc)"); echo "   $name: FAILED (exit $rc); last lines:"; tail -n 25 "$RES/$name/run.log"
    fi
    rm -rf "$RES/$name"/{a,b,c,d,e}  # checkpoints: not results
}

resume_check fsdp_resume $RESUME_ARGS

# The fused Triton activation quantizer (bllama/model/triton_quant.py, on by default on CUDA since the 2026-11-28 runs showed
# a gain; BLLAMA_TRITON=0 turns it off): bit-identity and kernel times on this GPU, then eager training without and
# with it (torch.compile fuses the eager ops itself, so it is only for eager mode).
triton_ab() {
    if [ "$DEV" != cuda ] || ! $PY -c "import triton" 2>/dev/null; then
        echo "-- triton: skipped (no GPU or no triton)"; STATUS+=("triton: skipped"); return
    fi
    if [ "$(left)" -lt 60 ]; then echo "-- triton: skipped (budget)"; STATUS+=("triton: skipped (budget)"); return; fi
    echo "-- triton: bench/triton_quant_check.py ($(elapsed)s used)"
    local t=$(( $(left) < 90 ? $(left) : 90 ))
    if timeout "$t" $PY bench/triton_quant_check.py --json "$RES/triton_quant.json"; then STATUS+=("triton_quant_check: ok")
    else STATUS+=("triton_quant_check: failed"); fi
    BLLAMA_TRITON=0 COMPILE="" bench "seq${SEQ_SHORT}_eager" "$SEQ_SHORT" "$MB_EAGER" 1 || true
    BLLAMA_TRITON=1 COMPILE="" bench "seq${SEQ_SHORT}_eager_triton" "$SEQ_SHORT" "$MB_EAGER" 1 || true
}
# Issue 13: fine-tuning throughput and peak memory at the Microsoft 2B4T shapes (relu2, GQA 20/5 heads, vocab 128256,
# 2.4B parameters): the step `bllama train --init-from bitnet-b1.58-2B-4T-bf16` runs (the weights' values do not
# change its cost). fp32 master weights + AdamW state alone are ~39 GB, so activation checkpointing from the start.
finetune_2b4t() {
    local preset=2b4t seq=2048 micro=4 accum=4
    [ "${DRY:-0}" = 1 ] && { preset=tiny; seq=$SEQ_SHORT; micro=2; accum=2; }
    PRESET=$preset bench "seq${seq}_2b4t_ac" "$seq" "$micro" "$accum" --activation-checkpointing && return 0
    [ $? -eq 3 ] || return 1
    PRESET=$preset bench "seq${seq}_2b4t_ac_half" "$seq" $(( micro / 2 )) $(( accum * 2 )) --activation-checkpointing
}
OPTIONAL=1
finetune_2b4t || true
triton_ab
if [ ! -f "$RES/seq${SEQ_LONG}_ac.json" ]; then
    bench "seq${SEQ_LONG}_ac" "$SEQ_LONG" "$MB_LONG" "$ACCUM" --activation-checkpointing || true
fi
[ -n "$COMPILE" ] && resume_check fsdp_resume_compiled $RESUME_ARGS compile
OPTIONAL=0

echo
echo "== statuses ($(elapsed)s in all)"
printf '   %s\n' "${STATUS[@]}"
$PY - "$RES" <<'EOF' | tee "$RES/summary.md"
import json, pathlib, sys
res = pathlib.Path(sys.argv[1])
rows = []
for p in sorted(res.glob("seq*.json")):
    r = json.loads(p.read_text())
    head = (f"| {p.stem} | {r['seq_len']} | {r['micro_batch']}x{r['accum']} = {r['tokens_per_step']} "
            f"| {'yes' if r['activation_checkpointing'] else 'no'} | {'yes' if r['compile'] else 'no'} ")
    if "error" in r:
        rows.append(head + f"| OOM | | | {r.get('peak_mem_GiB')} | | | |")
        continue
    dyn = r.get("dynamo") or {}
    rows.append(head + f"| {r['tokens_per_s']:,.0f} | {r['mfu_pct']} | {r['step_s']} | {r['peak_mem_GiB']} "
                f"/ {r.get('peak_reserved_GiB')} | {r['loss_start']} -> {r['loss_end']} | {r['warmup_s']} "
                f"| {dyn.get('unique_graphs', '-')} / {dyn.get('graph_breaks', '-')} |")
print(f"\n### bench/gpu_train_check.sh ({res.name})\n")
runs = [json.loads(p.read_text()) for p in res.glob("seq*.json")]
devs = sorted({r.get("device_name") for r in runs if r.get("device_name")})
torches = sorted({r.get("torch") for r in runs if r.get("torch")})
print(f"device: {', '.join(devs)}; torch {', '.join(torches)}; preset {runs[0]['preset'] if runs else '?'}, "
      f"bf16-mixed (fp32 master weights and AdamW state), AdamW fused on CUDA\n")
print("| run | seq | micro x accum = tokens/step | act. ckpt | compile | tokens/s | MFU % | s/step "
      "| peak GiB allocated / reserved | loss start -> end | warm-up s | graphs / breaks |")  # _triton: BLLAMA_TRITON=1, _eager: =0
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows) if rows else "| (no throughput result) |||||||||||")
for p in sorted(res.glob("fsdp_resume*.json")):
    txt = p.read_text().strip()
    if not txt:
        print(f"\n{p.stem}: no result"); continue
    r = json.loads(txt)
    print(f"\n{p.stem}: world {r['world_size']}, steps {r['steps']}, max |weight diff| crash-resume "
          f"{r['max_weight_diff_crash_resume']:.3g}, extend {r['max_weight_diff_extend']:.3g}, max |loss diff| "
          f"{r['max_loss_diff']:.3g}, sharded dir {r['checkpoint_is_directory']}")
EOF
# exit status: 1 when a run failed or timed out, or no throughput was measured (out of memory alone is a result)
if printf '%s\n' "${STATUS[@]}" | grep -qE ': (failed|timeout)' || ! compgen -G "$RES/seq*.json" >/dev/null; then
    exit 1
fi
