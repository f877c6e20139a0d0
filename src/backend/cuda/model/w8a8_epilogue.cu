#include "backend/cuda/model/w8a8_epilogue.h"

#include <cuda_fp16.h>

#include <algorithm>

#include "backend/cuda/common/cuda_check.h"

namespace atom::cuda {
namespace {

// Four outputs per thread (n is a multiple of 8: int4 loads, 8-byte stores).
__global__ void w8a8_scale_kernel(const int4* acc, int m, int n4, const __half* token_scales,
                                  const float4* channel_scales, uint2* out) {
  const long long total = static_cast<long long>(m) * n4;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int row = static_cast<int>(i / n4), col = static_cast<int>(i % n4);
    const int4 a = acc[i];
    const float sa = __half2float(token_scales[row]);
    const float4 sw = channel_scales[col];
    const __half2 lo = __floats2half2_rn(__fmul_rn(__fmul_rn(static_cast<float>(a.x), sa), sw.x),
                                         __fmul_rn(__fmul_rn(static_cast<float>(a.y), sa), sw.y));
    const __half2 hi = __floats2half2_rn(__fmul_rn(__fmul_rn(static_cast<float>(a.z), sa), sw.z),
                                         __fmul_rn(__fmul_rn(static_cast<float>(a.w), sa), sw.w));
    uint2 o;
    o.x = *reinterpret_cast<const unsigned*>(&lo);
    o.y = *reinterpret_cast<const unsigned*>(&hi);
    out[i] = o;
  }
}

}  // namespace

void w8a8_scale_epilogue(const std::int32_t* acc, int m, int n, const std::uint16_t* token_scales,
                         const float* channel_scales, std::uint16_t* out, cudaStream_t stream) {
  if (m <= 0) return;
  const int n4 = n / 4;
  const long long total = static_cast<long long>(m) * n4;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<long long>((total + threads - 1) / threads, 132LL * 16));
  w8a8_scale_kernel<<<blocks, threads, 0, stream>>>(
      reinterpret_cast<const int4*>(acc), m, n4, reinterpret_cast<const __half*>(token_scales),
      reinterpret_cast<const float4*>(channel_scales), reinterpret_cast<uint2*>(out));
  ATOM_CUDA_CHECK_LAUNCH();
}

}  // namespace atom::cuda
