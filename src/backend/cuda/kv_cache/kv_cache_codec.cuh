#pragma once
// Device-side decoding of KV cache rows (kv_cache_layout.h), shared by the attention kernels.
#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/kv_cache/kv_cache_layout.h"

namespace atom::cuda {

// Element i of a row fragment held in 32-bit words, as the fp32 value `f` the decode kernel multiplies:
//   kF16: the value itself.
//   kU8 / kU4: f = 1 + c / kCodeScale, built by moving the code into the top mantissa bits of 1.0f
//   (two integer ops, no int->float conversion). Then c = kCodeScale * (f - 1), and
//   x = c * scale + lo = (kCodeScale * scale) * f + (lo - kCodeScale * scale); the kernels fold the
//   constant part per token, where it costs nothing per element.
// After full unrolling, i is a compile-time constant and the shifts are immediates.
template <KvDtype kDtype>
struct KvCodec;

template <>
struct KvCodec<KvDtype::kF16> {
  static constexpr bool kQuantized = false;
  static constexpr float kCodeScale = 1.0f;
  __device__ __forceinline__ static float decode(const std::uint32_t* w, int i) {
    const std::uint32_t word = w[i >> 1];
    const unsigned short bits = static_cast<unsigned short>((i & 1) ? (word >> 16) : (word & 0xFFFFu));
    return __half2float(__ushort_as_half(bits));
  }
};

template <>
struct KvCodec<KvDtype::kU8> {
  static constexpr bool kQuantized = true;
  static constexpr float kCodeScale = 256.0f;
  __device__ __forceinline__ static float decode(const std::uint32_t* w, int i) {
    const std::uint32_t word = w[i >> 2];
    const int shift = 15 - 8 * (i & 3);  // code (bits 8k..8k+7) to bits 15..22
    const std::uint32_t x = shift >= 0 ? (word << shift) : (word >> -shift);
    return __uint_as_float((x & 0x007F8000u) | 0x3F800000u);
  }
};

template <>
struct KvCodec<KvDtype::kU4> {
  static constexpr bool kQuantized = true;
  static constexpr float kCodeScale = 16.0f;
  __device__ __forceinline__ static float decode(const std::uint32_t* w, int i) {
    const std::uint32_t word = w[i >> 3];
    const int shift = 19 - 4 * (i & 7);  // code (bits 4k..4k+3) to bits 19..22
    const std::uint32_t x = shift >= 0 ? (word << shift) : (word >> -shift);
    return __uint_as_float((x & 0x00780000u) | 0x3F800000u);
  }
};

// Params word -> (scale, lo) in fp32.
__device__ __forceinline__ float kv_param_scale(std::uint32_t p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(p & 0xFFFFu)));
}
__device__ __forceinline__ float kv_param_min(std::uint32_t p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(p >> 16)));
}

// Params words per row of a quantized cache (PagedKvCache::groups on the device).
__device__ __forceinline__ int kv_row_groups(const PagedKvCache& c) {
  return c.group_size == 0 ? 1 : c.head_dim / c.group_size;
}

// Row index of token t of KV head h in the pool (page ids clamped into the pool: a bad block table
// reads wrong data, never out of bounds).
__device__ __forceinline__ long long kv_cache_row(const PagedKvCache& c, const std::int32_t* block_table, int t,
                                                  int page_shift, int h) {
  unsigned page = static_cast<unsigned>(block_table[t >> page_shift]);
  page = min(page, static_cast<unsigned>(c.num_pages - 1));
  return (static_cast<long long>(page) * c.num_kv_heads + h) * c.page_size + (t & (c.page_size - 1));
}

}  // namespace atom::cuda
