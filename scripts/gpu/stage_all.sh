#!/usr/bin/env bash
# Stages the CUDA test binary and benchmarks of a build (default build/) in .devbuild/all, with the shared
# libraries a bare GPU machine may lack (everything ldd resolves outside glibc and the CUDA toolkit), so that
# the device tool can carry them:  run(command="bash scripts/gpu/validate_all.sh", carry=[".devbuild/all"])
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
STAGE=.devbuild/all
rm -rf "$STAGE" && mkdir -p "$STAGE/lib"
bins=("$BUILD/tests/test_backend_cuda" "$BUILD/bench/bench_gemm" "$BUILD/bench/bench_attention" "$BUILD/bench/bench_quantize")
cp "${bins[@]}" "$STAGE/"
for b in "${bins[@]}"; do
  ldd "$b" | awk '/=> \// {print $3}' | grep -vE 'libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|ld-linux|libcuda\.so|libstdc\+\+|libgcc_s|libcublas|libcudart' || true
done | sort -u | while read -r lib; do cp -L "$lib" "$STAGE/lib/"; done
du -sh "$STAGE"
