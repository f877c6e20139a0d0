#!/usr/bin/env bash
# GEMM tests + benchmark on the GPU machine, in one call of the device tool. Binaries are built here
# (scripts/gpu/gemm_stage.sh) and carried in .devbuild/cugemm with the Debian libraries they need.
#   scripts/gpu/gemm_run.sh [quick|full|probe|decode|final]   logs go to $OUT (or /tmp/gemm_out)
# decode: tests (stops if they fail), memcheck of the stream kernel, one ncu profile of it, and the M <= 32
# rows with the decode variants (one-pass split-K kernel, stream kernel tunings). final: decode, then the
# whole table (all shapes and M, no variants).
set -uo pipefail
MODE=${1:-full}
BIN=.devbuild/cugemm
OUT=${OUT:-/tmp/gemm_out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/$BIN/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ! ldconfig -p | grep -q libcublasLt.so.13; then
  lt=$(find / -name 'libcublasLt.so.13' -not -path '*/proc/*' 2>/dev/null | head -1)
  [ -n "$lt" ] && export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(dirname "$lt")
fi
{
  date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv; nvcc --version | tail -2; ldd $BIN/bench_gemm | grep -E "not found|cublas|fmt"
  echo "--- SASS: wgmma and spills in the GEMM kernels"
  cuobjdump --dump-sass $BIN/bench_gemm > /tmp/gemm.sass 2>&1
  echo "IGMMA: $(grep -c IGMMA /tmp/gemm.sass)  IMMA: $(grep -c ' IMMA' /tmp/gemm.sass)  HMMA: $(grep -c HMMA /tmp/gemm.sass)"
  echo "local memory (LDL/STL): $(grep -cE 'LDL|STL' /tmp/gemm.sass)"
  awk '/Function : .*gemm_w4a4o8_wgmma_sm90.*Li128/{f=1} f&&/Function : /&&!/Li128/{f=0} f' /tmp/gemm.sass > /tmp/wg128.sass
  echo "bn128 kernel: $(wc -l < /tmp/wg128.sass) lines, IGMMA $(grep -c IGMMA /tmp/wg128.sass), WARPSYNC/serialization: $(grep -c 'WARPGROUP' /tmp/wg128.sass)"
} > "$OUT/env.txt" 2>&1
cp /tmp/wg128.sass "$OUT/wg128.sass" 2>/dev/null
cat "$OUT/env.txt"

timeout 60 $BIN/bench_gemm --probe 2>&1 | tee "$OUT/probe.log"
[ "$MODE" = probe ] && exit 0

if [ "$MODE" = decode ] || [ "$MODE" = final ]; then
  timeout 90 $BIN/test_backend_cuda --gtest_filter='GemmW4A4*:GemmW4A16*' > "$OUT/test.log" 2>&1
  rc=$?
  grep -E "^\[  (PASSED|FAILED) |FAILED|tests ran|Failure|got " "$OUT/test.log" | head -30
  [ $rc -ne 0 ] && { echo "tests failed (rc $rc): stopping"; exit 1; }
  timeout 45 compute-sanitizer --tool memcheck --leak-check no $BIN/test_backend_cuda \
    --gtest_filter='GemmW4A4.StreamKernelWalksManySlabsPerBlock:GemmW4A4.OddMAndPartialTiles' 2>&1 | tail -25 \
    > "$OUT/memcheck.log"
  tail -4 "$OUT/memcheck.log"
  timeout 40 ncu --clock-control none -k regex:stream -c 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section Occupancy --section LaunchStats --section SchedulerStats \
    --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio \
    $BIN/bench_gemm --ours-only --shapes 28672x4096 --ms 1 > "$OUT/ncu.log" 2>&1
  grep -E "Throughput|Duration|SM Frequency|DRAM|Hit Rate|Achieved|Registers|Grid|stalled|Eligible|Issued" "$OUT/ncu.log" \
    | awk '$NF+0 > 0.05' | head -40
  timeout 90 $BIN/bench_gemm --variants --ms 1,8,16,32 --csv "$OUT/bench_decode.csv" > "$OUT/bench_decode.log" 2>&1
  grep -E "^#|^\||decode variants|bench_gemm:" "$OUT/bench_decode.log"
  [ "$MODE" = decode ] && exit 0
  timeout 120 $BIN/bench_gemm --csv "$OUT/bench.csv" > "$OUT/bench.log" 2>&1
  grep -E "^#|^\||bench_gemm:" "$OUT/bench.log"
  exit 0
fi
timeout 240 $BIN/test_backend_cuda --gtest_filter='GemmW4A4*:GemmW4A16*' 2>&1 | tail -150 > "$OUT/test.log"
grep -E "^\[  (PASSED|FAILED) |FAILED|tests ran" "$OUT/test.log" | head -30
timeout 200 compute-sanitizer --tool memcheck --leak-check no $BIN/test_backend_cuda \
  --gtest_filter='GemmW4A4.OddMAndPartialTiles:GemmW4A4.W8A8IsTheAllOutlierCase:GemmW4A16.*' 2>&1 | tail -25 \
  > "$OUT/memcheck.log"
tail -4 "$OUT/memcheck.log"

# Hardware counters of one large W4A4 launch (clocks left alone): throughputs and warp stall reasons.
timeout 150 ncu --clock-control none -k regex:wgmma_sm90 -c 1 --section SpeedOfLight --section SchedulerStats \
  --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio \
  $BIN/bench_gemm --ours-only --shapes 4096x4096 --ms 4096 > "$OUT/ncu.log" 2>&1
grep -E "stalled|Throughput|Issued|Eligible|Duration|SM Frequency" "$OUT/ncu.log" | awk '$NF+0 > 0.05' | head -40
if [ "$MODE" = quick ]; then
  timeout 300 $BIN/bench_gemm --quick --variants --csv "$OUT/bench.csv" 2>&1 | tee "$OUT/bench.log" | grep -v "^|"
else
  timeout 420 $BIN/bench_gemm --variants --csv "$OUT/bench.csv" 2>&1 > "$OUT/bench.log"
  grep -E "^#|^\|" "$OUT/bench.log"
fi
