#!/usr/bin/env bash
# Everything CUDA in one call on a GPU machine: build (sm_90; CUDA_ARCHS=80 for an A100), the GPU tests (ctest, then pytest through
# the Python module), the kernel and end-to-end benchmarks; a short table last. Logs and JSON go to $OUT (the
# device tool's folder) or bench/results/<date>-gpu-check/ (results/README.md indexes them).
#
#   bash bench/gpu_check.sh            # engine: build + tests + benchmarks (over 8 minutes on an H100: split
#                                      # it over two calls of one warm machine, bench/NOTES-cuda.md)
#   SECTIONS="build bench" bash bench/gpu_check.sh   # a subset of: build probe ctest pytest bench sanitize
#   (bench = kbench dbench rbench: the kernels, end-to-end C++ decode/prompt, the Runtime; each also alone)
#   (sanitize: the GPU kernel tests under compute-sanitizer memcheck + racecheck; not in the default set)
#   SECTIONS="build vcheck stage0 stage1" bash bench/gpu_check.sh   # issue #18 (persistent decode), in this order:
#     vcheck  tests/cuda/test_decode_variants first (the stage-1 variants against today's path, bit-exact);
#     stage0  bench_cuda_stage0: the producer/consumer weight stream and the cross-block hop (watchdog + deadline);
#     stage1  bench_cuda_decode --stage1: today's path and the variants, same machine, alternated.
#   A build made here (sm_90a) can travel: PREBUILT=build/gpu-carry (carry it) skips the build section's compile
#   when the binaries are there (see bench/NOTES-cuda.md, "Issue 18").
#
# BUDGET_S (default 400): sections that would start later than this many seconds into the call are skipped.
# The GPU machine has no network: the Python deps it lacks travel as wheels in .whl/ (see bench/NOTES-cuda.md),
# installed into /tmp/site. Every section runs even if an earlier one failed; the exit status is the first
# failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAMP=$(date -u +%Y-%m-%d)
RES=${OUT:-$ROOT/bench/results/$STAMP-gpu-check}
mkdir -p "$RES"
SECTIONS=${SECTIONS:-"build probe ctest pytest bench"}
JOBS=$(nproc)
BUILD=${PREBUILT:+$ROOT/$PREBUILT}
BUILD=${BUILD:-$ROOT/build/gpu}
status=0
declare -A RESULT

note() { echo; echo "== $*"; }
# No section starts after BUDGET_S seconds of the call (default 400; 0: no limit), so a call given a device
# timeout of ~540 s still ends with its summary rather than being cut in the middle of a section.
BUDGET_S=${BUDGET_S:-400}
run_section() {  # name, command...: logs to $RES/<name>.log, records pass/FAIL
    local name=$1; shift
    if [ "$BUDGET_S" -gt 0 ] && [ "$SECONDS" -ge "$BUDGET_S" ]; then
        RESULT[$name]="skipped (budget: ${SECONDS} s >= BUDGET_S ${BUDGET_S} s)"; echo "== $name: ${RESULT[$name]}"
        return
    fi
    note "$name"
    local t0=$SECONDS
    if "$@" 2>&1 | tee "$RES/$name.log"; then RESULT[$name]="ok ($((SECONDS - t0)) s)"
    else RESULT[$name]="FAIL ($((SECONDS - t0)) s, see $name.log)"; [ $status -eq 0 ] && status=1; fi
    echo "== $name: ${RESULT[$name]} (at ${SECONDS} s of the call)"  # seen even if the call is cut later
}

note "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$RES/machine.txt"
nvcc --version | tail -1 | tee -a "$RES/machine.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)" | tee -a "$RES/machine.txt"

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# `import bllama` finds the package and the module the build section puts into bllama/ (no pip install there).
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

# cuBLASLt is opened at run time: point it at the image's library (the pip wheel under torch's environment) so
# the cuBLASLt prompt path is tested and timed, not skipped.
if [ -z "${BLLAMA_CUBLASLT:-}" ]; then
    BLLAMA_CUBLASLT=$(python3 -c "import importlib.util as u, pathlib as p; s = u.find_spec('nvidia'); print(next((str(f) for r in (s.submodule_search_locations if s else []) for f in p.Path(r).glob('cu*/lib/libcublasLt.so.*')), ''))" 2>/dev/null)
    [ -z "$BLLAMA_CUBLASLT" ] && BLLAMA_CUBLASLT=$(ldconfig -p | awk '/libcublasLt.so/ {print $NF; exit}')
    export BLLAMA_CUBLASLT
fi
echo "cuBLASLt: ${BLLAMA_CUBLASLT:-not found}" | tee -a "$RES/machine.txt"

