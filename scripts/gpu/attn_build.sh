#!/usr/bin/env bash
# Builds the cuattn test binary and benchmarks here (no GPU needed) and stages them, with the shared
# libraries the GPU machine lacks, in .devbuild/cuattn (git-ignored; pass it as `carry`).
# test_cuattn holds only tests/backend/cuda/{quantize,kv_cache,attention}/test_*.cu, linked like test_backend_cuda,
# so that it builds while other helpers' test files are in flux.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-cuattn}
STAGE=.devbuild/cuattn
cmake -S . -B "$BUILD" -DATOM_ENABLE_CUDA=ON >/dev/null
cmake --build "$BUILD" -j2 --target atom_backend_cuda bench_attention bench_quantize
objs=()
for src in tests/backend/cuda/quantize/test_*.cu tests/backend/cuda/kv_cache/test_*.cu tests/backend/cuda/attention/test_*.cu; do
  obj="${src#tests/}.o"
  make -C "$BUILD/tests" "$obj" >/dev/null
  objs+=("$BUILD/tests/CMakeFiles/test_backend_cuda.dir/$obj")
done
mkdir -p "$STAGE/lib"
# Same libraries and order as CMake's link line for test_backend_cuda.
libs=$(sed -e 's/.* -o test_backend_cuda//' "$BUILD/tests/CMakeFiles/test_backend_cuda.dir/link.txt" | sed -e 's#\.\./lib#'"$BUILD"'/lib#g')
c++ -O3 "${objs[@]}" -o "$STAGE/test_cuattn" $libs
cp "$BUILD/bench/bench_attention" "$BUILD/bench/bench_quantize" "$STAGE/"
cp -L /lib/x86_64-linux-gnu/libfmt.so.9 /lib/x86_64-linux-gnu/libgomp.so.1 "$STAGE/lib/"
ls -la "$STAGE"
