#!/usr/bin/env bash
# On the GPU machine: the CUDA tests, then `atom bench serve` on the CUDA backend, from binaries staged by
# scripts/gpu/stage_all.sh (which also stages the atom CLI). Logs and JSON go to $OUT.
#   bash scripts/gpu/serve_gpu.sh [tests|bench|all] [extra bench args...]
set -uo pipefail
cd "$(dirname "$0")/../.."
STAGE=.devbuild/all
export LD_LIBRARY_PATH=$PWD/$STAGE/lib:${LD_LIBRARY_PATH:-}
OUT=${OUT:-/tmp}
what=${1:-all}
shift || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
rc=0
if [[ $what == tests || $what == all ]]; then
  "$STAGE/test_backend_cuda" ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} 2>&1 | tee "$OUT/test_backend_cuda.log" |
    grep -E "^\[  (PASSED|FAILED)|FAILED|tests ran|Failure|error|Expected|Which is|actual" | head -60
  [[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
fi
if [[ $what == bench || $what == all ]]; then
  SHAPE=${SHAPE:-llama-2-7b}
  for p in ${PRECISIONS:-fp16 w8a8 w4a16 atom-w4a4}; do
    echo "== $SHAPE $p"
    "$STAGE/atom" bench serve --device cuda --model "synthetic:$SHAPE" --precision "$p" \
      --json "$OUT/serve_${SHAPE}_${p}.json" "$@" 2>>"$OUT/bench_progress.log" | tee -a "$OUT/bench_serve.log"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
  done
fi
exit $rc
