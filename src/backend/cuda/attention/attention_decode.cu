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
// A cache with several params words per row (groups of 32 or more channels) gives each lane the word of its
// dims' group: the key's scale and minimum then apply to the lane's partial dot before the lanes' sum.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "backend/cuda/attention/attention_kernels.h"
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/common/launch.cuh"
#include "backend/cuda/kv_cache/kv_cache_codec.cuh"

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
  int min_chunk;  // decode_split_range: each sequence splits its own length
  float* partial_out;  // [batch * Hq * num_splits, D]
  float* partial_lse;  // [batch * Hq * num_splits] (log2 domain)
};

template <int D, KvDtype kDtype, int kGroup>
__global__ void __launch_bounds__(kWarps * 32) decode_kernel(DecodeParams p, DecodeSplit split_args) {
  using Cfg = DecodeConfig<D, kDtype, kGroup>;
  using Codec = KvCodec<kDtype>;
  constexpr int kDpt = Cfg::kDpt, kTpt = Cfg::kTpt, kTpw = Cfg::kTpw, kUnroll = Cfg::kUnroll, kWords = Cfg::kWords;
  constexpr int kRowBytes = kv_row_bytes(kDtype, D);
  pdl_allow_dependents();
  pdl_wait();  // q and the new cache rows come from kv_cache_append

  const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int slot = lane / kTpt, part = lane % kTpt;
  const PagedKvCache& c = p.cache;
  const int group = p.num_qo_heads / c.num_kv_heads;
  const int kv_len = p.kv_lens[b];
  const DecodeSplitRange range = decode_split_range(kv_len, split_args.num_splits, split_args.min_chunk, split);
  const int begin = range.begin, end = range.end;

  // This lane's slice of every query head of the group, pre-scaled into the log2 domain.
  const float q_scale = p.sm_scale * kLog2e;
  // Params words per row, and the one of this lane's dims (they lie in one group: check_cache).
  const int groups = kv_row_groups(c), lane_group = part * kDpt * groups / D;
  float qr[kGroup][kDpt], sumq[kGroup], sumq_lane[kGroup];
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
    sumq_lane[g] = sumq[g];
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
          kp[u] = __ldg(c.k_params + row * groups + lane_group);
          vp[u] = __ldg(c.v_params + row * groups + lane_group);
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
        if constexpr (Codec::kQuantized) {
          if (groups > 1) {  // this lane's group: its part of the score
            dot[g] = fmaf(Codec::kCodeScale * kv_param_scale(kp[u]), dot[g] - sumq_lane[g],
                          kv_param_min(kp[u]) * sumq_lane[g]);
          }
        }
#pragma unroll
        for (int off = kTpt / 2; off > 0; off >>= 1) dot[g] += __shfl_xor_sync(kFullMask, dot[g], off);
      }
      float w[kGroup];
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float s = dot[g];
        if constexpr (Codec::kQuantized) {
          if (groups == 1) {
            s = fmaf(Codec::kCodeScale * kv_param_scale(kp[u]), dot[g] - sumq[g], kv_param_min(kp[u]) * sumq[g]);
          }
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

// ---- UINT4 cache on the tensor cores (pages of a multiple of 16 tokens, any group <= 8).
// CUDA-core decoding of 4-bit codes costs two integer ops per element (the INT32 pipe runs at half the
// FP32 rate), which caps decode_kernel<kU4> near half the memory bandwidth. Here a warp takes 16 tokens
// at a time and both products run on mma.m16n8k16 (fp16 in, fp32 accumulate); codes become fp16
// 1024 + c (or 1024 + 16c) with one LOP3 per two codes, then exact c with one HSUB2 (HFMA2 by 1/16).
// (Feeding 1024 + c and removing the offset afterwards is exact in IEEE fp32 but not on the tensor
// cores: their fp32 accumulation loses the low bits of a large running sum, and the error grew with
// the context, 4e-2 at 4096 tokens.)
//   S^T = K q^T: A = K codes (16 tokens x 16 dims; the dims of q are permuted to match the unpack),
//               B = q (16 dims x 8 heads of the group), C = S[token][head].
//   O^T = V^T P^T: A = V codes (16 dims x 16 tokens; PRMT pairs the same dim of two tokens),
//               B = w = p * scale_v in fp16 (16 tokens x 8 heads), moved from the C layout of S by
//               4 shuffles.
// Row statistics of head h live in the lanes with t = h / 2, for S and O alike.
// Loads: a 16-token tile is 2.2 KB (D = 128) that the warp needs at once. Loading it into registers
// left one tile in flight per warp, and the kernel latency-bound at 62% of the copy bandwidth. Each
// warp therefore runs its own cp.async pipeline of kU4Stages tiles in shared memory (kU4Stages - 1 in
// flight while one is computed); registers no longer hold loads across the latency, so more warps fit.
// Tuning (H200, batch 128 x 1024 tokens, docs/notes/attention.md): 3 or 4 stages, 4/5 blocks per SM and
// 1, 2 or 4 warps per block are within 1%; 6 blocks (80 registers) spill and lose 28%. Blocks of 2 warps
// gain 2-9% at batch >= 128 with short contexts but lose 4-22% at batch <= 16 (half the warps per split).
constexpr int kU4Stages = 4;
constexpr int kU4Warps = 4;
constexpr int kU4MinBlocks = 5;  // 20 warps per SM: <= 96 registers, 5 x 35 KB of shared memory (D = 128)

__device__ __forceinline__ std::uint32_t and_or(std::uint32_t a, std::uint32_t b, std::uint32_t c) {
  std::uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));  // (a & b) | c
  return d;
}
__device__ __forceinline__ __half2 bits_half2(std::uint32_t w) {
  __half2 h;
  memcpy(&h, &w, 4);
  return h;
}
__device__ __forceinline__ std::uint32_t half2_bits(__half2 h) {
  std::uint32_t w;
  memcpy(&w, &h, 4);
  return w;
}
// Nibbles 0 and 4 of w (bits 0-3, 16-19) as exact half2 codes: (1024 + n) - 1024.
__device__ __forceinline__ std::uint32_t low_nibbles(std::uint32_t w) {
  return half2_bits(__hsub2(bits_half2(and_or(w, 0x000F000Fu, 0x64006400u)), bits_half2(0x64006400u)));  // - 1024
}
// Nibbles 1 and 5 of w (bits 4-7, 20-23): (1024 + 16 n) / 16 - 64, one exact HFMA2.
__device__ __forceinline__ std::uint32_t high_nibbles(std::uint32_t w) {
  // x * (1/16) + (-64): 0x2C00 = 1/16, 0xD400 = -64 in fp16.
  return half2_bits(__hfma2(bits_half2(and_or(w, 0x00F000F0u, 0x64006400u)), bits_half2(0x2C002C00u),
                            bits_half2(0xD400D400u)));
}
__device__ __forceinline__ void mma_16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                          std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// 16 bytes global -> shared; bytes [src_bytes, 16) are zero-filled (src_bytes = 0: nothing is read).
__device__ __forceinline__ void cp_async16(std::uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}
template <int kWords>
__device__ __forceinline__ void lds_words(const std::uint8_t* p, std::uint32_t (&w)[kWords]) {
  if constexpr (kWords == 4) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else if constexpr (kWords == 2) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    w[0] = v.x, w[1] = v.y;
  } else {
    static_assert(kWords == 1);
    w[0] = *reinterpret_cast<const std::uint32_t*>(p);
  }
}

