#!/usr/bin/env bash
# On the GPU machine, from binaries staged by scripts/gpu/stage_all.sh: the CUDA test suite under
# compute-sanitizer. Each tool's log goes to $OUT/<tool>.log; a tool that finds anything exits 3.
#   scripts/gpu/sanitize_cuda.sh TOOL...   tools: memcheck | synccheck | racecheck | initcheck
# memcheck and synccheck run the whole suite; racecheck (slowest) runs the kernels that share data through
# shared memory or a cluster (GEMMs, attention, quantizers, Hadamard, sampling) on their smaller tests.
set -uo pipefail
DEFAULT_OUT=/tmp/sanitize_out
source "$(dirname "$0")/staged_env.sh"
LIMIT=${SANITIZE_LIMIT_S:-240}
rc=0
for tool in "$@"; do
  filter=${SANITIZE_FILTER:-*}
  if [[ $tool == racecheck && -z ${SANITIZE_FILTER:-} ]]; then
    filter='GemmW4A4SwapAb.SplitKRowsDoNotDependOnM:GemmW4A4.*Small*:GemmW4A16.*:CudaAttentionDecode.*:CudaAttentionPrefill.NonCausal:CudaQuantizeAct.*:CudaHadamard.*:SampleRows.*:CudaKvAppend.*'
  fi
  start=$(date +%s)
  timeout "$LIMIT" compute-sanitizer --tool "$tool" --error-exitcode 3 ${SANITIZE_ARGS:-} \
    "$STAGE/test_backend_cuda" --gtest_color=no --gtest_filter="$filter" > "$OUT/$tool.log" 2>&1
  r=$?
  echo "$tool exit $r in $(( $(date +%s) - start )) s: $(grep -E '^\[  PASSED|^\[  FAILED' "$OUT/$tool.log" | tr '\n' ' ')" \
       "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -1)"
  [[ $r -eq 124 ]] && echo "  timed out; last test started: $(grep '^\[ RUN' "$OUT/$tool.log" | tail -1)"
  grep -E '^========= (Invalid|Barrier|Race|Error|Uninit)|^\[  FAILED' "$OUT/$tool.log" | sort | uniq -c | head -20
  [[ $r -ne 0 ]] && rc=1
done
exit $rc