build() {
    if [ -n "${PREBUILT:-}" ] && [ -x "$BUILD/bench_cuda_stage0" ] && [ -x "$BUILD/test_decode_variants" ]; then
        echo "prebuilt binaries in $BUILD: no compile"; return 0
    fi
    cmake -G Ninja -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" \
        -DBLLAMA_BUILD_PYTHON=ON -DBLLAMA_BUILD_TESTS=ON -DBLLAMA_BUILD_BENCH=ON -DPython_EXECUTABLE="$(command -v python3)" \
        -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$ROOT/bllama" && cmake --build "$BUILD" -j "$JOBS"
}

# Issue #18. Each binary runs under `timeout` (host deadline) and its kernels under their own globaltimer watchdog,
# so a hang costs seconds, not the call.
vcheck() {
    timeout -k 5 120 "$BUILD/test_decode_variants"
}
stage0() {
    timeout -k 5 150 "$BUILD/bench_cuda_stage0" --deadline-s 10 --json "$RES/stage0.jsonl" || return 1
    timeout -k 5 100 "$BUILD/bench_cuda_stage0" --deadline-s 10 --cols 8192 --mib 256 --json "$RES/stage0-cols8192.jsonl"
}
stage1() {
    timeout -k 5 240 "$BUILD/bench_cuda_decode" --shape 1.7b --prompt 512 --decode 128 --batch 1 --stage1 \
        --keep /tmp/bllama-1.7b.gguf --json "$RES/stage1-1.7b.json"
}
# (cpu_threads: reserved for bench/cpu_threads.sh, added by another change)

# ctest: the GPU kernel tests must pass, not skip (a skip here means the GPU was not seen). ctest logs a test that
# exits 77 (SKIP_RETURN_CODE) as passed; the CUDA tests print "SKIP: <reason>" first, which the log keeps.
ctest_gpu() {
    ctest --test-dir "$BUILD" --output-on-failure -j 4 || return 1
    ! grep -q "^SKIP:\|Not Run" "$BUILD/Testing/Temporary/LastTest.log"
}

# pytest through the module built above (bllama/_engine*.so); the GPU tests plus the engine suites they reuse.
# Every GPU test skips without a usable device, so check first that this module sees one.
pytest_gpu() {
    python3 -c "from bllama import _engine as e; assert e.cuda_compiled() and e.cuda_device_count() > 0, 'the module sees no GPU'" \
        || return 1
    python3 -m pytest -q -rs tests/test_cuda.py -p no:cacheprovider
}

# The benchmarks, in three sections (each timed in the summary): kbench = the kernels, dbench = end-to-end decode
# and prompt in C++ (the variants, fp16 KV, the int8 head), rbench = the same file through Runtime (Python, what
# users call). "bench" runs all three.
kbench() {
    "$BUILD/bench_cuda_kernels" --json "$RES/kernels.jsonl"
}
dbench() {
    "$BUILD/bench_cuda_decode" --shape 1.7b --prompt 512 --decode 128 --batch 1,4,16,64 --keep /tmp/bllama-1.7b.gguf \
        --json "$RES/decode-1.7b.json" || return 1
    echo "-- decode done at $SECONDS s"
    "$BUILD/bench_cuda_decode" --shape 1.7b --prompt 512 --decode 128 --batch 1 --kv-f16 --no-variants \
        --keep /tmp/bllama-1.7b.gguf --json "$RES/decode-1.7b-kvf16.json" || return 1
    echo "-- fp16-KV decode done at $SECONDS s"
    "$BUILD/bench_cuda_decode" --shape 1.7b --prompt 512 --decode 128 --batch 1 --head q8 --no-variants \
        --keep /tmp/bllama-1.7b.gguf --json "$RES/decode-1.7b-q8head.json"
}
rbench() {
    [ -f /tmp/bllama-1.7b.gguf ] || "$BUILD/bench_cuda_decode" --shape 1.7b --prompt 16 --decode 8 --batch 1 \
        --no-variants --keep /tmp/bllama-1.7b.gguf >/dev/null || return 1
    python3 -m bllama.cli bench /tmp/bllama-1.7b.gguf --device cuda \
        --prompt-tokens 512 --gen-tokens 128 --repeats 3 --json "$RES/runtime-1.7b.json" || return 1
    python3 -m bllama.cli bench /tmp/bllama-1.7b.gguf --device cuda --sequences 16 \
        --prompt-tokens 128 --gen-tokens 128 --repeats 3 --json "$RES/runtime-1.7b-b16.json"
}

