// Small-M (decode) and pre-Hopper GEMMs on warp MMA (mma.sync), reading the prepacked weight layout:
//  - gemm_w4a4o8_mma_s8: INT4 codes unpacked to int8 (x16) in registers, m16n8k32 s8 (Hopper has no INT4 MMA);
//  - gemm_w4a4o8_mma_s4: native INT4 tensor cores (m16n8k64 s4) of sm_80/86/89, same data flow;
//  - gemm_w4a16_mma: fp16 activations x INT4 weights (dequantized exactly to fp16 integers), m16n8k16 f16.
// A block owns 16 output channels and 8*MT tokens; its 8 warps split the groups of K (split-K) and add
// their fp32 partial sums in shared memory. The weights stream once from memory with 16-byte loads, so
// for small M the kernels run at memory bandwidth.
//
// Per group and thread: piece t (= lane % 4) of rows r and r+8 (r = lane / 4) of the 16-row slab: the
// canonical words {t, 4+t, 8+t, 12+t}. Word j feeds k-step j (s8: lo nibbles -> k 4t..4t+3, hi nibbles ->
// k 16+4t..; s4: words 2s, 2s+1 are k 8t.. and 32+8t.. of k64-step s). The activation words are chosen
// to match, so the products pair identical channels.
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/common/launch.cuh"
#include "backend/cuda/gemm/gemm_out.cuh"
#include "backend/cuda/gemm/gemm_ptx.cuh"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "backend/cuda/gemm/gemm_w4a4_layout.h"

namespace atom::cuda {
namespace {

constexpr int kWarps = 8;

struct MmaParams {
  const std::uint8_t* a_packed;           // [m, groups*64]
  const std::uint16_t* a_scales;          // [m, groups]
  const std::int8_t* a_outliers;          // [m, n_outliers]
  const std::uint16_t* a_outlier_scales;  // [m]
  const std::uint16_t* x;                 // W4A16: fp16 [m, groups*128]
  const std::uint8_t* w_packed;
  const std::int8_t* w_outliers;
  const float* w_scales;
  void* out;
  const void* residual;
  int m, n, groups, chunks, n_outliers;
};

__device__ __forceinline__ float weight_scale(const MmaParams& p, int tile, int entry, int row_in_tile) {
  return p.w_scales[((std::size_t)tile * (p.groups + 1) + entry) * kW4A4TileRows +
                    layout::scale_position_of_channel(row_in_tile)];
}

// Adds the warps' partial tiles and writes 16 channels x 8*MT tokens (optionally + residual). With outliers,
// the warps' int32 outlier sums are added exactly first and applied last: y = fma(float(D_o) * sa_o, sw_o, y).
template <typename OutT, int MT>
__device__ __forceinline__ void reduce_and_store(const MmaParams& p, float (&acc)[MT][4], const int (&outl)[MT][4],
                                                 int n_base, int m_base) {
  __shared__ float red[kWarps][MT][32][4];
  __shared__ int red_i[kWarps][MT][32][4];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      red[warp][mt][lane][i] = acc[mt][i];
      red_i[warp][mt][lane][i] = outl[mt][i];
    }
  __syncthreads();
  const int tile = n_base / kW4A4TileRows;
  for (int idx = threadIdx.x; idx < MT * 32 * 4; idx += kWarps * 32) {
    const int i = idx & 3, l = (idx >> 2) & 31, mt = idx >> 7;
    const int channel = n_base + l / 4 + 8 * (i >> 1);
    const int token = m_base + 8 * mt + 2 * (l % 4) + (i & 1);
    if (channel >= p.n || token >= p.m) continue;
    float y = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) y += red[w][mt][l][i];
    if (p.chunks > 0) {
      int d = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) d += red_i[w][mt][l][i];
      const float t = __fmul_rn(__int2float_rn(d), fp16_bits_to_float(p.a_outlier_scales[token]));
      y = __fmaf_rn(t, weight_scale(p, tile, p.groups, channel % kW4A4TileRows), y);
    }
    const std::size_t o = (std::size_t)token * p.n + channel;
    if (p.residual) y += GemmOut<OutT>::load1(static_cast<const OutT*>(p.residual) + o);
    GemmOut<OutT>::store1(static_cast<OutT*>(p.out) + o, y);
  }
}

