// kv_cache_append: RoPE on Q and K, then K/V rows quantized into their page slots (kv_cache_layout.h).
// One warp per (token, head) row: D/32 consecutive elements per lane; the rotate-half partner of lane l
// is lane l ^ 16 (lanes 0-15 hold the first half of the head). min/max by shuffles inside each group's lanes
// (group_size / (D / 32) consecutive lanes); the asymmetric rule is quant::quantize_asymmetric_groups with the
// cache's group, step by step.
#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/common/launch.cuh"
#include "backend/cuda/kv_cache/kv_cache_layout.h"

namespace atom::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFullMask = 0xffffffffu;

// x <- W_D x / sqrt(D) for the head vector a warp holds (element lane * kPer + e in x[e]): the butterflies of
// backend/cpu/hadamard.cpp's fwht in its order (h = 1, 2, 4, ...: first inside a lane, then across lanes),
// then the scale, so the fp32 result equals the CPU transform's.
template <int kPer>
__device__ __forceinline__ void walsh_hadamard_lanes(float (&x)[kPer], int lane) {
#pragma unroll
  for (int h = 1; h < kPer; h <<= 1)
#pragma unroll
    for (int e = 0; e < kPer; ++e)
      if ((e & h) == 0) {
        const float a = x[e], b = x[e + h];
        x[e] = a + b;
        x[e + h] = a - b;
      }
#pragma unroll
  for (int s = 1; s < 32; s <<= 1)
#pragma unroll
    for (int e = 0; e < kPer; ++e) {
      const float partner = __shfl_xor_sync(kFullMask, x[e], s);
      x[e] = (lane & s) != 0 ? partner - x[e] : x[e] + partner;
    }
  const float scale = static_cast<float>(1.0 / (kPer == 2 ? 8.0 : 11.313708498984761));  // 1 / sqrt(32 kPer)
#pragma unroll
  for (int e = 0; e < kPer; ++e) x[e] *= scale;
}

