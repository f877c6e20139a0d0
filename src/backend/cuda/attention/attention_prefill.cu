// Prefill attention (ragged batch, causal) over the paged KV cache, FlashAttention-2 style on
// mma.sync m16n8k16 (fp16 in, fp32 accumulate; sm_80+, so no per-architecture variant is needed).
// Block = 4 warps = 64 query rows of one query head; each warp owns 16 rows. KV tiles of 64 tokens are
// dequantized once per block into shared memory as fp16 (K row-major, V transposed so that both MMA
// B operands are single 32-bit shared loads); rows are padded by 8 halves, which makes those loads
// bank-conflict free. Dequantization is FORMAT.md's fma(q, scale, lo), rounded to fp16.
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "backend/cuda/attention/attention_kernels.h"
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/kv_cache/kv_cache_codec.cuh"

namespace atom::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockQ = 16 * kWarps;
constexpr int kBlockK = 64;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ void mma_16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                          std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ std::uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&h);
}

// Eight consecutive elements (dims 8*chunk ..) of cache row `row`, dequantized to fp16 with the params word of
// their group (`groups` words per row; a group holds whole chunks).
template <int D, KvDtype kDtype>
__device__ __forceinline__ uint4 load_row_chunk(const void* codes, const std::uint32_t* params, int groups,
                                                long long row, int chunk) {
  constexpr int kRowBytes = kv_row_bytes(kDtype, D);
  const std::uint8_t* src = static_cast<const std::uint8_t*>(codes) + row * kRowBytes;
  if constexpr (kDtype == KvDtype::kF16) {
    return __ldg(reinterpret_cast<const uint4*>(src) + chunk);
  } else {
    const std::uint32_t pw = __ldg(params + row * groups + chunk * groups / (D / 8));
    const float scale = kv_param_scale(pw), lo = kv_param_min(pw);
    float v[8];
    if constexpr (kDtype == KvDtype::kU8) {
      const uint2 w = __ldg(reinterpret_cast<const uint2*>(src) + chunk);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = static_cast<float>(((i < 4 ? w.x : w.y) >> (8 * (i % 4))) & 0xFFu);
    } else {
      const std::uint32_t w = __ldg(reinterpret_cast<const unsigned int*>(src) + chunk);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = static_cast<float>((w >> (4 * i)) & 0xFu);
    }
    uint4 out;
    std::uint32_t* o = reinterpret_cast<std::uint32_t*>(&out);
#pragma unroll
    for (int i = 0; i < 4; ++i) o[i] = pack_half2(fmaf(v[2 * i], scale, lo), fmaf(v[2 * i + 1], scale, lo));
    return out;
  }
}

