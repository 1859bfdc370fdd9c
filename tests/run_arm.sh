#!/usr/bin/env bash
# The aarch64 engine on an x86 machine (issue #17): cross-compile the C++ engine and its ctest suite with Debian's
# g++-aarch64-linux-gnu, run the suite under qemu-user twice (-cpu max: scalar + neon + dotprod + i8mm kinds, i8mm
# chosen; -cpu cortex-a72: no dotprod or i8mm, so the dispatch must fall back to neon), then check end to end that
# small random models give the same logits as the host's scalar reference (tests/cpp/logits_dump.cpp).
# Emulation checks results, never speed (bench/NOTES-kernels.md).
#
# Tools missing: installed when this is root on Debian/Ubuntu; otherwise skipped with the reason, or a failure
# when CI=true. HOST_BUILD (default build/release) is the host build whose logits_dump gives the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
HOST_BUILD=${HOST_BUILD:-build/release}
ARM_BUILD=build/arm64
start=$SECONDS

skip() {
  if [ "${CI:-}" = "true" ]; then echo "run_arm.sh: FAILED: $1 (CI=true: the ARM checks must run)"; exit 1; fi
  echo "run_arm.sh: SKIPPED the aarch64 checks: $1"
  exit 0
}

if [ "$(uname -m)" = "aarch64" ] || [ "$(uname -m)" = "arm64" ]; then
  skip "this machine is aarch64 itself: build natively (README) and run ctest there; BLLAMA_KERNEL=neon forces the no-dotprod path"
fi
if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing the aarch64 cross compiler and qemu-user"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user >/dev/null
  else
    skip "g++-aarch64-linux-gnu / qemu-aarch64 are missing and cannot be installed here (needs root and apt-get)"
  fi
fi

echo "== aarch64: cross build (C++ engine + tests only)"
cmake -G Ninja --no-warn-unused-cli -S . -B "$ARM_BUILD" -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release \
      -DBLLAMA_CUDA=OFF -DBLLAMA_BUILD_PYTHON=OFF -DBLLAMA_BUILD_BENCH=OFF >/dev/null
cmake --build "$ARM_BUILD" -j "$JOBS"

# ctest prefixes each test with qemu-aarch64 (the toolchain's emulator); qemu reads its CPU model from QEMU_CPU.
for cpu in max cortex-a72; do
  echo "== aarch64: ctest under qemu -cpu $cpu"
  QEMU_CPU=$cpu ctest --test-dir "$ARM_BUILD" --output-on-failure -j "$JOBS"
done

echo "== aarch64: logits of random models vs the host's scalar reference"
if [ ! -x "$HOST_BUILD/logits_dump" ]; then
  cmake -G Ninja -S . -B "$HOST_BUILD" -DCMAKE_BUILD_TYPE=Release -DBLLAMA_BUILD_PYTHON=OFF >/dev/null
  cmake --build "$HOST_BUILD" -j "$JOBS" --target logits_dump
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
qemu() { qemu-aarch64 -L /usr/aarch64-linux-gnu "$@"; }
BLLAMA_KERNEL=scalar "$HOST_BUILD/logits_dump" write "$out" "$out/host_scalar.bin" >/dev/null
BLLAMA_KERNEL=scalar QEMU_CPU=max qemu "$ARM_BUILD/logits_dump" write "$out" "$out/arm_scalar.bin" >/dev/null
QEMU_CPU=max qemu "$ARM_BUILD/logits_dump" write "$out" "$out/arm_best.bin" >"$out/best.log"
head -1 "$out/best.log"
grep -q "kernel i8mm" "$out/best.log" || { echo "-cpu max did not choose the i8mm kernel"; exit 1; }
QEMU_CPU=max BLLAMA_KERNEL=dotprod qemu "$ARM_BUILD/logits_dump" write "$out" "$out/arm_dotprod.bin" >"$out/dotprod.log"
head -1 "$out/dotprod.log"
grep -q "kernel dotprod" "$out/dotprod.log" || { echo "BLLAMA_KERNEL=dotprod was not honoured"; exit 1; }
QEMU_CPU=max BLLAMA_KERNEL=neon qemu "$ARM_BUILD/logits_dump" write "$out" "$out/arm_forced.bin" >"$out/forced.log"
head -1 "$out/forced.log"
grep -q "kernel neon" "$out/forced.log" || { echo "BLLAMA_KERNEL=neon was not honoured"; exit 1; }
# A forced kind the CPU lacks falls back to the best it has (with a warning): i8mm and dotprod on a Cortex-A72.
for want in i8mm dotprod; do
  QEMU_CPU=cortex-a72 BLLAMA_KERNEL=$want qemu "$ARM_BUILD/logits_dump" write "$out" "$out/arm_a72_$want.bin" >"$out/a72.log" 2>&1
  head -2 "$out/a72.log"
  grep -q "kernel neon" "$out/a72.log" || { echo "cortex-a72 with BLLAMA_KERNEL=$want did not fall back to neon"; exit 1; }
done
# TQ1_0 at 1.6 bits when asked for (the tiny-relu2 model; auto repacks it to 2 bits on aarch64): the base-3 kernels
# of i8mm (-cpu max) and neon (cortex-a72) must give the 2-bit layout's bytes.
QEMU_CPU=max BLLAMA_TQ1_LAYOUT=base3 qemu "$ARM_BUILD/logits_dump" write "$out" "$out/arm_base3.bin" >/dev/null
QEMU_CPU=cortex-a72 BLLAMA_TQ1_LAYOUT=base3 qemu "$ARM_BUILD/logits_dump" write "$out" "$out/arm_a72_base3.bin" >/dev/null
cmp=("$HOST_BUILD/logits_dump" compare)
# The scalar kind is the same arithmetic in the same order on both architectures: same bytes.
"${cmp[@]}" "$out/arm_scalar.bin" "$out/host_scalar.bin" 0
# neon, dotprod and i8mm differ only in integer dot products, which are exact: same bytes as each other.
for f in arm_dotprod arm_forced arm_a72_i8mm arm_a72_dotprod arm_base3 arm_a72_base3; do "${cmp[@]}" "$out/$f.bin" "$out/arm_best.bin" 0; done
# Against the scalar reference the SIMD kinds differ only where the reference allows (the f16 head's summation
# order, attention's exp), exactly as AVX2 / AVX-512 do on x86 (measured: ~2e-6 of logits of magnitude ~2).
"${cmp[@]}" "$out/arm_best.bin" "$out/host_scalar.bin" 1e-4
echo "== aarch64 checks passed in $((SECONDS - start)) s"
