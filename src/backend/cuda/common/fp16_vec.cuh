#pragma once
// Eight fp16 values in one 16-byte word <-> fp32, for the vectorized row kernels (quantize_act.cu, elementwise.cu).
#include <cuda_fp16.h>

#include <cstdint>

namespace atom::cuda {

// By value: a reference into global memory would let the compiler split the 16-byte load into halves.
__device__ __forceinline__ float2 half2_to_float2(std::uint32_t w) {
  __half2 h;
  memcpy(&h, &w, 4);
  return __half22float2(h);
}
__device__ __forceinline__ void unpack8(uint4 u, float (&v)[8]) {
  const std::uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = half2_to_float2(w[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ uint4 pack8(const float (&v)[8]) {
  std::uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __half2 h = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
    memcpy(&w[i], &h, 4);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

}  // namespace atom::cuda