template <typename OutT, int MT, bool kNativeS4>
__global__ void __launch_bounds__(kWarps * 32, MT <= 2 ? 2 : 1) gemm_w4a4o8_mma(const MmaParams p) {
  constexpr int U = MT == 1 ? 4 : 2;  // groups in flight per warp
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4, r = lane / 4;
  const int n_base = blockIdx.x * 16, tile = n_base / kW4A4TileRows, slab = n_base % kW4A4TileRows;
  const int m_base = blockIdx.y * 8 * MT;
  const int G = p.groups;
  // Tokens whose activations this thread loads (B operand column r) and whose scales it applies (2t, 2t+1).
  int tok_b[MT], tok_c[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    tok_b[mt] = min(m_base + 8 * mt + r, p.m - 1);
    tok_c[mt][0] = min(m_base + 8 * mt + 2 * t, p.m - 1);
    tok_c[mt][1] = min(m_base + 8 * mt + 2 * t + 1, p.m - 1);
  }
  float acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[mt][i] = 0.0f;

  const std::size_t a_row_bytes = (std::size_t)G * (kW4A4Group / 2);
  // Every load of a round's U groups (codes and scales) is issued before the first use. The weights of the
  // first round are loaded before the PDL wait: they overlap the end of the kernel before (for K = 4096
  // that is all of this warp's groups).
  uint4 w0[U], w1[U];
  float sw[U][2];
  const auto load_weights = [&](int g0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int g = g0 + u;
      if (g < G) {
        const std::uint8_t* wp =
            p.w_packed + ((((std::size_t)tile * G + g) * 4 + t) * kW4A4TileRows + slab + r) * 16;
        w0[u] = ptx::ldg_stream_v4(wp);
        w1[u] = ptx::ldg_stream_v4(wp + 8 * 16);
        sw[u][0] = __ldg(p.w_scales + ((std::size_t)tile * (G + 1) + g) * kW4A4TileRows +
                         layout::scale_position_of_channel(slab + r));
        sw[u][1] = __ldg(p.w_scales + ((std::size_t)tile * (G + 1) + g) * kW4A4TileRows +
                         layout::scale_position_of_channel(slab + r + 8));
      }
    }
  };
  pdl_allow_dependents();
  load_weights(warp * U);
  pdl_wait();
  for (int g0 = warp * U; g0 < G; g0 += kWarps * U) {
    if (g0 != warp * U) load_weights(g0);
    std::uint32_t x[U][MT][4];
    std::uint16_t sab[U][MT][2];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int g = g0 + u;
      if (g < G) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int j = 0; j < 4; ++j)
            x[u][mt][j] = __ldg(reinterpret_cast<const unsigned*>(p.a_packed + tok_b[mt] * a_row_bytes +
                                                                    g * (kW4A4Group / 2) + (4 * j + t) * 4));
          sab[u][mt][0] = __ldg(p.a_scales + (std::size_t)tok_c[mt][0] * G + g);
          sab[u][mt][1] = __ldg(p.a_scales + (std::size_t)tok_c[mt][1] * G + g);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int g = g0 + u;
      if (g >= G) break;
      int c[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i) c[mt][i] = 0;
      const std::uint32_t wa[4] = {w0[u].x, w0[u].y, w0[u].z, w0[u].w};
      const std::uint32_t wb[4] = {w1[u].x, w1[u].y, w1[u].z, w1[u].w};
      if constexpr (kNativeS4) {
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          const std::uint32_t a[4] = {wa[2 * s], wb[2 * s], wa[2 * s + 1], wb[2 * s + 1]};
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) ptx::mma_m16n8k64_s4(c[mt], a, x[u][mt][2 * s], x[u][mt][2 * s + 1]);
        }
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const std::uint32_t a[4] = {ptx::nibbles_lo_x16(wa[j]), ptx::nibbles_lo_x16(wb[j]), ptx::nibbles_hi_x16(wa[j]),
                                      ptx::nibbles_hi_x16(wb[j])};
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
            ptx::mma_m16n8k32_s8(c[mt], a, ptx::nibbles_lo_x16(x[u][mt][j]), ptx::nibbles_hi_x16(x[u][mt][j]));
        }
      }
      // Group rescale: t = float(D) * sa (one rounding, D = c or c/256), acc = fma(t, sw, acc).
      const float sw0 = sw[u][0], sw1 = sw[u][1];
      constexpr float kUnpackScale = kNativeS4 ? 1.0f : 1.0f / 256.0f;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float sa = fp16_bits_to_float(sab[u][mt][e]) * kUnpackScale;
          const float nb = -ptx::kMagicF * sa;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int i = 2 * h + e;
            const float tv = __fmaf_rn(ptx::magic_i2f_biased(c[mt][i]), sa, nb);
            acc[mt][i] = __fmaf_rn(tv, h ? sw1 : sw0, acc[mt][i]);
          }
        }
    }
  }

  // INT8 outlier chunks, round-robin over warps after the groups; int32 sums, added across warps exactly.
  int outl[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) outl[mt][i] = 0;
  for (int ch = (warp - G % kWarps + kWarps) % kWarps; ch < p.chunks; ch += kWarps) {
    const std::int8_t* wo =
        p.w_outliers + (((std::size_t)tile * p.chunks + ch) * kW4A4TileRows + slab + r) * kW4A4OutlierChunk;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      // Rows r and r + 8 share the swizzle (row % 8 == r).
      const int u0 = ((2 * j) ^ r) << 4, u1 = ((2 * j + 1) ^ r) << 4;
      const std::uint32_t a[4] = {ptx::ldg_stream_u32(wo + u0 + 4 * t), ptx::ldg_stream_u32(wo + 8 * 128 + u0 + 4 * t),
                                  ptx::ldg_stream_u32(wo + u1 + 4 * t), ptx::ldg_stream_u32(wo + 8 * 128 + u1 + 4 * t)};
      const int col = ch * kW4A4OutlierChunk + 32 * t + 8 * j;  // activation channels col..col+7
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint2 b = make_uint2(0u, 0u);
        if (col < p.n_outliers)
          b = __ldg(reinterpret_cast<const uint2*>(p.a_outliers + (std::size_t)tok_b[mt] * p.n_outliers + col));
        ptx::mma_m16n8k32_s8(outl[mt], a, b.x, b.y);
      }
    }
  }
  reduce_and_store<OutT, MT>(p, acc, outl, n_base, m_base);
}