// One 16-token tile in shared memory: K codes, V codes, K params, V params (16 uint32 each).
// K rows are stored as in the page. V rows are read 2 tokens apart by the fragment loads (rows 2t, 2t+1,
// 2t+8, 2t+9), which puts the rows of one load on the same banks; XOR-ing bits 1-2 of the 16-byte chunk
// index with the 128-byte block index spreads them (one or two wavefronts per load, the minimum).
template <int D>
struct U4Tile {
  static constexpr int kRowBytes = D / 2;
  static constexpr int kCodeBytes = 16 * kRowBytes;
  static constexpr int kChunks = kCodeBytes / 16;  // 16-byte copies per code tile
  static constexpr int kChunksPerLane = kChunks / 32;
  static constexpr int kKParams = 2 * kCodeBytes, kVParams = kKParams + 64;
  static constexpr int kBytes = kVParams + 64;
  static_assert(kChunksPerLane >= 1 && kBytes % 16 == 0, "head_dim 64 or 128");
  __device__ static int v_chunk(int c) { return c ^ (((c >> 3) & (D == 128 ? 3 : 1)) << 1); }
  __device__ static int v_offset(int byte) { return v_chunk(byte / 16) * 16 + byte % 16; }
};

template <int D>
__global__ void __launch_bounds__(kU4Warps * 32, kU4MinBlocks)
    decode_u4_mma_kernel(DecodeParams p, DecodeSplit split_args) {
  using Tile = U4Tile<D>;
  constexpr int kRowBytes = Tile::kRowBytes;
  constexpr int kKWords = D / 32;  // words of a K row per lane (4 lanes per row)
  constexpr int kMTiles = D / 16;  // 16-dim tiles of O^T = bytes of a V row per lane (8 lanes per row)
  constexpr int kVWords = kMTiles / 4;
  constexpr int kTileStride = kU4Warps * 16;  // tokens between a warp's consecutive tiles
  static_assert(kKWords >= 1 && kVWords >= 1, "head_dim 64 or 128");
  pdl_allow_dependents();
  pdl_wait();  // q and the new cache rows come from kv_cache_append
  const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const PagedKvCache& c = p.cache;
  const int group = p.num_qo_heads / c.num_kv_heads;
  const int kv_len = p.kv_lens[b];
  const DecodeSplitRange range = decode_split_range(kv_len, split_args.num_splits, split_args.min_chunk, split);
  const int begin = range.begin, end = range.end;  // begin % 16 == 0

  // The warp's pipeline; after the loop, the same bytes hold its partial output for the block merge.
  __shared__ __align__(16) std::uint8_t s_tiles[kU4Warps][kU4Stages][Tile::kBytes];
  __shared__ float s_m[kU4Warps][8], s_l[kU4Warps][8];
  static_assert(sizeof(s_tiles[0]) >= 8 * D * sizeof(float), "partial output must fit the warp's stages");
  const std::uint32_t stages = static_cast<std::uint32_t>(__cvta_generic_to_shared(s_tiles[warp][0]));

  // Tile i of this warp starts at token first + i * kTileStride. The pages of the first tiles are
  // fetched together with kv_len and q (bounded by the table's row, not by kv_len, so that the loads
  // do not wait for each other).
  const int first = begin + warp * 16;
  const int page_shift = __ffs(c.page_size) - 1;
  const std::int32_t* block_table = p.block_tables + static_cast<long long>(b) * p.block_table_stride;
  const auto page_of = [&](int i) {
    const unsigned page = static_cast<unsigned>(block_table[(first + i * kTileStride) >> page_shift]);
    return min(page, static_cast<unsigned>(c.num_pages - 1));
  };
  unsigned pages[kU4Stages];
#pragma unroll
  for (int i = 0; i < kU4Stages; ++i) {
    pages[i] = (first + i * kTileStride) >> page_shift < p.block_table_stride ? page_of(i) : 0u;
  }
  const int n_tiles = first < end ? (end - first + kTileStride - 1) / kTileStride : 0;

  // q of head g as B fragments, dims in the order low_nibbles / high_nibbles yield them.
  std::uint32_t qb[2 * kKWords][2];
  float sumq = 0.0f;
  {
    const __half* qh = reinterpret_cast<const __half*>(p.q) + b * p.q_token_stride +
                       static_cast<long long>(kvh * group + g) * p.q_head_stride;
#pragma unroll
    for (int j = 0; j < kKWords; ++j) {
      const int base = t * (D / 4) + 8 * j;
      __half x[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) x[k] = g < group ? qh[base + k] : __float2half_rn(0.0f);
#pragma unroll
      for (int k = 0; k < 8; ++k) sumq += __half2float(x[k]);
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        qb[2 * j + e][0] = half2_bits(__halves2half2(x[2 * e], x[2 * e + 4]));
        qb[2 * j + e][1] = half2_bits(__halves2half2(x[2 * e + 1], x[2 * e + 5]));
      }
    }
    sumq += __shfl_xor_sync(kFullMask, sumq, 1);
    sumq += __shfl_xor_sync(kFullMask, sumq, 2);
  }
  const float sumq_a = __shfl_sync(kFullMask, sumq, 8 * t), sumq_b = __shfl_sync(kFullMask, sumq, 8 * t + 4);
  const float q_scale = p.sm_scale * kLog2e;

  // Copies: code chunk lane + 32 j of K (as stored) and V (swizzled); lanes 0-7 one params chunk each.
  const std::uint8_t* k_codes = static_cast<const std::uint8_t*>(c.k_codes);
  const std::uint8_t* v_codes = static_cast<const std::uint8_t*>(c.v_codes);
  const std::uint32_t* params_src = lane < 4 ? c.k_params : c.v_params;
  const auto issue = [&](int i, unsigned page) {
    const int tile = first + i * kTileStride;
    const long long row0 =
        (static_cast<long long>(page) * c.num_kv_heads + kvh) * c.page_size + (tile & (c.page_size - 1));
    const int n_valid = end - tile;  // rows past it are zero-filled
    const std::uint32_t stage = stages + (i % kU4Stages) * Tile::kBytes;
#pragma unroll
    for (int j = 0; j < Tile::kChunksPerLane; ++j) {
      const int chunk = lane + 32 * j;
      const int bytes = chunk * 16 / kRowBytes < n_valid ? 16 : 0;
      const long long src = row0 * kRowBytes + chunk * 16;
      cp_async16(stage + chunk * 16, k_codes + src, bytes);
      cp_async16(stage + Tile::kCodeBytes + Tile::v_chunk(chunk) * 16, v_codes + src, bytes);
    }
    if (lane < 8) {
      const int r = (lane & 3) * 4;  // 4 rows per chunk
      cp_async16(stage + Tile::kKParams + lane * 16, params_src + row0 + r, min(max(n_valid - r, 0), 4) * 4);
    }
  };
  // Fragment reads (byte offsets in a stage): K rows g, g + 8; V rows 2t, 2t+1, 2t+8, 2t+9. Row 2t+1's
  // swizzled offset is row 2t's with bit log2(kRowBytes) flipped (the swizzle XORs chunk bits 1-2 with
  // (2t+1) / 2 = t, which leaves that bit alone), and rows + 8 are 8 * kRowBytes further, so two
  // registers and immediate offsets address all four.
  const int k_off = g * kRowBytes + t * (D / 8);
  const int v_off_even = Tile::kCodeBytes + Tile::v_offset(2 * t * kRowBytes + g * kMTiles);
  const int v_off_odd = v_off_even ^ kRowBytes;

  float o[kMTiles][4];