template <int D, KvDtype kDtype>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) kv_append_kernel(KvAppendParams p) {
  pdl_allow_dependents();
  pdl_wait();  // q/k/v come from the GEMM before
  constexpr int kPer = D / 32;  // elements per lane
  const int lane = threadIdx.x % 32;
  const int q_heads = p.q != nullptr ? p.num_qo_heads : 0;
  const int kv_heads = p.cache.num_kv_heads;
  const int rows_per_token = q_heads + 2 * kv_heads;
  const long long row = static_cast<long long>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= static_cast<long long>(p.num_tokens) * rows_per_token) return;  // whole warp leaves together
  const int token = static_cast<int>(row / rows_per_token);
  int head = static_cast<int>(row % rows_per_token);
  enum Kind { kQ, kK, kV } kind;
  const __half* src;
  if (head < q_heads) {
    kind = kQ;
    src = reinterpret_cast<const __half*>(p.q) + token * p.q_token_stride + head * p.q_head_stride;
  } else if (head < q_heads + kv_heads) {
    kind = kK;
    head -= q_heads;
    src = reinterpret_cast<const __half*>(p.k) + token * p.k_token_stride + head * p.k_head_stride;
  } else {
    kind = kV;
    head -= q_heads + kv_heads;
    src = reinterpret_cast<const __half*>(p.v) + token * p.v_token_stride + head * p.v_head_stride;
  }
  const int slot = p.slots[token];
  const long long capacity = static_cast<long long>(p.cache.num_pages) * p.cache.page_size;
  if (kind != kQ && (slot < 0 || slot >= capacity)) return;  // padding (or a bad slot: never written)

  float x[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) x[i] = __half2float(src[lane * kPer + i]);

  if (kind != kV && p.rope_inv_freq != nullptr) {
    const float pos = static_cast<float>(p.positions[token]);
    if (p.rope_interleaved) {
#pragma unroll
      for (int i = 0; i < kPer; i += 2) {
        float s, c;
        sincosf(__fmul_rn(pos, p.rope_inv_freq[(lane * kPer + i) / 2]), &s, &c);
        const float a = x[i], b = x[i + 1];
        x[i] = a * c - b * s;
        x[i + 1] = b * c + a * s;
      }
    } else {
      const bool first_half = lane < 16;
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const float partner = __shfl_xor_sync(kFullMask, x[i], 16);
        const int freq = (lane % 16) * kPer + i;
        float s, c;
        sincosf(__fmul_rn(pos, p.rope_inv_freq[freq]), &s, &c);
        x[i] = first_half ? x[i] * c - partner * s : x[i] * c + partner * s;
      }
    }
  }
  if (kind != kV && p.qk_hadamard) walsh_hadamard_lanes<kPer>(x, lane);
  // KV centering: the cache holds k - c_k (scores shift by q.c_k for every key: softmax ignores it) and v - c_v
  // (the runner adds c_v to the attention output).
  const float* center = kind == kK ? p.k_center : kind == kV ? p.v_center : nullptr;
  if (center != nullptr) {
    center += head * D + lane * kPer;
#pragma unroll
    for (int i = 0; i < kPer; ++i) x[i] = __fsub_rn(x[i], center[i]);
  }
  if ((kind != kV && (p.rope_inv_freq != nullptr || p.qk_hadamard)) || center != nullptr) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) x[i] = __half2float(__float2half_rn(x[i]));
  }

  if (kind == kQ) {
    __half* dst = reinterpret_cast<__half*>(p.q_out) + token * p.q_out_token_stride + head * p.q_out_head_stride;
#pragma unroll
    for (int i = 0; i < kPer; ++i) dst[lane * kPer + i] = __float2half_rn(x[i]);
    return;
  }

  const PagedKvCache& c = p.cache;
  const long long page = slot / c.page_size, in_page = slot % c.page_size;
  const long long cache_row = (page * kv_heads + head) * c.page_size + in_page;
  std::uint8_t* codes = static_cast<std::uint8_t*>(kind == kK ? c.k_codes : c.v_codes) +
                        cache_row * kv_row_bytes(kDtype, D);
  if constexpr (kDtype == KvDtype::kF16) {
    __half* dst = reinterpret_cast<__half*>(codes);
#pragma unroll
    for (int i = 0; i < kPer; ++i) dst[lane * kPer + i] = __float2half_rn(x[i]);
  } else {
    constexpr float kQmax = kDtype == KvDtype::kU4 ? 15.0f : 255.0f;
    float lo_x = x[0], hi_x = x[0];
#pragma unroll
    for (int i = 1; i < kPer; ++i) {
      lo_x = fminf(x[i], lo_x);
      hi_x = fmaxf(x[i], hi_x);
    }
    const int group_lanes = c.group_size == 0 ? 32 : c.group_size / kPer;  // a power of two
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      if (off < group_lanes) {  // the same for every lane: the shuffles stay converged
        lo_x = fminf(lo_x, __shfl_xor_sync(kFullMask, lo_x, off));
        hi_x = fmaxf(hi_x, __shfl_xor_sync(kFullMask, hi_x, off));
      }
    }
    const __half lo_h = __float2half_rn(lo_x);
    const float lo = __half2float(lo_h);
    const __half scale_h = __float2half_rn(__fdiv_rn(__fsub_rn(hi_x, lo), kQmax));
    const float scale = __half2float(scale_h);
    unsigned q[kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      q[i] = scale == 0.0f ? 0u
                           : static_cast<unsigned>(fminf(fmaxf(rintf(__fdiv_rn(__fsub_rn(x[i], lo), scale)), 0.0f), kQmax));
    }
    if constexpr (kDtype == KvDtype::kU8) {
#pragma unroll
      for (int i = 0; i < kPer; ++i) codes[lane * kPer + i] = static_cast<std::uint8_t>(q[i]);
    } else {
#pragma unroll
      for (int i = 0; i < kPer; i += 2) codes[(lane * kPer + i) / 2] = static_cast<std::uint8_t>(q[i] | (q[i + 1] << 4));
    }
    if (lane % group_lanes == 0) {  // the first lane of each group writes its word
      std::uint32_t* params = kind == kK ? c.k_params : c.v_params;
      const int groups = D / (group_lanes * kPer);
      params[cache_row * groups + lane / group_lanes] = static_cast<std::uint32_t>(__half_as_ushort(scale_h)) |
                                                        (static_cast<std::uint32_t>(__half_as_ushort(lo_h)) << 16);
    }
  }
}

template <int D>
void launch_append(const KvAppendParams& p, cudaStream_t stream) {
  const int q_heads = p.q != nullptr ? p.num_qo_heads : 0;
  const long long rows = static_cast<long long>(p.num_tokens) * (q_heads + 2 * p.cache.num_kv_heads);
  const long long blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks == 0) return;
  const LaunchShape shape{dim3(static_cast<unsigned>(blocks)), dim3(kWarpsPerBlock * 32)};
  switch (p.cache.dtype) {
    case KvDtype::kF16: launch_kernel(kv_append_kernel<D, KvDtype::kF16>, shape, /*pdl=*/true, stream, p); break;
    case KvDtype::kU8: launch_kernel(kv_append_kernel<D, KvDtype::kU8>, shape, /*pdl=*/true, stream, p); break;
    case KvDtype::kU4: launch_kernel(kv_append_kernel<D, KvDtype::kU4>, shape, /*pdl=*/true, stream, p); break;
  }
}

}  // namespace

void kv_cache_append(const KvAppendParams& p, cudaStream_t stream) {
  check_params(p);
  if (p.cache.head_dim == 64) launch_append<64>(p, stream);
  else launch_append<128>(p, stream);
}

}  // namespace atom::cuda