// fp16 pair (nibble e, nibble e + 4) of a word of 8 signed nibbles, exact: (u ^ 8) + 1024 - 1032.
__device__ __forceinline__ std::uint32_t dequant_pair_f16(std::uint32_t w_flipped, int e) {
  const std::uint32_t bits = ((w_flipped >> (4 * e)) & 0x000F000Fu) | 0x64006400u;
  const __half2 v = __hsub2(*reinterpret_cast<const __half2*>(&bits), __halves2half2(__ushort_as_half(0x6408),
                                                                                     __ushort_as_half(0x6408)));
  return *reinterpret_cast<const std::uint32_t*>(&v);
}

template <int MT>
__global__ void __launch_bounds__(kWarps * 32, MT <= 2 ? 2 : 1) gemm_w4a16_mma(const MmaParams p) {
  constexpr int U = MT <= 2 ? 4 : 2;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4, r = lane / 4;
  const int n_base = blockIdx.x * 16, tile = n_base / kW4A4TileRows, slab = n_base % kW4A4TileRows;
  const int m_base = blockIdx.y * 8 * MT;
  const int G = p.groups;
  const std::size_t x_row = (std::size_t)G * kW4A4Group;
  int tok_b[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) tok_b[mt] = min(m_base + 8 * mt + r, p.m - 1);
  float acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[mt][i] = 0.0f;

  for (int g0 = warp * U; g0 < G; g0 += kWarps * U) {
    uint4 w0[U], w1[U];
    float sw[U][2];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int g = g0 + u;
      if (g < G) {
        const std::uint8_t* wp =
            p.w_packed + ((((std::size_t)tile * G + g) * 4 + t) * kW4A4TileRows + slab + r) * 16;
        w0[u] = ptx::ldg_stream_v4(wp);
        w1[u] = ptx::ldg_stream_v4(wp + 8 * 16);
        sw[u][0] = __ldg(p.w_scales + ((std::size_t)tile * (G + 1) + g) * kW4A4TileRows +
                         layout::scale_position_of_channel(slab + r));
        sw[u][1] = __ldg(p.w_scales + ((std::size_t)tile * (G + 1) + g) * kW4A4TileRows +
                         layout::scale_position_of_channel(slab + r + 8));
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int g = g0 + u;
      if (g >= G) break;
      float c[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i) c[mt][i] = 0.0f;
      const std::uint32_t wa[4] = {w0[u].x ^ 0x88888888u, w0[u].y ^ 0x88888888u, w0[u].z ^ 0x88888888u,
                                   w0[u].w ^ 0x88888888u};
      const std::uint32_t wb[4] = {w1[u].x ^ 0x88888888u, w1[u].y ^ 0x88888888u, w1[u].z ^ 0x88888888u,
                                   w1[u].w ^ 0x88888888u};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        // Activations 32j + 8t + 0..7 of each token: (x0,x1) (x2,x3) (x4,x5) (x6,x7).
        uint4 xv[MT];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
          xv[mt] = __ldg(reinterpret_cast<const uint4*>(p.x + tok_b[mt] * x_row + g * kW4A4Group + 32 * j + 8 * t));
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const std::uint32_t a[4] = {dequant_pair_f16(wa[j], 2 * h), dequant_pair_f16(wb[j], 2 * h),
                                      dequant_pair_f16(wa[j], 2 * h + 1), dequant_pair_f16(wb[j], 2 * h + 1)};
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const std::uint32_t lo = h ? xv[mt].y : xv[mt].x, hi = h ? xv[mt].w : xv[mt].z;
            ptx::mma_m16n8k16_f16(c[mt], a, __byte_perm(lo, hi, 0x5410), __byte_perm(lo, hi, 0x7632));
          }
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[mt][i] = __fmaf_rn(c[mt][i], sw[u][i >> 1], acc[mt][i]);
    }
  }
  int no_outliers[MT][4] = {};
  reduce_and_store<__half, MT>(p, acc, no_outliers, n_base, m_base);
}