# The GPU engine from Python with and without PyTorch in the same process, in both import orders (a build
# with a static cudart crashed when torch came first, 2026-11-28). A crash is rerun under cuda-gdb for its
# backtrace (probe.log).
probe() {
    local model=/tmp/bllama-probe.gguf ok=0
    python3 -c "from pathlib import Path; from bllama import bLlamaConfig; \
from bllama.tools.bench import write_random_gguf; write_random_gguf(bLlamaConfig.preset('tiny'), Path('$model'))" || return 1
    ldd "$ROOT"/bllama/_engine*.so | grep -i cudart
    local run="e = _engine.Engine('$model', device='cuda'); print(e.config['device_name'], e.generate([1, 2, 3], 8))"
    for pre in "from bllama import _engine" "import torch; from bllama import _engine" "from bllama import _engine; import torch"; do
        echo "-- $pre"
        if ! timeout 60 python3 -c "$pre; $run"; then
            ok=1
            timeout 90 cuda-gdb -q -batch -ex run -ex "bt 40" \
                --args python3 -c "$pre; $run" 2>&1 | grep -v "^\[New Thread\|^\[Thread" | tail -60
        fi
    done
    return $ok
}

# Out-of-bounds accesses and shared-memory races in the kernels (a moving error is a race: METHOD.md).
# memcheck of every suite first, racecheck after: racecheck is the slow one (on an H100 racecheck of
# test_ternary_kernels was still running when a 235 s call (build + memcheck of it) ended), so a call cut
# at its limit still has every memcheck result.
sanitize() {
    local ok=0 tool t
    for tool in memcheck racecheck; do
        for t in test_ternary_kernels test_ops test_cuda_model; do
            echo "-- compute-sanitizer --tool $tool $t"
            timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 "$BUILD/$t" || ok=1
        done
    done
    return $ok
}

# Sections run in the order SECTIONS gives (put the most wanted first: a call cut at its time limit keeps
# the logs and JSON of the sections that finished).
for sec in $SECTIONS; do
    case $sec in
        build) run_section build build ;;
        probe) run_section probe probe ;;
        ctest) run_section ctest ctest_gpu ;;
        pytest) run_section pytest pytest_gpu ;;
        bench) run_section kbench kbench; run_section dbench dbench; run_section rbench rbench ;;
        kbench|dbench|rbench) run_section "$sec" "$sec" ;;
        sanitize) run_section sanitize sanitize ;;
        vcheck|stage0|stage1) run_section "$sec" "$sec" ;;
        cputhreads) run_section cputhreads bash bench/cpu_threads.sh ;;  # CPU decode vs threads (issue 20)
        *) echo "unknown section $sec" ;;
    esac
done

note "summary ($(head -2 "$RES/machine.txt" | tail -1 | cut -d, -f1), $STAMP)"
for k in build probe ctest pytest kbench dbench rbench sanitize vcheck stage0 stage1; do [ -n "${RESULT[$k]:-}" ] && printf "%-8s %s\n" "$k" "${RESULT[$k]}"; done
python3 - "$RES" <<'EOF'
import json, sys, pathlib
res = pathlib.Path(sys.argv[1])
def load(name):
    p = res / name
    return json.loads(p.read_text()) if p.exists() else None
d = load("decode-1.7b.json")
if d:
    print(f"copy bandwidth {d['copy_GB_s']:.0f} GB/s; batch-1 floor {d['floor_tok_s']:.0f} tok/s")
    print(f"{'1.7B':<28}{'tok/s':>10}  target")
    print(f"{'prompt 512, mma':<28}{d['prompt_tok_s_mma']:>10.0f}  >= 50000")
    if d['prompt_tok_s_cublaslt'] > 0:
        print(f"{'prompt 512, cublaslt':<28}{d['prompt_tok_s_cublaslt']:>10.0f}  >= 50000")
    for r in d["decode"]:
        print(f"{'decode batch %d' % r['batch']:<28}{r['tok_s']:>10.0f}  {'>= 2000' if r['batch'] == 1 else ''}")
    print(f"{'decode batch 1, no graph':<28}{d['decode_no_graph']['tok_s']:>10.0f}")
    for name, label in (("decode-1.7b-kvf16.json", "decode batch 1, fp16 KV"), ("decode-1.7b-q8head.json", "decode batch 1, int8 head")):
        e = load(name)
        if e and e["decode"]:
            print(f"{label:<28}{e['decode'][0]['tok_s']:>10.0f}")
    for name, label in (("runtime-1.7b.json", "Runtime (Python), batch 1"), ("runtime-1.7b-b16.json", "Runtime, 16 sequences")):
        e = load(name)
        if e and e.get("engine"):
            print(f"{label:<28}{e['engine'][0]['decode_tok_s']:>10.0f}  (prompt {e['engine'][0]['prompt_tok_s']:.0f} tok/s)")
    # The decode paths (CudaOptions pdl on / off), each its own model, mean of 2 rounds.
    var = {}
    for v in d.get("decode_variants", []):
        var.setdefault(v["name"], {})[v["batch"]] = v
    if var:
        base = var.get("baseline", {}).get(1, {}).get("tok_s", 0)
        print(f"{'decode variants':<28}{'B=1':>10}{'B=2':>8}{'B=4':>8}  spread(B=1)  vs baseline (B=1)")
        for name, by_b in var.items():
            b1 = by_b.get(1, {})
            note = "" if not b1.get("pdl") or b1.get("pdl_active") else "  (PDL not supported: ignored)"
            rel = f"{100 * (b1['tok_s'] / base - 1):+.1f}%" if base and b1 else "-"
            print(f"{'  ' + name:<28}{b1.get('tok_s', 0):>10.0f}{by_b.get(2, {}).get('tok_s', 0):>8.0f}"
                  f"{by_b.get(4, {}).get('tok_s', 0):>8.0f}  {b1.get('spread_pct', 0):>10.1f}%  {rel}{note}")
