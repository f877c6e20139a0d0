#!/usr/bin/env bash
# On the GPU machine: every CUDA test (label cuda: test_backend_cuda, test_quant_cuda), memcheck on a subset, and the headline benchmarks,
# from binaries staged by scripts/gpu/stage_all.sh. Logs go to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/../.."
STAGE=.devbuild/all
export LD_LIBRARY_PATH=$PWD/$STAGE/lib:${LD_LIBRARY_PATH:-}
OUT=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
rc=0
"$STAGE/test_backend_cuda" 2>&1 | tee "$OUT/test_backend_cuda.log" | grep -E "^\[  (PASSED|FAILED)|FAILED|tests ran" || true
[[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
"$STAGE/test_quant_cuda" 2>&1 | tee "$OUT/test_quant_cuda.log" | grep -E "^\[  (PASSED|FAILED)|FAILED|tests ran|rows differ" || true
[[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 3 "$STAGE/test_backend_cuda" \
    --gtest_filter='CudaAttentionDecode.*:CudaQuantizeAct.*:GemmW4A4*:SampleRows.Greedy*:SampleRows.Penalties*:SampleRows.Logprobs*' > "$OUT/memcheck.log" 2>&1
  echo "memcheck exit $? ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/memcheck.log") clean summaries)"
fi
"$STAGE/bench_attention" --headline 2>&1 | tee "$OUT/bench_attention.log" | tail -12
"$STAGE/bench_gemm" --quick 2>&1 | tee "$OUT/bench_gemm.log" | tail -25
"$STAGE/bench_sample_rows" 2>&1 | tee "$OUT/bench_sample_rows.log" | tail -66
exit $rc