#pragma unroll
  for (int i = 0; i < kMTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  // Heads a = 2t and b = 2t + 1 of the group.
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f, pl_a = 0.0f, pl_b = 0.0f;
  const unsigned half_sel = (g & 1) ? 0x7632u : 0x5410u;
  const int src_a = 8 * t + g / 2, src_b = src_a + 4;  // lanes holding tokens 2t and 2t+1 of head g's pair

#pragma unroll
  for (int i = 0; i < kU4Stages - 1; ++i) {
    if (i < n_tiles) issue(i, pages[i]);
    cp_async_commit();
  }
  unsigned next_page = pages[kU4Stages - 1];
  for (int i = 0; i < n_tiles; ++i) {
    const int ahead = i + kU4Stages - 1;
    if (ahead < n_tiles) {
      issue(ahead, next_page);
      if (ahead + 1 < n_tiles) next_page = page_of(ahead + 1);  // used next iteration: latency hidden
    }
    cp_async_commit();
    cp_async_wait<kU4Stages - 1>();  // this lane's copies of tile i have landed
    __syncwarp();                    // and every lane's

    const std::uint8_t* st = s_tiles[warp][i % kU4Stages];
    const int n_valid = end - (first + i * kTileStride);
    const bool valid_a = g < n_valid, valid_b = g + 8 < n_valid;
    std::uint32_t ka[kKWords], kb[kKWords];
    lds_words<kKWords>(st + k_off, ka);
    lds_words<kKWords>(st + k_off + 8 * kRowBytes, kb);
    const std::uint32_t* kp = reinterpret_cast<const std::uint32_t*>(st + Tile::kKParams);
    const std::uint32_t* vp = reinterpret_cast<const std::uint32_t*>(st + Tile::kVParams);
    const std::uint32_t kpa = kp[g], kpb = kp[g + 8];

    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // [token g | g+8][head 2t | 2t+1]
#pragma unroll
    for (int j = 0; j < kKWords; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {  // e = 0: nibbles (0,4), (1,5); e = 1: (2,6), (3,7)
        const std::uint32_t wa = e == 0 ? ka[j] : ka[j] >> 8, wb = e == 0 ? kb[j] : kb[j] >> 8;
        const std::uint32_t a[4] = {low_nibbles(wa), low_nibbles(wb), high_nibbles(wa), high_nibbles(wb)};
        mma_16816(s, a, qb[2 * j + e][0], qb[2 * j + e][1]);
      }
    }
    const float ska = kv_param_scale(kpa), lka = kv_param_min(kpa), skb = kv_param_scale(kpb), lkb = kv_param_min(kpb);
    const float s0 = valid_a ? fmaf(ska, s[0], lka * sumq_a) * q_scale : -INFINITY;
    const float s1 = valid_a ? fmaf(ska, s[1], lka * sumq_b) * q_scale : -INFINITY;
    const float s2 = valid_b ? fmaf(skb, s[2], lkb * sumq_a) * q_scale : -INFINITY;
    const float s3 = valid_b ? fmaf(skb, s[3], lkb * sumq_b) * q_scale : -INFINITY;
    float mx_a = fmaxf(s0, s2), mx_b = fmaxf(s1, s3);
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(kFullMask, mx_a, off));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(kFullMask, mx_b, off));
    }
    if (mx_a > m_a) {  // rare after the first tiles: rescale lazily
      const float f = exp2f(m_a - mx_a);
      l_a *= f, pl_a *= f;
#pragma unroll
      for (int k = 0; k < kMTiles; ++k) o[k][0] *= f, o[k][2] *= f;
      m_a = mx_a;
    }
    if (mx_b > m_b) {
      const float f = exp2f(m_b - mx_b);
      l_b *= f, pl_b *= f;
#pragma unroll
      for (int k = 0; k < kMTiles; ++k) o[k][1] *= f, o[k][3] *= f;
      m_b = mx_b;
    }
    const float p0 = valid_a ? exp2f(s0 - m_a) : 0.0f, p1 = valid_a ? exp2f(s1 - m_b) : 0.0f;
    const float p2 = valid_b ? exp2f(s2 - m_a) : 0.0f, p3 = valid_b ? exp2f(s3 - m_b) : 0.0f;
    l_a += p0 + p2;
    l_b += p1 + p3;
    const std::uint32_t vpa = vp[g], vpb = vp[g + 8];
    const float sva = kv_param_scale(vpa), lva = kv_param_min(vpa), svb = kv_param_scale(vpb), lvb = kv_param_min(vpb);
    const __half2 w01 = __floats2half2_rn(p0 * sva, p1 * sva), w23 = __floats2half2_rn(p2 * svb, p3 * svb);
    pl_a = fmaf(p0, lva, fmaf(p2, lvb, pl_a));
    pl_b = fmaf(p1, lva, fmaf(p3, lvb, pl_b));
    // B fragments of P^T: lane (g, t) takes head g's weights of tokens 2t, 2t+1 (and + 8).
    const std::uint32_t u01 = half2_bits(w01), u23 = half2_bits(w23);
    const std::uint32_t x01a = __shfl_sync(kFullMask, u01, src_a), x01b = __shfl_sync(kFullMask, u01, src_b);
    const std::uint32_t x23a = __shfl_sync(kFullMask, u23, src_a), x23b = __shfl_sync(kFullMask, u23, src_b);
    const std::uint32_t pb0 = __byte_perm(x01a, x01b, half_sel), pb1 = __byte_perm(x23a, x23b, half_sel);
    std::uint32_t va[kVWords], vb[kVWords], vc[kVWords], vd[kVWords];
    lds_words<kVWords>(st + v_off_even, va);
    lds_words<kVWords>(st + v_off_odd, vb);
    lds_words<kVWords>(st + v_off_even + 8 * kRowBytes, vc);
    lds_words<kVWords>(st + v_off_odd + 8 * kRowBytes, vd);
