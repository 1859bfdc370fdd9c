#!/usr/bin/env bash
# Every test of the project: the C++ engine under ctest (release, then AddressSanitizer + UBSan),
# a compile check of the CUDA sources with nvcc when there are any, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}

echo "== C++ engine: release build + ctest"
cmake -G Ninja -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DBLLAMA_BUILD_PYTHON=OFF >/dev/null
cmake --build build/release -j "$JOBS"
ctest --test-dir build/release --output-on-failure

echo "== C++ engine: AddressSanitizer + UBSan build + ctest"
cmake -G Ninja -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DBLLAMA_SANITIZE=ON -DBLLAMA_BUILD_PYTHON=OFF \
      -DBLLAMA_BUILD_BENCH=OFF >/dev/null
cmake --build build/asan -j "$JOBS"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build/asan --output-on-failure

if compgen -G "csrc/cuda/*.cu" >/dev/null; then
  echo "== CUDA sources: nvcc compile check (sm_80, sm_90)"
  bash tests/cuda_compile_check.sh
fi

echo "== Python: pytest"
python -m pytest -q tests
