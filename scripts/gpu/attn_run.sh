#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with .devbuild/cuattn carried (attn_build.sh):
# cuattn tests, compute-sanitizer memcheck, quantize and attention benchmarks. Logs go to $OUT.
# Usage: bash scripts/gpu/attn_run.sh [test|memcheck|racecheck|quant|attn|quick|variants|ncu|sass]...
#   (default: test memcheck quant attn)
set -u
cd "$(dirname "$0")/../.."
STAGE=$PWD/.devbuild/cuattn
export LD_LIBRARY_PATH=$STAGE/lib:${LD_LIBRARY_PATH:-}
OUT=${OUT:-/tmp/attn_out}
mkdir -p "$OUT"
steps=${*:-test memcheck quant attn}
{ date -u; nvidia-smi; nvcc --version; } >"$OUT/env.log" 2>&1
grep -E "NVIDIA H|Driver Version|release" "$OUT/env.log"
for step in $steps; do
  case $step in
    test) timeout 150 "$STAGE/test_cuattn" --gtest_color=no >"$OUT/tests.log" 2>&1
          echo "tests rc=$?"; grep -E "^\[  (PASSED|FAILED) |FAILED|Failure|error" "$OUT/tests.log" | head -30 ;;
    memcheck) timeout 200 compute-sanitizer --tool memcheck --leak-check no "$STAGE/test_cuattn" --gtest_color=no \
                --gtest_filter="${MEMCHECK_FILTER:-*}" >"$OUT/memcheck.log" 2>&1
          echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$OUT/memcheck.log" | head -10 ;;
    racecheck) timeout 120 compute-sanitizer --tool racecheck "$STAGE/test_cuattn" --gtest_color=no \
                --gtest_filter="CudaQuantizeAct.Reorder*:CudaAttentionPrefill.NonCausal:CudaAttentionDecode.LongContext*" >"$OUT/racecheck.log" 2>&1
          echo "racecheck rc=$?"; grep -E "RACECHECK SUMMARY|ERROR SUMMARY|PASSED|FAILED" "$OUT/racecheck.log" | head ;;
    quant) timeout 120 "$STAGE/bench_quantize" >"$OUT/bench_quantize.log" 2>&1; echo "bench_quantize rc=$?"; cat "$OUT/bench_quantize.log" ;;
    attn) timeout 240 "$STAGE/bench_attention" >"$OUT/bench_attention.log" 2>&1; echo "bench_attention rc=$?"; cat "$OUT/bench_attention.log" ;;
    sass) { cuobjdump -sass "$STAGE/bench_attention"; cuobjdump -sass "$STAGE/bench_quantize"; } 2>&1 | gzip >"$OUT/sass.txt.gz"; echo "sass dumped" ;;
    ncu) # one launch of each kernel at the headline shapes (M = 8192; batch 128 x 1024 MHA): what bounds it
      NCU="ncu --clock-control none --kernel-name-base demangled --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis"
      for spec in "row_quantize_kernel<true:1" "row_quantize_kernel<false:1" "silu_quantize:1"; do
        timeout 60 $NCU -k regex:"${spec%:*}" -s "${spec#*:}" -c 1 "$STAGE/bench_quantize" --profile >>"$OUT/ncu_quantize.txt" 2>&1
      done
      for spec in "decode_kernel:1" "decode_kernel:35" "decode_u4_mma:1"; do
        timeout 60 $NCU -k regex:"${spec%:*}" -s "${spec#*:}" -c 1 "$STAGE/bench_attention" --profile >>"$OUT/ncu_attention.txt" 2>&1
      done
      grep -hE "^  [a-zA-Z_:]+.*\(|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Issue Slots Busy|No Eligible|Registers Per" "$OUT/ncu_quantize.txt" "$OUT/ncu_attention.txt" | cut -c1-140 | head -80 ;;
    variants) for bin in "$STAGE"/variants/bench_attention_*; do  # attn_variants.sh
                echo "== ${bin##*/}"; timeout 60 "$bin" --headline 2>&1 | grep -E "^ *128 |FAILED"
              done | tee "$OUT/variants.log" ;;
    quick) timeout 60 "$STAGE/bench_attention" --quick >"$OUT/bench_attention_quick.log" 2>&1; echo "quick rc=$?"; cat "$OUT/bench_attention_quick.log" ;;
  esac
done
