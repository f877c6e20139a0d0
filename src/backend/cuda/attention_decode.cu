// Decode attention over the paged KV cache: one query token per sequence.
// Grid (split, kv head, sequence); 4 warps per block. A token row is read by kTpt lanes, kDpt dims each,
// with one 16-byte (or 8/4-byte) load of K and one of V per lane per token; a warp covers kTpw tokens
// per step and unrolls kUnroll steps so that 2*kUnroll loads per lane are in flight. All query heads of
// the KV head (GQA) are handled by the same lanes, so each cache byte is read and decoded once.
// Softmax is online per lane (rescaling only when the running max grows), then merged across lanes
// (shuffles) and warps (shared memory). With a split, each block writes its normalized partial output
// and log2-sum-exp; decode_merge_kernel combines them.
// Quantized caches skip the per-element dequantization (see KvCodec): with f = 1 + c/S,
//   q.k = S*scale*(sum q_i f_i - sum q_i) + lo * sum q_i
//   sum_t p_t v_t = sum_t w_t f_t - sum_t w_t + sum_t p_t lo_t,   w_t = S * p_t * scale_t
// so the inner loops are one FMA per element and head after two integer ops per element.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cuda/attention_kernels.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kv_cache_codec.cuh"

namespace atom::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxSplits = 64;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

template <int D, KvDtype kDtype, int kGroup>
struct DecodeConfig {
  static constexpr int kBits = kv_bits(kDtype);
  // Dims per lane: wide loads, but q and the accumulators (kDpt * kGroup floats each) stay in registers.
  static constexpr int kDpt = kDtype == KvDtype::kF16 ? 8
                              : kGroup == 1           ? (kDtype == KvDtype::kU8 ? 16 : 32)
                              : kGroup == 4           ? 16
                                                      : 8;
  static constexpr int kLoadBytes = kDpt * kBits / 8;
  static constexpr int kWords = kLoadBytes / 4;
  static constexpr int kTpt = D / kDpt;   // lanes per token
  static constexpr int kTpw = 32 / kTpt;  // tokens per warp step
  static constexpr int kUnroll = kLoadBytes >= 16 ? 2 : 4;
  static constexpr int kWarpTokens = kUnroll * kTpw;
  static_assert(kWords >= 1 && kTpt >= 1 && kTpt <= 32 && 32 % kTpt == 0, "bad decode tiling");
};

template <int kWords>
__device__ __forceinline__ void load_words(const std::uint8_t* p, std::uint32_t (&w)[kWords]) {
  if constexpr (kWords == 4) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else if constexpr (kWords == 2) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x, w[1] = v.y;
  } else {
    static_assert(kWords == 1);
    w[0] = __ldg(reinterpret_cast<const unsigned int*>(p));
  }
}

struct DecodeSplit {
  int num_splits;
  int chunk;  // tokens per split (the last split takes the rest)
  float* partial_out;  // [batch * Hq * num_splits, D]
  float* partial_lse;  // [batch * Hq * num_splits] (log2 domain)
};

