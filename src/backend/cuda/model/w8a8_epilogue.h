#pragma once
// The epilogue of the W8A8 linear on cuBLASLt (int8 x int8 -> exact int32): per-token x per-channel scaling,
//   out[m, n] = fp16( (float(acc[m, n]) * float(token_scale[m])) * channel_scale[n] ),
// the rounding steps of FORMAT.md's product for an all-outlier (k_normal = 0) Atom linear, so the result
// equals gemm_w4a4_o8 on the same codes.
#include <cstdint>

#include <cuda_runtime.h>

namespace atom::cuda {

void w8a8_scale_epilogue(const std::int32_t* acc, int m, int n, const std::uint16_t* token_scales,
                         const float* channel_scales, std::uint16_t* out, cudaStream_t stream);

}  // namespace atom::cuda
