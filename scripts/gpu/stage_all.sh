#!/usr/bin/env bash
# Stages the CUDA test binaries and benchmarks of a build (default build/) in .devbuild/all, with the shared
# libraries a bare GPU machine may lack (everything ldd resolves outside glibc and the CUDA toolkit, which the
# GPU image has: cuBLAS, cuSOLVER and its cuSPARSE / nvJitLink), so that the device tool can carry them, packed,
# beside the spm32k tokenizer fixture (.devbuild/pack/tokenizer.json.gz, for the random-weight Llamas of
# scripts/gpu/quantize_run.sh and reliability_run.sh):
#   run(command="mkdir -p .devbuild && tar -C .devbuild -xzf .devbuild/pack/all.tgz && bash scripts/gpu/validate_all.sh",
#       carry=[".devbuild/pack"])
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
STAGE=.devbuild/all
rm -rf "$STAGE" && mkdir -p "$STAGE/lib"
bins=("$BUILD/tests/test_backend_cuda" "$BUILD/tests/test_quant_cuda" "$BUILD/atom" "$BUILD/bench/bench_gemm" "$BUILD/bench/bench_attention" "$BUILD/bench/bench_quantize"
      "$BUILD/bench/bench_sample_rows")
present=()
for b in "${bins[@]}"; do
  if [[ -f $b ]]; then present+=("$b"); else echo "not built, not staged: $b"; fi
done
cp "${present[@]}" "$STAGE/"
for b in "${present[@]}"; do
  ldd "$b" | awk '/=> \// {print $3}' | grep -vE 'libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|ld-linux|libcuda\.so|libstdc\+\+|libgcc_s|libcublas|libcudart|libcusolver|libcusparse|libnvJitLink' || true
done | sort -u | while read -r lib; do cp -L "$lib" "$STAGE/lib/"; done
du -sh "$STAGE"
# One gzip'd tarball travels (carry [".devbuild/pack"]); unpack on the GPU machine with
#   mkdir -p .devbuild && tar -C .devbuild -xzf .devbuild/pack/all.tgz
mkdir -p .devbuild/pack
tar -C .devbuild -czf .devbuild/pack/all.tgz all
TOKENIZER=../shared/fixtures/tokenizers/spm32k/tokenizer.json.gz
if [[ -f $TOKENIZER ]]; then cp "$TOKENIZER" .devbuild/pack/tokenizer.json.gz; else echo "no $TOKENIZER: not packed"; fi
du -sh .devbuild/pack/all.tgz
