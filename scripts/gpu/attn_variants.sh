#!/usr/bin/env bash
# Tuning sweep of the UINT4 decode kernel: builds bench_attention once per (kU4Stages, kU4Warps,
# kU4MinBlocks) triple into .devbuild/cuattn/variants/bench_attention_s<S>_w<W>_b<B> (run attn_build.sh
# first; the staged shared libraries serve them too). On the GPU: `bash scripts/gpu/attn_run.sh variants`.
# Usage: bash scripts/gpu/attn_variants.sh "4 2 10" "4 1 20" ...
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-cuattn}
OUTDIR=$PWD/.devbuild/cuattn/variants
SRC=src/backend/cuda/attention/attention_decode.cu
mkdir -p "$OUTDIR" "$BUILD/variants"
rm -f "$OUTDIR"/bench_attention_*
flags=$(sed -n 's/^CUDA_FLAGS = //p' "$BUILD/CMakeFiles/atom_backend_cuda.dir/flags.make")
defines=$(sed -n 's/^CUDA_DEFINES = //p' "$BUILD/CMakeFiles/atom_backend_cuda.dir/flags.make")
link=$(sed -e 's/.* -o bench_attention//' "$BUILD/bench/CMakeFiles/bench_attention.dir/link.txt")
for pair in "$@"; do
  read -r stages warps blocks <<<"$pair"
  name=s${stages}_w${warps}_b${blocks}
  sed -e "s/^constexpr int kU4Stages = [0-9]*;/constexpr int kU4Stages = $stages;/" \
      -e "s/^constexpr int kU4Warps = [0-9]*;/constexpr int kU4Warps = $warps;/" \
      -e "s/^constexpr int kU4MinBlocks = [0-9]*;/constexpr int kU4MinBlocks = $blocks;/" "$SRC" >"$BUILD/variants/decode_$name.cu"
  grep -q "kU4Warps = $warps;" "$BUILD/variants/decode_$name.cu"
  # shellcheck disable=SC2086
  /usr/local/cuda/bin/nvcc $defines -I src $flags -Xptxas -v -c "$BUILD/variants/decode_$name.cu" \
    -o "$BUILD/variants/decode_$name.o" 2>&1 | grep -A2 "decode_u4_mma_kernelILi128" | grep -o "Used [0-9]* registers\|[0-9]* bytes spill stores" | paste -sd' ' | sed "s/^/$name: /" || true
  # The variant object comes first, so the archive's attention_decode object is never pulled in.
  (cd "$BUILD/bench" && c++ -O3 CMakeFiles/bench_attention.dir/backend/cuda/attention/bench_attention.cu.o "../variants/decode_$name.o" \
     -o "$OUTDIR/bench_attention_$name" $link)
done
ls -la "$OUTDIR"