// At most 4 token tiles per block: the reduction buffers (2 x kWarps x MT x 512 bytes) must stay within the
// 48 KB of static shared memory that sm_80/86/89 allow (MT = 8 needed 64 KB).
int tokens_per_block_tiles(int m) { return m <= 8 ? 1 : m <= 16 ? 2 : 4; }

MmaParams make_params(const W4A4PackedWeights& w, int m, void* out, const void* residual) {
  MmaParams p{};
  p.w_packed = w.packed;
  p.w_outliers = w.outliers;
  p.w_scales = w.scales;
  p.out = out;
  p.residual = residual;
  p.m = m;
  p.n = w.n;
  p.groups = w.k_normal / kW4A4Group;
  p.chunks = layout::ceil_div(w.n_outliers, kW4A4OutlierChunk);
  p.n_outliers = w.n_outliers;
  return p;
}

template <typename OutT, bool kNativeS4>
void launch_w4a4_typed(const MmaParams& p, cudaStream_t stream) {
  const int mt = tokens_per_block_tiles(p.m);
  const LaunchShape shape{dim3(layout::ceil_div(p.n, 16), layout::ceil_div(p.m, 8 * mt)), dim3(kWarps * 32)};
  switch (mt) {
    case 1: launch_kernel(gemm_w4a4o8_mma<OutT, 1, kNativeS4>, shape, /*pdl=*/true, stream, p); break;
    case 2: launch_kernel(gemm_w4a4o8_mma<OutT, 2, kNativeS4>, shape, /*pdl=*/true, stream, p); break;
    default: launch_kernel(gemm_w4a4o8_mma<OutT, 4, kNativeS4>, shape, /*pdl=*/true, stream, p); break;
  }
}

}  // namespace

namespace detail {

void launch_w4a4_mma(const GemmW4A4Args& args, bool native_s4, cudaStream_t stream) {
  MmaParams p = make_params(args.w, args.a.m, args.out, args.residual);
  p.a_packed = args.a.packed;
  p.a_scales = args.a.scales;
  p.a_outliers = args.a.outliers;
  p.a_outlier_scales = args.a.outlier_scales;
  const bool bf16 = args.out_type == GemmOutType::kBF16;
  if (native_s4)
    bf16 ? launch_w4a4_typed<__nv_bfloat16, true>(p, stream) : launch_w4a4_typed<__half, true>(p, stream);
  else
    bf16 ? launch_w4a4_typed<__nv_bfloat16, false>(p, stream) : launch_w4a4_typed<__half, false>(p, stream);
}

void launch_w4a16_mma(const GemmW4A16Args& args, cudaStream_t stream) {
  MmaParams p = make_params(args.w, args.m, args.out, nullptr);
  p.x = args.x;
  const int mt = tokens_per_block_tiles(p.m);
  const dim3 grid(layout::ceil_div(p.n, 16), layout::ceil_div(p.m, 8 * mt));
  switch (mt) {
    case 1: gemm_w4a16_mma<1><<<grid, kWarps * 32, 0, stream>>>(p); break;
    case 2: gemm_w4a16_mma<2><<<grid, kWarps * 32, 0, stream>>>(p); break;
    default: gemm_w4a16_mma<4><<<grid, kWarps * 32, 0, stream>>>(p); break;
  }
  ATOM_CUDA_CHECK_LAUNCH();
}

}  // namespace detail
}  // namespace atom::cuda
