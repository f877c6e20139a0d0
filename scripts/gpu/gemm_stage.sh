#!/usr/bin/env bash
# Builds the GEMM test and benchmark (sm_90a) in build-cugemm and stages them with the Debian shared
# libraries they link (absent on the GPU machine) in .devbuild/cugemm, the folder gemm_run.sh runs from.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-cugemm2}
[ -f "$BUILD/CMakeCache.txt" ] || cmake -S . -B "$BUILD" -DATOM_ENABLE_CUDA=ON -DATOM_CUDA_ARCHS=90a >/dev/null
cmake --build "$BUILD" -j2 --target test_backend_cuda bench_gemm
rm -rf .devbuild/cugemm && mkdir -p .devbuild/cugemm/lib
cp "$BUILD/tests/test_backend_cuda" "$BUILD/bench/bench_gemm" .devbuild/cugemm/
for lib in libfmt.so.9 libgomp.so.1; do cp -L "/lib/x86_64-linux-gnu/$lib" .devbuild/cugemm/lib/; done
du -sh .devbuild/cugemm
