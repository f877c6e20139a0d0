#!/usr/bin/env bash
# On the GPU machine, from binaries staged by scripts/gpu/stage_all.sh: the serving-size W4A4 GEMM and the
# int8-layout quantizers (tests, compute-sanitizer memcheck + racecheck), bench_gemm, and an A/B of the serving
# benchmark with and without the serving-size GEMM. Logs and the CSV go to $OUT.
#   scripts/gpu/gemm_serving_run.sh STAGE...   stages: validate | rotated | tests | quick | full | serve-ab | profile | serve-rot
set -uo pipefail
DEFAULT_OUT=/tmp/gemm_out
source "$(dirname "$0")/staged_env.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader
rc=0
for stage in "$@"; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case $stage in
    validate)
      cuobjdump --dump-sass "$STAGE/bench_gemm" > /tmp/gemm.sass 2>&1
      awk '/Function : .*swapab/{f=1} f&&/Function : /&&!/swapab/{f=0} f' /tmp/gemm.sass > /tmp/swapab.sass
      echo "swapab SASS: $(wc -l < /tmp/swapab.sass) lines, IGMMA $(grep -c IGMMA /tmp/swapab.sass), LDL/STL $(grep -cE 'LDL|STL' /tmp/swapab.sass)"
      timeout 120 "$STAGE/test_backend_cuda" --gtest_filter='GemmW4A4SwapAb*:CudaQuantizeAct*' > "$OUT/test_swapab.log" 2>&1
      r=$?
      grep -E "^\[  (PASSED|FAILED) |FAILED|tests ran|Failure|got |Expected|Which is" "$OUT/test_swapab.log" | head -40
      [ $r -ne 0 ] && { echo "serving GEMM tests failed (rc $r)"; rc=1; }
      # memcheck over every tile x split count; racecheck (slower) on the split-K cluster reduction.
      for tool in memcheck racecheck; do
        filter='GemmW4A4SwapAb.BitExactAcrossTilesAndShapes'
        [ $tool = racecheck ] && filter='GemmW4A4SwapAb.SplitKRowsDoNotDependOnM'
        timeout 90 compute-sanitizer --tool $tool --error-exitcode 3 "$STAGE/test_backend_cuda" \
          --gtest_filter="$filter" > "$OUT/$tool.log" 2>&1
        echo "$tool exit $? ($(grep -c 'ERROR SUMMARY: 0 errors\|RACECHECK SUMMARY: 0 hazards' "$OUT/$tool.log") clean summaries)"
      done ;;
    rotated)
      # Online transforms of rotated checkpoints: the down Hadamard, the Q/K Hadamard in kv_cache_append and
      # the runner against the CPU model of a rotated checkpoint.
      timeout 200 "$STAGE/test_backend_cuda" --gtest_filter='CudaHadamard*:CudaKvAppend*:SampleRows*:CudaModelRunner*:Presets/CudaQuantizedRunner*' \
        > "$OUT/test_rotated.log" 2>&1
      r=$?; [ $r -ne 0 ] && rc=1
      grep -E "^\[  (PASSED|FAILED) |FAILED|Failure|Expected|Which is|variant|worst" "$OUT/test_rotated.log" | head -60 ;;
    tests)
      timeout 240 "$STAGE/test_backend_cuda" > "$OUT/test_backend_cuda.log" 2>&1
      r=$?; [ $r -ne 0 ] && rc=1
      echo "all CUDA tests exit $r: $(grep -E '^\[  PASSED|^\[  FAILED' "$OUT/test_backend_cuda.log" | tr '\n' ' ')"
      grep -E "^\[  FAILED" "$OUT/test_backend_cuda.log" | head ;;
    quick|full)
      args=(--csv "$OUT/bench_gemm_$stage.csv")
      [ "$stage" = quick ] && args+=(--shapes 12288x4096,4096x4096,22016x4096,4096x11008 --ms 16,32,64,128,256,512)
      timeout 420 "$STAGE/bench_gemm" "${args[@]}" > "$OUT/bench_gemm_$stage.log" 2>&1
      echo "bench_gemm exit $?"
      grep -E "^# |^N |    packed" "$OUT/bench_gemm_$stage.log" | cut -c1-230 ;;
    serve-ab)
      # Llama-2-7B shapes at 24 GiB, the RESULTS workload: packed-layout kernels only vs the serving-size GEMM.
      for p in ${SERVE_PRECISIONS:-atom-w4a4 w8a8}; do
        for sg in --no-serving-gemm ""; do
          name="serve_${p}${sg:+_packed}"
          timeout 200 "$STAGE/atom" bench serve --device cuda --model synthetic:llama-2-7b --precision $p \
            --gpu-memory-gb 24 --batch-sizes ${SERVE_BATCHES:-256,128,64,32} --requests-per-batch 1 \
            --max-output-length 512 --ignore-eos $sg --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
          echo "$name exit $?"; tail -12 "$OUT/$name.log"
        done
      done ;;
    profile)
      # Where a decode step goes (ATOM_CUDA_PROFILE=1: eager steps, an event per stage) at batch limit 32.
      for p in ${PROFILE_PRECISIONS:-w8a8 atom-w4a4}; do
        for sg in --no-serving-gemm ""; do
          name="profile_${p}${sg:+_packed}"
          ATOM_CUDA_PROFILE=1 timeout 150 "$STAGE/atom" bench serve --device cuda --model synthetic:llama-2-7b \
            --precision $p --gpu-memory-gb 24 --batch-sizes 32 --requests-per-batch 1 --max-output-length 128 \
            --ignore-eos $sg > "$OUT/$name.log" 2>&1
          echo "$name exit $?"; grep -A16 "ATOM_CUDA_PROFILE:" "$OUT/$name.log" | head -18
        done
      done ;;
    serve-rot)
      # What a rotated checkpoint's online transforms cost end to end (same workload, atom-w4a4).
      for extra in "" --online-transforms; do
        name="serve_atom-w4a4_rot${extra:+_on}"
        timeout 200 "$STAGE/atom" bench serve --device cuda --model synthetic:llama-2-7b --precision atom-w4a4 \
          --gpu-memory-gb 24 --batch-sizes ${SERVE_BATCHES:-256,128,64,32} --requests-per-batch 1 \
          --max-output-length 512 --ignore-eos ${SERVE_ARGS:-} $extra --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
        echo "$name exit $?"; tail -12 "$OUT/$name.log"
      done ;;
    *) echo "unknown stage $stage"; rc=2 ;;
  esac
done
exit $rc
