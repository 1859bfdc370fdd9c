#!/usr/bin/env bash
# Resource budgets of the decode-path CUDA kernels, checked without a GPU: compiles each kernel file for sm_90
# (CUDA_ARCH to change it) with ptxas' report (-Xptxas -v) and fails when a kernel
#   - spills (any spill store or load),
#   - has a stack frame (local memory: a register array indexed at run time, or a call),
#   - uses more registers than its family's budget in tests/ptxas_budget.txt (set from the 2026-12-06 numbers plus
#     about 10%: a change that needs more must say why and raise the budget in the same commit),
#   - uses more than 48 KiB of static shared memory,
#   - or has no budget line (a new kernel gets one when it is added).
# Kernels of the persistent-kernel work that print from a watchdog (printf needs a stack frame) are listed with
# "stack ok" in the budget file. Skips (exit 0, saying so) where nvcc is missing. ~80 s of one core.
#
#   bash tests/check_ptxas.sh                 # all files in FILES below
#   bash tests/check_ptxas.sh csrc/cuda/kernels/head.cu
set -uo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || true)}
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
if [ -z "$NVCC" ]; then echo "check_ptxas: SKIP (no nvcc)"; exit 0; fi
ARCH=${CUDA_ARCH:-90}
FILES=("$@")
if [ ${#FILES[@]} -eq 0 ]; then
    FILES=(csrc/cuda/kernels/gemv_ternary.cu csrc/cuda/kernels/norm_quant.cu csrc/cuda/kernels/attention.cu
           csrc/cuda/kernels/rope_kv.cu csrc/cuda/kernels/head.cu csrc/cuda/kernels/head_q8.cu
           csrc/cuda/kernels/sampling.cu)
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
status=0
for f in "${FILES[@]}"; do
    log=$TMP/$(basename "$f").log
    if ! "$NVCC" -std=c++17 -O3 -arch=sm_$ARCH -Icsrc --expt-relaxed-constexpr -lineinfo -cubin -Xptxas -v \
        "$f" -o "$TMP/out.cubin" >"$log" 2>&1; then
        cat "$log"; echo "check_ptxas: FAIL: $f does not compile"; status=1; continue
    fi
    python3 - "$f" "$log" "${PTXAS_BUDGET:-tests/ptxas_budget.txt}" <<'EOF' || status=1
import re, sys
src, log, budget_path = sys.argv[1:4]
budgets = []  # (substring of the mangled name, max registers, stack allowed)
for line in open(budget_path):
    line = line.split("#", 1)[0].split()
    if line:
        budgets.append((line[0], int(line[1]), "stack-ok" in line[2:]))
kernels, cur = [], None
for line in open(log):
    m = re.search(r"Compiling entry function '(\S+)'", line)
    if m:
        cur = {"name": m.group(1), "stack": 0, "spill": 0, "regs": 0, "smem": 0}
        kernels.append(cur)
        continue
    if cur is None:
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        cur["stack"], cur["spill"] = int(m.group(1)), int(m.group(2)) + int(m.group(3))
    m = re.search(r"Used (\d+) registers", line)
    if m:
        cur["regs"] = int(m.group(1))
        s = re.search(r"(\d+) bytes smem", line)
        cur["smem"] = int(s.group(1)) if s else 0
bad = 0
for k in kernels:
    match = [b for b in budgets if b[0] in k["name"]]
    why = []
    if not match:
        why.append("no budget line in tests/ptxas_budget.txt")
    else:
        _, max_regs, stack_ok = match[0]
        if k["regs"] > max_regs:
            why.append(f"{k['regs']} registers > budget {max_regs}")
        if k["stack"] and not stack_ok:
            why.append(f"{k['stack']} bytes stack frame")
    if k["spill"]:
        why.append(f"{k['spill']} bytes spilled")
    if k["smem"] > 48 * 1024:
        why.append(f"{k['smem']} bytes static shared memory")
    if why:
        bad += 1
        print(f"check_ptxas: FAIL {src}: {k['name']}: " + "; ".join(why))
print(f"check_ptxas: {src}: {len(kernels)} kernels, {bad} over budget"
      + (f", max {max(k['regs'] for k in kernels)} registers" if kernels else ""))
sys.exit(1 if bad or not kernels else 0)
EOF
done
[ $status -eq 0 ] && echo "check_ptxas: ok (sm_$ARCH)" || echo "check_ptxas: FAILED (sm_$ARCH)"
exit $status