#pragma unroll
    for (int k = 0; k < kMTiles; ++k) {
      const unsigned sel = static_cast<unsigned>(k % 4) | (static_cast<unsigned>(4 + k % 4) << 8);
      const std::uint32_t y01 = __byte_perm(va[k / 4], vb[k / 4], sel);
      const std::uint32_t y89 = __byte_perm(vc[k / 4], vd[k / 4], sel);
      const std::uint32_t a[4] = {low_nibbles(y01), high_nibbles(y01), low_nibbles(y89), high_nibbles(y89)};
      mma_16816(o[k], a, pb0, pb1);
    }
    __syncwarp();  // the stage is refilled by the next iteration's copies
  }
  cp_async_wait<0>();  // (only empty groups remain; the stages become the output buffer)

#pragma unroll
  for (int off = 4; off < 32; off <<= 1) {
    l_a += __shfl_xor_sync(kFullMask, l_a, off);
    l_b += __shfl_xor_sync(kFullMask, l_b, off);
    pl_a += __shfl_xor_sync(kFullMask, pl_a, off);
    pl_b += __shfl_xor_sync(kFullMask, pl_b, off);
  }
  const int head_a = 2 * t, head_b = 2 * t + 1;
  float* my_acc = reinterpret_cast<float*>(s_tiles[warp][0]);  // [8][D], inside this warp's stages
