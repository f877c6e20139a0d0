#!/usr/bin/env bash
# On the GPU machine, from binaries staged by scripts/gpu/stage_all.sh: validates and times the decode-latency
# changes that are opt-in until measured (docs/notes/decode_step.md): the activation quantizers' row slices
# (ATOM_ROW_SLICES), programmatic dependent launch (ATOM_PDL) and the per-sequence decode-attention splits.
#   1. the CUDA tests touched (quantizers with forced slices, attention splits and KV groups, KV append, the
#      runner with PDL + slices against plain launches, bit for bit; the runner against the CPU);
#   2. bench_quantize --slices: every quantizer shape at M = 1..256 per slice count (the default rule's table),
#      and bench_attention --groups: a UINT4 cache with groups of 32 channels against one group per head;
#   3. atom bench serve, Llama-2-7B shapes at 24 GiB, batch limits 256 and 8: atom-w4a4 plain, with PDL, with
#      slices, with both; fp16 as the anchor;
#   4. ATOM_CUDA_PROFILE=1 step profiles at 8 sequences, plain and with both.
# Logs and JSON under $OUT (default /tmp/decode_latency_out).
set -uo pipefail
DEFAULT_OUT=/tmp/decode_latency_out
source "$(dirname "$0")/staged_env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
t0=$(date +%s)
el() { echo "[+$(( $(date +%s) - t0 ))s] $*"; }
rc=0
timeout 300 "$STAGE/test_backend_cuda" \
  --gtest_filter='CudaQuantizeAct.*:CudaAttentionDecode.*:CudaAttentionPrefill.*:CudaKvAppend.*:CudaModelRunner.*:Presets/CudaQuantizedRunner.*' \
  > "$OUT/test_backend_cuda.log" 2>&1 || rc=1
el "tests (exit status so far $rc)"
grep -E "^\[  (PASSED|FAILED)|^\[  FAILED|Failure|Expected|Which is" "$OUT/test_backend_cuda.log" | head -40
timeout 120 "$STAGE/bench_quantize" --slices > "$OUT/bench_quantize_slices.log" 2>&1 || rc=1
el "bench_quantize --slices"; cat "$OUT/bench_quantize_slices.log"

timeout 120 "$STAGE/bench_attention" --groups > "$OUT/bench_attention_groups.log" 2>&1 || rc=1
el "bench_attention --groups (UINT4 per head vs groups of 32)"; cat "$OUT/bench_attention_groups.log"

serve() {  # serve NAME PRECISION [env assignments...]
  local name=$1 precision=$2; shift 2
  env "$@" timeout 120 "$STAGE/atom" bench serve --device cuda --model synthetic:llama-2-7b --precision "$precision" \
    --gpu-memory-gb 24 --batch-sizes 256,8 --requests-per-batch 1 --max-output-length 512 --ignore-eos \
    --json "$OUT/serve_$name.json" > "$OUT/serve_$name.log" 2> "$OUT/serve_$name.err" || rc=1
  el "serve $name"; tail -6 "$OUT/serve_$name.log"
}
serve fp16 fp16
serve atom atom-w4a4
serve atom_pdl atom-w4a4 ATOM_PDL=1
serve atom_slices atom-w4a4 ATOM_ROW_SLICES=auto
serve atom_pdl_slices atom-w4a4 ATOM_PDL=1 ATOM_ROW_SLICES=auto

profile() {  # profile NAME [env assignments...]
  local name=$1; shift
  env "$@" ATOM_CUDA_PROFILE=1 timeout 60 "$STAGE/atom" bench serve --device cuda --model synthetic:llama-2-7b \
    --precision atom-w4a4 --gpu-memory-gb 24 --batch-sizes 8 --requests-per-batch 1 --max-output-length 256 \
    --ignore-eos > "$OUT/profile8_$name.log" 2>&1 || rc=1
  el "profile $name"; grep -A24 "ATOM_CUDA_PROFILE" "$OUT/profile8_$name.log" | head -24
}
profile plain
profile pdl_slices ATOM_PDL=1 ATOM_ROW_SLICES=auto
exit $rc