template <int D, KvDtype kDtype, int kGroup>
__global__ void __launch_bounds__(kWarps * 32) decode_kernel(DecodeParams p, DecodeSplit split_args) {
  using Cfg = DecodeConfig<D, kDtype, kGroup>;
  using Codec = KvCodec<kDtype>;
  constexpr int kDpt = Cfg::kDpt, kTpt = Cfg::kTpt, kTpw = Cfg::kTpw, kUnroll = Cfg::kUnroll, kWords = Cfg::kWords;
  constexpr int kRowBytes = kv_row_bytes(kDtype, D);

  const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slot = lane / kTpt, part = lane % kTpt;
  const PagedKvCache& c = p.cache;
  const int group = p.num_qo_heads / c.num_kv_heads;
  const int kv_len = p.kv_lens[b];
  const int begin = split * split_args.chunk;
  const int end = split == split_args.num_splits - 1 ? kv_len : min(kv_len, begin + split_args.chunk);

  // This lane's slice of every query head of the group, pre-scaled into the log2 domain.
  const float q_scale = p.sm_scale * kLog2e;
  float qr[kGroup][kDpt], sumq[kGroup];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    sumq[g] = 0.0f;
    const __half* qh = reinterpret_cast<const __half*>(p.q) + b * p.q_token_stride +
                       static_cast<long long>(kvh * group + g) * p.q_head_stride + part * kDpt;
#pragma unroll
    for (int i = 0; i < kDpt; ++i) {
      qr[g][i] = g < group ? __half2float(qh[i]) * q_scale : 0.0f;
      sumq[g] += qr[g][i];
    }
#pragma unroll
    for (int off = kTpt / 2; off > 0; off >>= 1) sumq[g] += __shfl_xor_sync(kFullMask, sumq[g], off);
  }

  float m[kGroup], l[kGroup], acc[kGroup][kDpt], wsum[kGroup], plo[kGroup];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    m[g] = -INFINITY, l[g] = 0.0f, wsum[g] = 0.0f, plo[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < kDpt; ++i) acc[g][i] = 0.0f;
  }

  const int page_shift = __ffs(c.page_size) - 1;
  const std::int32_t* block_table = p.block_tables + static_cast<long long>(b) * p.block_table_stride;
  const std::uint8_t* k_base = static_cast<const std::uint8_t*>(c.k_codes) + part * Cfg::kLoadBytes;
  const std::uint8_t* v_base = static_cast<const std::uint8_t*>(c.v_codes) + part * Cfg::kLoadBytes;

  for (int base = begin + warp * Cfg::kWarpTokens; base < end; base += kWarps * Cfg::kWarpTokens) {
    std::uint32_t kw[kUnroll][kWords], vw[kUnroll][kWords], kp[kUnroll], vp[kUnroll];
    bool valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int t = base + u * kTpw + slot;
      valid[u] = t < end;
      if (valid[u]) {
        const long long row = kv_cache_row(c, block_table, t, page_shift, kvh);
        load_words<kWords>(k_base + row * kRowBytes, kw[u]);
        load_words<kWords>(v_base + row * kRowBytes, vw[u]);
        if constexpr (Codec::kQuantized) {
          kp[u] = __ldg(c.k_params + row);
          vp[u] = __ldg(c.v_params + row);
        }
      } else {
#pragma unroll
        for (int i = 0; i < kWords; ++i) kw[u][i] = vw[u][i] = 0u;
        kp[u] = vp[u] = 0u;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float dot[kGroup];
#pragma unroll
      for (int g = 0; g < kGroup; ++g) dot[g] = 0.0f;
#pragma unroll
      for (int i = 0; i < kDpt; ++i) {
        const float f = Codec::decode(kw[u], i);
#pragma unroll
        for (int g = 0; g < kGroup; ++g) dot[g] = fmaf(qr[g][i], f, dot[g]);
      }
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
#pragma unroll
        for (int off = kTpt / 2; off > 0; off >>= 1) dot[g] += __shfl_xor_sync(kFullMask, dot[g], off);
      }
      float w[kGroup];
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float s = dot[g];
        if constexpr (Codec::kQuantized) {
          s = fmaf(Codec::kCodeScale * kv_param_scale(kp[u]), dot[g] - sumq[g], kv_param_min(kp[u]) * sumq[g]);
        }
        if (valid[u] && s > m[g]) {  // rare after the first tokens: rescale lazily
          const float f = exp2f(m[g] - s);
          l[g] *= f, wsum[g] *= f, plo[g] *= f;
#pragma unroll
          for (int i = 0; i < kDpt; ++i) acc[g][i] *= f;
          m[g] = s;
        }
        const float pw = valid[u] ? exp2f(s - m[g]) : 0.0f;
        l[g] += pw;
        w[g] = pw;
        if constexpr (Codec::kQuantized) {
          w[g] = pw * (Codec::kCodeScale * kv_param_scale(vp[u]));
          wsum[g] += w[g];
          plo[g] = fmaf(pw, kv_param_min(vp[u]), plo[g]);
        }
      }