#pragma unroll
  for (int i = 0; i < kMTiles; ++i) {
    const int dim_lo = 2 * (g * kMTiles + i);  // rows g / g + 8 of m-tile i: low / high nibble of byte i
    if (head_a < group) {
      my_acc[head_a * D + dim_lo] = o[i][0] + pl_a;
      my_acc[head_a * D + dim_lo + 1] = o[i][2] + pl_a;
    }
    if (head_b < group) {
      my_acc[head_b * D + dim_lo] = o[i][1] + pl_b;
      my_acc[head_b * D + dim_lo + 1] = o[i][3] + pl_b;
    }
  }
  if (g == 0) {
    if (head_a < group) s_m[warp][head_a] = m_a, s_l[warp][head_a] = l_a;
    if (head_b < group) s_m[warp][head_b] = m_b, s_l[warp][head_b] = l_b;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * D; idx += kU4Warps * 32) {
    const int hg = idx / D, d = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kU4Warps; ++w) mx = fmaxf(mx, s_m[w][hg]);
    float lsum = 0.0f, a = 0.0f;
#pragma unroll
    for (int w = 0; w < kU4Warps; ++w) {
      const float sc = s_m[w][hg] == -INFINITY ? 0.0f : exp2f(s_m[w][hg] - mx);
      lsum = fmaf(s_l[w][hg], sc, lsum);
      a = fmaf(reinterpret_cast<const float*>(s_tiles[w][0])[hg * D + d], sc, a);
    }
    const float out = lsum > 0.0f ? a / lsum : 0.0f;
    const int h = kvh * group + hg;
    if (split_args.num_splits == 1) {
      reinterpret_cast<__half*>(p.out)[b * p.out_token_stride + static_cast<long long>(h) * p.out_head_stride + d] =
          __float2half_rn(out);
    } else {
      const long long r = (static_cast<long long>(b) * p.num_qo_heads + h) * split_args.num_splits + split;
      split_args.partial_out[r * D + d] = out;
      if (d == 0) split_args.partial_lse[r] = lsum > 0.0f ? mx + log2f(lsum) : -INFINITY;
    }
  }
}

