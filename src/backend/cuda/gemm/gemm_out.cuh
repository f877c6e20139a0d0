#pragma once
// Output element types of the GEMM kernels: fp32 pairs to fp16/bf16 (round to nearest even) and back.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace atom::cuda {

template <typename T>
struct GemmOut;

template <>
struct GemmOut<__half> {
  __device__ __forceinline__ static void store2(void* p, float a, float b) {
    *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
  }
  __device__ __forceinline__ static float2 load2(const void* p) {
    return __half22float2(*reinterpret_cast<const __half2*>(p));
  }
  __device__ __forceinline__ static void store1(void* p, float a) { *reinterpret_cast<__half*>(p) = __float2half_rn(a); }
  __device__ __forceinline__ static float load1(const void* p) { return __half2float(*reinterpret_cast<const __half*>(p)); }
};

template <>
struct GemmOut<__nv_bfloat16> {
  __device__ __forceinline__ static void store2(void* p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
  }
  __device__ __forceinline__ static float2 load2(const void* p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
  }
  __device__ __forceinline__ static void store1(void* p, float a) {
    *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(a);
  }
  __device__ __forceinline__ static float load1(const void* p) {
    return __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(p));
  }
};

__device__ __forceinline__ float fp16_bits_to_float(std::uint16_t h) { return __half2float(__ushort_as_half(h)); }

}  // namespace atom::cuda
