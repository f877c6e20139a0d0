#!/usr/bin/env bash
# Short GPU check of the serving-size GEMM (for a lease with little time): its tests, the runner tests, then
# bench_gemm on two shapes at serving M. Binaries staged by scripts/gpu/stage_all.sh; logs to $OUT.
set -uo pipefail
DEFAULT_OUT=/tmp/gemm_out
source "$(dirname "$0")/staged_env.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 90 "$STAGE/test_backend_cuda" --gtest_filter='GemmW4A4SwapAb*:CudaQuantizeAct*:*Runner*' > "$OUT/tests.log" 2>&1
echo "tests exit $?: $(grep -E '^\[  PASSED|^\[  FAILED' "$OUT/tests.log" | tr '\n' ' ')"
grep -E "^\[  FAILED" "$OUT/tests.log" | head
timeout 150 "$STAGE/bench_gemm" --shapes 4096x4096,28672x4096 --ms 16,32,64,128,256,512 --csv "$OUT/bench_gemm.csv" \
  > "$OUT/bench_gemm.log" 2>&1
echo "bench_gemm exit $?"
grep -E "^N |    packed" "$OUT/bench_gemm.log" | cut -c1-240