// One block per (sequence, query head), one thread per dim.
__global__ void decode_merge_kernel(DecodeParams p, DecodeSplit s, int head_dim) {
  pdl_allow_dependents();
  pdl_wait();
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
  int num_splits, min_chunk;
};

constexpr int kMinSplitChunk = 256;  // tokens: below it a split's fixed cost outweighs its share

Plan make_plan(const DecodeParams& p) {
  const int max_len = std::max(p.max_kv_len, 1);
  int splits = p.num_splits;
  int min_chunk = 16;  // a forced count is used as given
  if (splits <= 0) {
    // Aim for about 8 blocks per SM; no chunk shorter than kMinSplitChunk tokens.
    const long long base = static_cast<long long>(p.batch) * p.cache.num_kv_heads;
    const long long target = 8LL * num_sms();
    splits = base >= target ? 1 : static_cast<int>((target + base - 1) / base);
    splits = std::min(splits, (max_len + kMinSplitChunk - 1) / kMinSplitChunk);
    min_chunk = kMinSplitChunk;
  }
  splits = std::clamp(splits, 1, std::min(kMaxSplits, (max_len + 15) / 16));
  return {splits, min_chunk};
}

template <int D, KvDtype kDtype, int kGroup>
void launch_decode(const DecodeParams& p, const DecodeSplit& s, cudaStream_t stream) {
  const dim3 grid(s.num_splits, p.cache.num_kv_heads, p.batch);
  launch_kernel(decode_kernel<D, kDtype, kGroup>, LaunchShape{grid, dim3(kWarps * 32)}, /*pdl=*/true, stream, p, s);
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
    case KvDtype::kU4:
      // A 16-token tile never straddles pages. The tensor-core kernel's fragments mix every group of a row (one
      // params word per row only); grouped caches run on the CUDA cores.
      if (p.cache.page_size % 16 == 0 && p.cache.groups() == 1) {
        const dim3 grid(s.num_splits, p.cache.num_kv_heads, p.batch);
        launch_kernel(decode_u4_mma_kernel<D>, LaunchShape{grid, dim3(kU4Warps * 32)}, /*pdl=*/true, stream, p, s);
      } else {
        dispatch_group<D, KvDtype::kU4>(p, s, stream);
      }
      break;
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
  DecodeSplit s{plan.num_splits, plan.min_chunk, nullptr, nullptr};
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
    launch_kernel(decode_merge_kernel,
                  LaunchShape{dim3(static_cast<unsigned>(p.batch * p.num_qo_heads)),
                              dim3(static_cast<unsigned>(p.cache.head_dim))},
                  /*pdl=*/true, stream, p, s, p.cache.head_dim);
  }
}

}  // namespace atom::cuda
