#!/usr/bin/env bash
# On the GPU machine, from binaries staged by scripts/gpu/stage_all.sh: the serving-size W4A4 GEMM and the
# int8-layout quantizers (tests, compute-sanitizer memcheck + racecheck), then bench_gemm over every shape and
# M, then the rest of the CUDA tests. Logs and the CSV go to $OUT.
#   scripts/gpu/gemm_serving_run.sh [quick|full]
set -uo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-full}
STAGE=.devbuild/all
OUT=${OUT:-/tmp/gemm_out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/$STAGE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
cuobjdump --dump-sass "$STAGE/bench_gemm" > /tmp/gemm.sass 2>&1
awk '/Function : .*swapab/{f=1} f&&/Function : /&&!/swapab/{f=0} f' /tmp/gemm.sass > /tmp/swapab.sass
echo "swapab SASS: $(wc -l < /tmp/swapab.sass) lines, IGMMA $(grep -c IGMMA /tmp/swapab.sass), LDL/STL $(grep -cE 'LDL|STL' /tmp/swapab.sass)"
timeout 120 "$STAGE/test_backend_cuda" --gtest_filter='GemmW4A4SwapAb*:CudaQuantizeAct*' > "$OUT/test_swapab.log" 2>&1
rc=$?
grep -E "^\[  (PASSED|FAILED) |FAILED|tests ran|Failure|got |Expected|Which is" "$OUT/test_swapab.log" | head -40
[ $rc -ne 0 ] && { echo "serving GEMM tests failed (rc $rc): stopping"; exit 1; }
for tool in memcheck racecheck; do
  timeout 90 compute-sanitizer --tool $tool --error-exitcode 3 "$STAGE/test_backend_cuda" \
    --gtest_filter='GemmW4A4SwapAb.BitExactAcrossTilesAndShapes' > "$OUT/$tool.log" 2>&1
  echo "$tool exit $? ($(grep -c 'ERROR SUMMARY: 0 errors\|RACECHECK SUMMARY: 0 hazards' "$OUT/$tool.log") clean summaries)"
done
if [ "$MODE" = quick ]; then
  timeout 300 "$STAGE/bench_gemm" --shapes 4096x4096,28672x4096,4096x11008 --ms 16,32,64,128,256,512 \
    --csv "$OUT/bench_gemm.csv" > "$OUT/bench_gemm.log" 2>&1
else
  timeout 420 "$STAGE/bench_gemm" --csv "$OUT/bench_gemm.csv" > "$OUT/bench_gemm.log" 2>&1
fi
echo "bench_gemm exit $?"
grep -E "^N |    packed" "$OUT/bench_gemm.log" | cut -c1-260 | tail -80
timeout 200 "$STAGE/test_backend_cuda" > "$OUT/test_backend_cuda.log" 2>&1
echo "all CUDA tests exit $?: $(grep -E '^\[  PASSED|^\[  FAILED' "$OUT/test_backend_cuda.log" | tr '\n' ' ')"
grep -E "^\[  FAILED" "$OUT/test_backend_cuda.log" | head
