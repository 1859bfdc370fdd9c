#!/usr/bin/env bash
# Every test of the project: the C++ engine under ctest (release; aarch64 under qemu, tests/run_arm.sh; then
# AddressSanitizer + UBSan), then pytest.
# Each configuration is built once: build/release is shared with pip's extension build (same configuration), the
# aarch64 and sanitizer builds are different compilations by nature. Where nvcc exists and a GPU driver is present
# (or CI=true, or BLLAMA_CUDA=ON) the release build also compiles the CUDA backend (csrc/cuda, sm_80 + sm_90) and
# its GPU tests and benchmarks, so GPU code never rots unseen; without a GPU those tests report "skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}

# build/release is configured exactly as pip's extension build configures it (setup.py --print-cmake-args): after
# `pip install -e .` the engine's objects are already compiled there and only the tests and benchmarks are new.
mapfile -t CONFIG < <(python setup.py --print-cmake-args)
# BLLAMA_CUDA=AUTO (the default) compiles the CUDA backend where nvcc exists and either a GPU driver is present or
# CI=true; without a driver its tests could only be skipped, and nvcc is most of the build's time.
has_gpu_driver() { command -v nvidia-smi >/dev/null || [ -e /proc/driver/nvidia/version ] || ldconfig -p 2>/dev/null | grep -q 'libcuda\.so'; }
# CMakeLists.txt reads BLLAMA_CUDA in any case, with CMake's spellings of on and off: so does this check.
case "$(printf %s "${BLLAMA_CUDA:-AUTO}" | tr a-z A-Z)" in
  ON|YES|TRUE|Y|1) CUDA_CHOICE=ON ;;
  OFF|NO|FALSE|N|0) CUDA_CHOICE=OFF ;;
  *) CUDA_CHOICE=AUTO ;;  # an unknown word: CMake refuses it by name
esac
CUDA_WANTED=no
if command -v nvcc >/dev/null && { [ "$CUDA_CHOICE" = ON ] || { [ "$CUDA_CHOICE" = AUTO ] && { [ "${CI:-}" = true ] || has_gpu_driver; }; }; }; then
  CUDA_WANTED=yes
fi

if [ "$CUDA_WANTED" = yes ]; then
  # cuBLASLt's headers for the cuBLASLt prompt path (the library itself is opened at run time on a GPU machine).
  if python -c "import importlib.util as u, pathlib as p, sys; s = u.find_spec('nvidia'); sys.exit(0 if s and any(p.Path(r).glob('cu*/include/cublasLt.h') for r in s.submodule_search_locations) else 1)" 2>/dev/null \
      || ls /usr/local/cuda/include/cublasLt.h >/dev/null 2>&1; then
    :
  else
    echo "== fetching cuBLASLt headers (nvidia-cublas) for the CUDA build's cuBLASLt path"
    python -m pip install -q "nvidia-cublas>=13,<14"
  fi
  WHY="CUDA backend included: $( [ "${CI:-}" = true ] && echo CI=true || { [ "$CUDA_CHOICE" = ON ] && echo BLLAMA_CUDA=ON || echo 'a GPU driver is present'; })"
elif command -v nvcc >/dev/null; then
  WHY="CPU only: nvcc exists but no GPU driver (CI=true or BLLAMA_CUDA=ON compiles the CUDA backend too)"
else
  WHY="CPU only: no nvcc"
fi

echo "== C++ engine: release build + ctest in build/release (${CONFIG[*]}): the engine (compiled by pip's build" \
     "if it ran, else now), the C++ tests and benchmarks; $WHY"
# pip builds in an isolated environment that is deleted afterwards, so the cache may name a ninja that no longer
# exists: point it at this environment's (the test extra installs one). Compile commands are unchanged, so the
# objects pip compiled stay up to date.
cmake -S . -B build/release "${CONFIG[@]}" -DCMAKE_MAKE_PROGRAM="$(command -v ninja)" >/dev/null
cmake --build build/release -j "$JOBS"
if [ "$CUDA_WANTED" = yes ]; then
  # The CUDA build must really have happened: a silently CPU-only build would hide broken GPU code.
  test -x build/release/bench_cuda_decode || { echo "nvcc is present but the CUDA backend was not built"; exit 1; }
  echo "   (CUDA backend compiled by nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') for sm_80 + sm_90;" \
       "cuBLASLt path: $(grep -q 'BLLAMA_CUBLASLT_INCLUDE:PATH=/' build/release/CMakeCache.txt && echo yes || echo no))"
  echo "== CUDA decode kernels: ptxas budgets (registers, spills, stack, shared memory; tests/ptxas_budget.txt)"
  bash tests/check_ptxas.sh
fi
ctest --test-dir build/release --output-on-failure

echo "== C++ engine: aarch64 cross build + ctest under qemu, logits vs this build's scalar reference"
HOST_BUILD=build/release bash tests/run_arm.sh

echo "== C++ engine: AddressSanitizer + UBSan build + ctest (build/asan: CPU code in Debug with sanitizers, a" \
     "separate build because every object differs; reused if up to date)"
LAUNCHER=()
if command -v ccache >/dev/null; then
  LAUNCHER=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
cmake -G Ninja -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DBLLAMA_SANITIZE=ON -DBLLAMA_CUDA=OFF \
      -DBLLAMA_BUILD_PYTHON=OFF -DBLLAMA_BUILD_BENCH=OFF "${LAUNCHER[@]}" >/dev/null
cmake --build build/asan -j "$JOBS"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build/asan --output-on-failure

echo "== Python: pytest (bllama._engine as pip built it: $(python -c 'import bllama._engine as e; print(e.__file__)' 2>/dev/null || echo 'not built'))"
python -m pytest -q tests