#pragma unroll
      for (int i = 0; i < kDpt; ++i) {
        const float f = Codec::decode(vw[u], i);
#pragma unroll
        for (int g = 0; g < kGroup; ++g) acc[g][i] = fmaf(w[g], f, acc[g][i]);
      }
    }
  }

  // Fold the per-token constants, then merge the lanes that hold the same dims (different token slots).
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    if constexpr (Codec::kQuantized) {
      const float shift = plo[g] - wsum[g];
#pragma unroll
      for (int i = 0; i < kDpt; ++i) acc[g][i] += shift;
    }
#pragma unroll
    for (int off = kTpt; off < 32; off <<= 1) {
      const float m_o = __shfl_xor_sync(kFullMask, m[g], off);
      const float l_o = __shfl_xor_sync(kFullMask, l[g], off);
      const float m_new = fmaxf(m[g], m_o);
      const float a = m[g] == -INFINITY ? 0.0f : exp2f(m[g] - m_new);
      const float bo = m_o == -INFINITY ? 0.0f : exp2f(m_o - m_new);
      l[g] = l[g] * a + l_o * bo;
#pragma unroll
      for (int i = 0; i < kDpt; ++i) {
        const float acc_o = __shfl_xor_sync(kFullMask, acc[g][i], off);
        acc[g][i] = acc[g][i] * a + acc_o * bo;
      }
      m[g] = m_new;
    }
  }

  __shared__ float s_acc[kWarps][kGroup][D];
  __shared__ float s_m[kWarps][kGroup], s_l[kWarps][kGroup];
  if (slot == 0) {
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
#pragma unroll
      for (int i = 0; i < kDpt; ++i) s_acc[warp][g][part * kDpt + i] = acc[g][i];
      if (part == 0) s_m[warp][g] = m[g], s_l[warp][g] = l[g];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * D; idx += kWarps * 32) {
    const int g = idx / D, d = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, s_m[w][g]);
    float lsum = 0.0f, a = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float sc = s_m[w][g] == -INFINITY ? 0.0f : exp2f(s_m[w][g] - mx);
      lsum = fmaf(s_l[w][g], sc, lsum);
      a = fmaf(s_acc[w][g][d], sc, a);
    }
    const float o = lsum > 0.0f ? a / lsum : 0.0f;
    const int h = kvh * group + g;
    if (split_args.num_splits == 1) {
      reinterpret_cast<__half*>(p.out)[b * p.out_token_stride + static_cast<long long>(h) * p.out_head_stride + d] =
          __float2half_rn(o);
    } else {
      const long long r = (static_cast<long long>(b) * p.num_qo_heads + h) * split_args.num_splits + split;
      split_args.partial_out[r * D + d] = o;
      if (d == 0) split_args.partial_lse[r] = lsum > 0.0f ? mx + log2f(lsum) : -INFINITY;
    }
  }
}

// One block per (sequence, query head), one thread per dim.
__global__ void decode_merge_kernel(DecodeParams p, DecodeSplit s, int head_dim) {
  const int bh = blockIdx.x, d = threadIdx.x;
  const int b = bh / p.num_qo_heads, h = bh % p.num_qo_heads;
  const float* lse = s.partial_lse + static_cast<long long>(bh) * s.num_splits;
  float mx = -INFINITY;
  for (int i = 0; i < s.num_splits; ++i) mx = fmaxf(mx, lse[i]);
  float o = 0.0f;
  if (mx != -INFINITY) {
    float total = 0.0f, acc = 0.0f;
    for (int i = 0; i < s.num_splits; ++i) {
      if (lse[i] == -INFINITY) continue;
      const float w = exp2f(lse[i] - mx);
      total += w;
      acc = fmaf(w, s.partial_out[(static_cast<long long>(bh) * s.num_splits + i) * head_dim + d], acc);
    }
    o = acc / total;
  }
  reinterpret_cast<__half*>(p.out)[b * p.out_token_stride + static_cast<long long>(h) * p.out_head_stride + d] =
      __float2half_rn(o);
}