template <int D, KvDtype kDtype>
__global__ void __launch_bounds__(kThreads) prefill_kernel(PrefillParams p) {
  constexpr int kKStride = D + 8;        // halves per K row in shared memory
  constexpr int kVStride = kBlockK + 8;  // halves per transposed V row (one dim)
  constexpr int kChunksPerRow = D / 8;
  __shared__ __align__(16) __half k_s[kBlockK * kKStride];
  __shared__ __align__(16) __half v_s[D * kVStride];

  const int q_tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int q_begin = p.qo_indptr[b];
  const int q_len = p.qo_indptr[b + 1] - q_begin;
  const int q0 = q_tile * kBlockQ;
  if (q0 >= q_len) return;  // uniform for the block
  const PagedKvCache& c = p.cache;
  const int kv_len = p.kv_lens[b];
  const int first_pos = kv_len - q_len;  // position of query row 0
  const int kvh = h / (p.num_qo_heads / c.num_kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;  // this lane's two query rows

  // Q as MMA A fragments for all D/16 k-steps.
  std::uint32_t qa[D / 16][4];
  const __half* q_head = reinterpret_cast<const __half*>(p.q) + static_cast<long long>(q_begin) * p.q_token_stride +
                         static_cast<long long>(h) * p.q_head_stride;
  const auto load_q = [&](int r, int col) -> std::uint32_t {
    return r < q_len ? *reinterpret_cast<const std::uint32_t*>(q_head + r * p.q_token_stride + col) : 0u;
  };
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    qa[kk][0] = load_q(r0, kk * 16 + 2 * t);
    qa[kk][1] = load_q(r1, kk * 16 + 2 * t);
    qa[kk][2] = load_q(r0, kk * 16 + 2 * t + 8);
    qa[kk][3] = load_q(r1, kk * 16 + 2 * t + 8);
  }

  float o[D / 8][4];
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
  const float scale_log2 = p.sm_scale * kLog2e;
  const int page_shift = __ffs(c.page_size) - 1;
  const std::int32_t* block_table = p.block_tables + static_cast<long long>(b) * p.block_table_stride;
  const int kv_end = p.causal ? min(kv_len, first_pos + q0 + kBlockQ) : kv_len;

  for (int k0 = 0; k0 < kv_end; k0 += kBlockK) {
    __syncthreads();  // the previous tile is consumed
    for (int ci = threadIdx.x; ci < kBlockK * kChunksPerRow; ci += kThreads) {
      {  // K: chunks of a row on consecutive threads
        const int r = ci / kChunksPerRow, chunk = ci % kChunksPerRow, key = k0 + r;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (key < kv_len) v = load_row_chunk<D, kDtype>(c.k_codes, c.k_params, kv_row_groups(c), kv_cache_row(c, block_table, key, page_shift, kvh), chunk);
        *reinterpret_cast<uint4*>(&k_s[r * kKStride + chunk * 8]) = v;
      }
      {  // V: rows on consecutive threads, so the transposed 2-byte stores fill consecutive addresses
        const int r = ci % kBlockK, chunk = ci / kBlockK, key = k0 + r;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (key < kv_len) v = load_row_chunk<D, kDtype>(c.v_codes, c.v_params, kv_row_groups(c), kv_cache_row(c, block_table, key, page_shift, kvh), chunk);
        const __half* hv = reinterpret_cast<const __half*>(&v);
#pragma unroll
        for (int e = 0; e < 8; ++e) v_s[(chunk * 8 + e) * kVStride + r] = hv[e];
      }
    }
    __syncthreads();

    // S = Q K^T for this warp's 16 rows and the tile's 64 keys (8 n-tiles of 8 keys).
    float s[kBlockK / 8][4];
#pragma unroll
    for (int j = 0; j < kBlockK / 8; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
      const __half* k_row = &k_s[(j * 8 + g) * kKStride + 2 * t];
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        mma_16816(s[j], qa[kk], *reinterpret_cast<const std::uint32_t*>(k_row + kk * 16),
                  *reinterpret_cast<const std::uint32_t*>(k_row + kk * 16 + 8));
      }
    }
    // Mask, scale, online softmax (two rows per lane; a row's 64 scores live in its 4 lanes).
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < kBlockK / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + j * 8 + 2 * t + (e & 1);
        const int row = e < 2 ? r0 : r1;
        const bool visible = key < kv_len && (!p.causal || key <= first_pos + row);
        s[j][e] = visible ? s[j][e] * scale_log2 : -INFINITY;
      }
      mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
      mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float new0 = fmaxf(m0, mx0), new1 = fmaxf(m1, mx1);
    const float use0 = new0 == -INFINITY ? 0.0f : new0, use1 = new1 == -INFINITY ? 0.0f : new1;
    const float f0 = exp2f(m0 - use0), f1 = exp2f(m1 - use1);
    m0 = new0, m1 = new1;
    float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
    for (int j = 0; j < kBlockK / 8; ++j) {
      s[j][0] = exp2f(s[j][0] - use0), s[j][1] = exp2f(s[j][1] - use0);
      s[j][2] = exp2f(s[j][2] - use1), s[j][3] = exp2f(s[j][3] - use1);
      sum0 += s[j][0] + s[j][1];
      sum1 += s[j][2] + s[j][3];
    }
    l0 = l0 * f0 + sum0;
    l1 = l1 * f1 + sum1;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) o[dn][0] *= f0, o[dn][1] *= f0, o[dn][2] *= f1, o[dn][3] *= f1;

    // O += P V: P's accumulator layout is the A fragment layout of the next MMA.
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      const std::uint32_t pa[4] = {pack_half2(s[2 * kk][0], s[2 * kk][1]), pack_half2(s[2 * kk][2], s[2 * kk][3]),
                                   pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                   pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dn = 0; dn < D / 8; ++dn) {
        const __half* v_row = &v_s[(dn * 8 + g) * kVStride + kk * 16 + 2 * t];
        mma_16816(o[dn], pa, *reinterpret_cast<const std::uint32_t*>(v_row),
                  *reinterpret_cast<const std::uint32_t*>(v_row + 8));
      }
    }
  }

#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  __half* out_head = reinterpret_cast<__half*>(p.out) + static_cast<long long>(q_begin) * p.out_token_stride +
                     static_cast<long long>(h) * p.out_head_stride;
#pragma unroll
  for (int dn = 0; dn < D / 8; ++dn) {
    if (r0 < q_len) {
      *reinterpret_cast<std::uint32_t*>(out_head + r0 * p.out_token_stride + dn * 8 + 2 * t) =
          pack_half2(o[dn][0] * inv0, o[dn][1] * inv0);
    }
    if (r1 < q_len) {
      *reinterpret_cast<std::uint32_t*>(out_head + r1 * p.out_token_stride + dn * 8 + 2 * t) =
          pack_half2(o[dn][2] * inv1, o[dn][3] * inv1);
    }
  }
}

template <int D>
void launch_prefill(const PrefillParams& p, cudaStream_t stream) {
  const dim3 grid((p.max_q_len + kBlockQ - 1) / kBlockQ, p.num_qo_heads, p.batch);
  switch (p.cache.dtype) {
    case KvDtype::kF16: prefill_kernel<D, KvDtype::kF16><<<grid, kThreads, 0, stream>>>(p); break;
    case KvDtype::kU8: prefill_kernel<D, KvDtype::kU8><<<grid, kThreads, 0, stream>>>(p); break;
    case KvDtype::kU4: prefill_kernel<D, KvDtype::kU4><<<grid, kThreads, 0, stream>>>(p); break;
  }
  ATOM_CUDA_CHECK_LAUNCH();
}

}  // namespace

void attention_prefill(const PrefillParams& p, cudaStream_t stream) {
  check_params(p);
  if (p.batch == 0 || p.max_q_len == 0) return;
  if (p.cache.head_dim == 64) launch_prefill<64>(p, stream);
  else launch_prefill<128>(p, stream);
}

}  // namespace atom::cuda
