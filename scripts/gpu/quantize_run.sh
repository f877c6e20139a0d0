#!/usr/bin/env bash
# On the GPU machine, from binaries staged by scripts/gpu/stage_all.sh (which also packs the spm32k tokenizer
# fixture as .devbuild/pack/tokenizer.json.gz): the GPU quantizer's tests and its timing at Llama-2-7B shapes.
#   scripts/gpu/quantize_run.sh STAGE...   stages, in the order given:
#   tests   test_quant_cuda (kernels, GPTQ, a decoder layer, whole tiny models against the CPU quantizer)
#   model   writes a random-weight Llama-2-7B-shaped HF directory (fp16) to $MODEL_DIR, $LAYERS layers
#           (default 32; ~13 GB and a few minutes at 32)
#   quick   atom quantize --device cuda, atom-w4a4 + GPTQ, on a 2-layer 7B-shaped model (written here if
#           missing), 16 x 2048 calibration tokens: the first, short run
#   full    the same on $MODEL_DIR with $WINDOWS x 2048 tokens (default 128): the issue's target
# Each quantize run prints the quantizer's own line (seconds, peak GPU memory of its buffers) and the device's
# peak memory in use as nvidia-smi saw it (sampled every 200 ms).
set -uo pipefail
DEFAULT_OUT=/tmp/quantize_out
source "$(dirname "$0")/staged_env.sh"
MODEL_DIR=${MODEL_DIR:-/tmp/llama2-7b-random}
LAYERS=${LAYERS:-32}
WINDOWS=${WINDOWS:-128}
TOKENIZER=.devbuild/pack/tokenizer.json.gz
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
rc=0

make_model() {  # make_model DIR LAYERS
  [[ -f $1/model.safetensors ]] && return 0
  rm -rf "$1"
  python3 scripts/dev/make_random_llama.py --out "$1" --tokenizer "$TOKENIZER" --hidden 4096 --intermediate 11008 \
    --layers "$2" --heads 32 --kv-heads 32 --max-position 4096
}

quantize() {  # quantize NAME MODEL WINDOWS
  local name=$1 model=$2 windows=$3
  cat README.md docs/*.md > "$OUT/calib.txt"  # any text: windows of 2048 tokens are drawn from it (they may overlap)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/$name.mem" &
  local smi=$!
  local start=$(date +%s)
  timeout 590 "$STAGE/atom" quantize --device cuda -m "$model" --calib "$OUT/calib.txt" -o "$OUT/$name-w4a4" --force \
    --preset atom-w4a4 --calib-windows "$windows" --calib-len 2048 --report "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  local r=$?
  kill "$smi" 2>/dev/null
  echo "$name: exit $r, $(( $(date +%s) - start ))s wall"
  [ $r -ne 0 ] && rc=1
  grep -E "^quantizing|^calibration|quantize .*layer [0-9]+/[0-9]+ down_proj|^wrote|^quantized in|error" "$OUT/$name.log" | tail -8
  echo "$name: device memory in use, peak (nvidia-smi): $(sort -n "$OUT/$name.mem" | tail -1) MiB"
}

for stage in "$@"; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case $stage in
    tests)
      timeout 590 "$STAGE/test_quant_cuda" > "$OUT/test_quant_cuda.log" 2>&1
      r=$?; echo "test_quant_cuda exit $r"; [ $r -ne 0 ] && rc=1
      grep -E "^\[  (PASSED|FAILED|     OK) |Failure|rows differ|Expected|Which is|error" "$OUT/test_quant_cuda.log" | head -60 ;;
    model)
      make_model "$MODEL_DIR" "$LAYERS" || rc=1
      du -sh "$MODEL_DIR" ;;
    quick)
      make_model /tmp/llama2-7b-random-2l 2 && quantize quick /tmp/llama2-7b-random-2l 16 ;;
    full)
      quantize full "$MODEL_DIR" "$WINDOWS" ;;
    *) echo "unknown stage $stage"; rc=1 ;;
  esac
done
exit $rc