int num_sms() {
  static int count = [] {
    int dev = 0, n = 0;
    ATOM_CUDA_CHECK(cudaGetDevice(&dev));
    ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  return count;
}

struct Plan {
  int num_splits, chunk;
};

Plan make_plan(const DecodeParams& p) {
  const int max_len = std::max(p.max_kv_len, 1);
  int splits = p.num_splits;
  if (splits <= 0) {
    // Aim for about 8 blocks per SM; no chunk shorter than 256 tokens.
    const long long base = static_cast<long long>(p.batch) * p.cache.num_kv_heads;
    const long long target = 8LL * num_sms();
    splits = base >= target ? 1 : static_cast<int>((target + base - 1) / base);
    splits = std::min(splits, (max_len + 255) / 256);
  }
  splits = std::clamp(splits, 1, std::min(kMaxSplits, max_len));
  const int chunk = (max_len + splits - 1) / splits;
  return {(max_len + chunk - 1) / chunk, chunk};
}

template <int D, KvDtype kDtype, int kGroup>
void launch_decode(const DecodeParams& p, const DecodeSplit& s, cudaStream_t stream) {
  const dim3 grid(s.num_splits, p.cache.num_kv_heads, p.batch);
  decode_kernel<D, kDtype, kGroup><<<grid, kWarps * 32, 0, stream>>>(p, s);
  ATOM_CUDA_CHECK_LAUNCH();
}

template <int D, KvDtype kDtype>
void dispatch_group(const DecodeParams& p, const DecodeSplit& s, cudaStream_t stream) {
  const int group = p.num_qo_heads / p.cache.num_kv_heads;
  if (group == 1) launch_decode<D, kDtype, 1>(p, s, stream);
  else if (group <= 4) launch_decode<D, kDtype, 4>(p, s, stream);
  else launch_decode<D, kDtype, 8>(p, s, stream);
}

template <int D>
void dispatch_dtype(const DecodeParams& p, const DecodeSplit& s, cudaStream_t stream) {
  switch (p.cache.dtype) {
    case KvDtype::kF16: dispatch_group<D, KvDtype::kF16>(p, s, stream); break;
    case KvDtype::kU8: dispatch_group<D, KvDtype::kU8>(p, s, stream); break;
    case KvDtype::kU4: dispatch_group<D, KvDtype::kU4>(p, s, stream); break;
  }
}

}  // namespace

int decode_num_splits(const DecodeParams& p) { return make_plan(p).num_splits; }

std::size_t decode_workspace_bytes(const DecodeParams& p) {
  const Plan plan = make_plan(p);
  if (plan.num_splits == 1) return 0;
  const std::size_t rows = static_cast<std::size_t>(p.batch) * p.num_qo_heads * plan.num_splits;
  return rows * (static_cast<std::size_t>(p.cache.head_dim) + 1) * sizeof(float);
}

void attention_decode(const DecodeParams& p, cudaStream_t stream) {
  check_params(p);
  if (p.batch == 0) return;
  const Plan plan = make_plan(p);
  DecodeSplit s{plan.num_splits, plan.chunk, nullptr, nullptr};
  if (plan.num_splits > 1) {
    const std::size_t need = decode_workspace_bytes(p);
    if (p.workspace == nullptr || p.workspace_bytes < need) throw_decode_workspace_error(need, p.workspace_bytes);
    const std::size_t rows = static_cast<std::size_t>(p.batch) * p.num_qo_heads * plan.num_splits;
    s.partial_out = static_cast<float*>(p.workspace);
    s.partial_lse = s.partial_out + rows * p.cache.head_dim;
  }
  if (p.cache.head_dim == 64) dispatch_dtype<64>(p, s, stream);
  else dispatch_dtype<128>(p, s, stream);
  if (plan.num_splits > 1) {
    decode_merge_kernel<<<p.batch * p.num_qo_heads, p.cache.head_dim, 0, stream>>>(p, s, p.cache.head_dim);
    ATOM_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace atom::cuda
