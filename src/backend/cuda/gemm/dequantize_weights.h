#pragma once
// Dense fp16 copy of prepacked Atom weights, for prefill-sized linears: at M in the thousands cuBLAS on a
// dequantized [n, k] fp16 scratch matrix beats the weight-only gemm_w4a16 kernel, so the model runner
// dequantizes a layer's W4A4PackedWeights (gemm_w4a4.h) into scratch and multiplies with cuBLAS.
#include <cstdint>

#include <cuda_runtime.h>

#include "backend/cuda/gemm/gemm_w4a4.h"

namespace atom::cuda {

// out[r, j] = fp16(code * scale) for the normal channels j < k_normal (the INT4 code of row r, channel j,
// times the scale of group j / 128) and fp16(outlier_code * outlier_scale) for j = k_normal + o
// (o < n_outliers): the reordered channel order of the canonical layout (FORMAT.md). The product is computed
// in fp32 and rounded once to fp16 (round to nearest even); with the scales prepack writes (fp16 values) this
// is the exact product rounded once. Rows r < w.n only (tile padding is skipped) and columns j < k_normal +
// n_outliers only: the rest of each out row (out_stride > k) is not touched.
// out: device memory, 16-byte aligned; out_stride in elements, a multiple of 8, at least k_normal +
// n_outliers. w: prepack_w4a4_weights_* output, packed / outliers 16-byte aligned where the shape needs them.
// Asynchronous on `stream`; throws atom::Error on bad arguments.
void dequantize_w4a4_weights_f16(const W4A4PackedWeights& w, std::uint16_t* out, std::int64_t out_stride,
                                 cudaStream_t stream);

namespace detail {
// No argument checks (dequantize_w4a4_weights_f16 checks).
void launch_dequantize_w4a4_f16(const W4A4PackedWeights& w, std::uint16_t* out, std::int64_t out_stride,
                                cudaStream_t stream);
}  // namespace detail

}  // namespace atom::cuda