# Issue #18: stage 0 (stream GB/s vs copy; hop us) and stage 1 (decode variants, batch 1).
for name in ("stage0.jsonl", "stage0-cols8192.jsonl"):
    p = res / name
    if p.exists():
        rows = [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
        copy = next((r["GB_s"] for r in rows if r["feed"] == "copy"), 0)
        best = {}
        for r in rows:
            if r["bench"] == "stream" and r["feed"] in ("tma", "direct"):
                k = (r["feed"], r["alu"])
                if r["GB_s"] > best.get(k, {}).get("GB_s", 0):
                    best[k] = r
        print(f"{name}: copy {copy:.0f} GB/s; best stream GB/s (chunk, stages) by feed x alu:")
        for (feed, alu), r in sorted(best.items()):
            print(f"  {feed:<6} {alu:<5} {r['GB_s']:7.0f} ({100 * r['GB_s'] / copy if copy else 0:.0f}% of copy; "
                  f"{r['chunk']} B x {r['stages']}){'' if r['exact'] else '  NOT EXACT'}")
        for r in rows:
            if r["bench"] == "hop":
                print(f"  hop {r['feed']:<14} {r['us']:.3f} us{'' if r['exact'] else '  WRONG DATA'}")
s1 = load("stage1-1.7b.json")
if s1:
    base = next((v["tok_s"] for v in s1["decode_variants"] if v["name"] == "pdl" and v["batch"] == 1), 0)
    print("stage 1, 1.7B batch 1 (tok/s, vs pdl = today's default):")
    for v in s1["decode_variants"]:
        if v["batch"] == 1:
            print(f"  {v['name']:<24}{v['tok_s']:>8.0f}  {100 * (v['tok_s'] / base - 1) if base else 0:+.1f}%  spread {v['spread_pct']:.1f}%")
kp = res / "kernels.jsonl"
if kp.exists():
    rows = [json.loads(l) for l in kp.read_text().splitlines() if l.strip()]
    gemv_us = {}
    for r in rows:
        if r["bench"] == "gemv" and r["model"] == "1.7b" and r["tokens"] == 1 and r["kernel"] == "gemv":
            print(f"gemv 1.7b {r['matrix']:<8} 1 token: {r['gbps']:6.0f} GB/s = {r['pct_copy']:3.0f}% of copy "
                  f"(target >= 70% on the FFN shapes)")
        if r["bench"] == "gemv" and r["model"] == "1.7b" and r["tokens"] == 1:
            gemv_us.setdefault(r["matrix"], {})[r["kernel"]] = r["us"]
        if r["bench"] == "summary" and r["model"] == "1.7b":
            print(f"matmuls only, 1.7b, {r['what']} [{r['kernel']}]: {r['value']}")
    # Decode GEMV alone and with its input norm (rmsnorm_quant + gemv), each chained plainly / by PDL.
    kinds = ["gemv", "norm+gemv", "gemv+pdl", "norm+gemv+pdl"]
    if any("norm+gemv" in k for k in gemv_us.values()):
        print("us per call, 1.7b, 1 token: " + " | ".join(kinds))
        for m, k in gemv_us.items():
            print(f"  {m:<8} " + " ".join(f"{k[x]:>7.2f}" if x in k else f"{'-':>7}" for x in kinds))
    # Decode attention per layer: rope_kv_write + attention_decode (3 launches), plainly / by PDL.
    att = {}
    for r in rows:
        if r["bench"] == "attention":
            att.setdefault((r["model"], r["pos"]), {})[r["kernel"]] = r["us"]
    if att:
        kinds = ["rope+attn", "rope+attn+pdl"]
        print("attention us per layer, 1 token: " + " | ".join(kinds))
        for (m, p), k in att.items():
            print(f"  {m:<5} pos {p:<5} " + " ".join(f"{k[x]:>7.2f}" if x in k else f"{'-':>7}" for x in kinds))
EOF
echo "results in $RES"
exit $status
