#!/usr/bin/env bash
# On the GPU machine, from binaries staged by scripts/gpu/stage_all.sh (with the spm32k tokenizer fixture
# copied to .devbuild/pack/tokenizer.json.gz): batch invariance and the server soak on the CUDA backend.
#   scripts/gpu/reliability_run.sh STAGE...   stages: invariance | soak | serve-inv
#   invariance  the runner's batch-invariance tests
#   soak        scripts/soak.sh against `atom serve --device cuda --batch-invariant` on a random-weight Llama
#               (scripts/dev/make_random_llama.py, the real tokenizer) quantized to atom-w4a4 here
#   serve-inv   what batch-invariant mode costs: `atom bench serve` atom-w4a4 with and without it
set -uo pipefail
DEFAULT_OUT=/tmp/reliability_out
source "$(dirname "$0")/staged_env.sh"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
rc=0
for stage in "$@"; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case $stage in
    invariance)
      timeout 240 "$STAGE/test_backend_cuda" --gtest_filter='CudaModelRunner.*' > "$OUT/test_invariance.log" 2>&1
      r=$?; [ $r -ne 0 ] && rc=1
      grep -E "^\[  (PASSED|FAILED|     OK) |Failure|differ|Expected|Which is" "$OUT/test_invariance.log" | head -40 ;;
    soak)
      model=/tmp/soak-model
      rm -rf "$model" "$model-w4a4"
      python3 scripts/dev/make_random_llama.py --out "$model" --tokenizer .devbuild/pack/tokenizer.json.gz &&
        cat README.md docs/*.md > /tmp/soak-calib.txt &&
        "$STAGE/atom" quantize -m "$model" --calib /tmp/soak-calib.txt -o "$model-w4a4" --preset atom-w4a4 \
          --calib-windows 8 --calib-len 256 2>&1 | tail -2
      # The CPU soak's pool (16 blocks of 8 tokens) forces preemption; 16-token blocks as the GPU kernels like.
      ATOM_BIN=$STAGE/atom SOAK_SECONDS=${SOAK_SECONDS:-120} SOAK_JSON=$OUT/soak_cuda.json SOAK_KV_BLOCKS=12 \
        SOAK_BLOCK_SIZE=16 timeout 420 bash scripts/soak.sh "$model-w4a4" --device cuda --batch-invariant \
        > "$OUT/soak_cuda.log" 2>&1
      r=$?; echo "soak exit $r"; [ $r -ne 0 ] && rc=1
      tail -40 "$OUT/soak_cuda.log" ;;
    serve-inv)
      for inv in "" --batch-invariant; do
        name="serve_atom-w4a4${inv:+_invariant}"
        timeout 200 "$STAGE/atom" bench serve --device cuda --model synthetic:llama-2-7b --precision atom-w4a4 \
          --gpu-memory-gb 24 --batch-sizes ${SERVE_BATCHES:-256,64,16} --requests-per-batch 1 \
          --max-output-length 512 --ignore-eos $inv --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
        echo "$name exit $?"; tail -8 "$OUT/$name.log"
      done ;;
    *) echo "unknown stage $stage"; rc=2 ;;
  esac
done
exit $rc
