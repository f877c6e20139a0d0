// gemm_w4a4o8_swapab_sm90: Atom's W4A4 + INT8-outlier GEMM at serving batch sizes (16 < M <= 512) on Hopper.
//
// At these sizes a 128-token wgmma tile wastes most of its rows and leaves few CTAs; so the operands are
// swapped: out^T[channels, tokens] = W x A^T. The weights are wgmma's M = 64 operand, read from registers: each
// consumer thread loads its fragment's packed words from shared memory and widens the nibbles to int8 x16 with
// one or two logic ops per 4 codes (no shared-memory round trip for unpacked weights). The tokens are the
// N = 16..128 operand: int8 codes that the quantizer wrote in the tensor-core order (gemm_w4a4.h,
// W4A4ActivationsS8), loaded by TMA with the 128-byte swizzle the descriptor reads; no unpacking at all.
//
// Per 128-wide group: 4 wgmma k32 steps give 16 x the group's int32 dot product; t = fma(magic(D), sa/16,
// -magic*sa/16) = D*sa rounded once, acc = fma(t, sw, acc); the INT8 outlier chunks (int32 sum over all chunks)
// come last: the same operations in the same order as atom::quant::atom_linear_reference, so the output is
// bit-identical to it. Two int32 accumulator sets alternate: while the tensor cores run group g into one,
// the threads rescale group g - 1 from the other (each stage ends with wait_group 0, and no register written
// in a stage is touched by other instructions during it, so ptxas keeps the wgmmas asynchronous).
//
// Block: one producer warpgroup (warp 0 issues the TMA/bulk copies, warp 1 stages the activation scales) and
// WGC x WGT consumer warpgroups of 64 output channels x BT/WGT tokens each; tile BT tokens x 64*WGC channels; kStages-deep ring with
// two mbarriers per stage (full: copies landed and scales written; empty: consumers done). Epilogue: the
// fp32 tile goes through shared memory so that the transposed output (and residual) moves in 16-byte rows.
//
// Split-K (p.splits > 1): a CTA's walk over K is latency-bound (a fixed time per stage whatever the tile
// holds), and at serving sizes there are fewer output tiles than SMs; so the K units are dealt to the
// p.splits CTAs of a thread-block cluster, and after a cluster barrier each CTA sums a 1/splits share of the
// tile from all the CTAs' shared memory (ld.shared::cluster), in rank order, and stores it.
#include <cuda.h>

#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/gemm/gemm_out.cuh"
#include "backend/cuda/gemm/gemm_ptx.cuh"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "backend/cuda/gemm/gemm_w4a4_layout.h"
#include "backend/cuda/gemm/sm90/tensor_map.h"

namespace atom::cuda {
namespace {

struct SwapAbParams {
  const std::uint16_t* a_scales;          // fp16 group-major [groups][m]
  const std::uint16_t* a_outlier_scales;  // fp16 [m]
  const std::uint8_t* w_packed;
  const std::int8_t* w_outliers;
  const float* w_scales;
  const float* w8_scales;  // kW8: fp32 [n] per-channel scales of the plain int8 weights
  void* out;
  const void* residual;
  int m, n, groups, chunks, m_tiles;
  int splits;  // CTAs (one cluster) sharing an output tile, each over a contiguous range of K units
};

// Split-K: the K units (each 128-wide group, then all outlier chunks as one) are dealt to `splits` CTAs in
// contiguous ranges; CTA `rank` covers units [u0, u1) and stages [it0, it1). The outlier unit stays whole,
// except for W8A8 (by_chunks), whose one unit is split by chunks: its int32 partial sums add exactly.
struct SplitRange {
  int u0, u1, it0, it1;
};
__host__ __device__ inline SplitRange split_range(int groups, int chunks, int splits, int rank, bool by_chunks) {
  SplitRange r;
  if (by_chunks) {
    r.u0 = 0;
    r.u1 = 1;
    r.it0 = rank * chunks / splits;
    r.it1 = (rank + 1) * chunks / splits;
    return r;
  }
  const int units = groups + (chunks > 0 ? 1 : 0);
  r.u0 = rank * units / splits;
  r.u1 = (rank + 1) * units / splits;
  r.it0 = r.u0;
  r.it1 = r.u1 > groups ? groups + chunks : r.u1;
  return r;
}

// BT tokens x 64*WGC channels per CTA; consumer warpgroup w covers channels 64*(w % WGC).. and tokens
// (BT/WGT)*(w / WGC).. (wgmma N = BT/WGT); the WGT token warpgroups of a channel slice share its weight stages.
template <int BT, int WGC, int WGT>
struct SwapAbTile {
  static constexpr int kConsumers = WGC * WGT;
  static constexpr int kTokensPerWg = BT / WGT;
  static constexpr int kChannels = 64 * WGC;
  static constexpr int kX = BT * 128;                    // int8 activation codes of one 128-wide block
  static constexpr int kW = kChannels * 128;             // packed INT4 group (64 B/row) or INT8 outlier chunk
  static constexpr int kWScale = kChannels * 4;          // fp32 weight scales of the block
  static constexpr int kXScale = BT * 8;                 // (scale, bias) per token
  static constexpr int kStage = kX + kW + kWScale + kXScale;
  static constexpr int kStages = (200 * 1024) / kStage < 8 ? (200 * 1024) / kStage : 8;
  static constexpr int kEpilogueLd = kChannels + 4;      // fp32 row stride of the epilogue tile (bank spread)
  static constexpr int kSmemBytes = 1024 + kStages * kStage + 2 * kStages * 8;
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // One consumer warpgroup of up to 32 tokens needs < 200 registers a thread, so two such CTAs share an SM:
  // two independent walks over K per SM (each CTA's walk is latency-bound). The others hold an SM alone.
  static constexpr int kCtasPerSm = (kConsumers == 1 && BT <= 32) ? 2 : 1;
  // setmaxnreg split of a CTA's register share (multiples of 8): the producer warps need few, the consumers
  // hold accumulators and fragments. 0: no redistribution (one consumer warpgroup alone on an SM: 255 each).
  // Two consumer warpgroups get 232 (producer 40: it spills a few scale registers to L1), the split that was
  // bit-exact on an H100 for 64-token warpgroups; with 224 (producer 56) the t64 x c128 tile gave wrong sums
  // although ptxas reported no spills (docs/notes/gemm.md).
  static constexpr int kProducerRegs = kConsumers > 1 ? 40 : kCtasPerSm > 1 ? 56 : 0;
  static constexpr int kConsumerRegs = kConsumers > 1 ? 232 : kCtasPerSm > 1 ? 200 : 0;
  static_assert(kProducerRegs * 128 + kConsumerRegs * 128 * kConsumers <= 65536 / kCtasPerSm, "register file");
  static_assert(kProducerRegs == 0 || kConsumerRegs >= 192, "consumer warpgroups need their accumulators in registers");
  static_assert(BT * kEpilogueLd * 4 <= kStages * (kX + kW), "epilogue tile must fit in the ring");
  static_assert(kX % 1024 == 0 && kW % 1024 == 0, "TMA 128-byte swizzle needs 1024-byte aligned boxes");
};

#ifdef ATOM_SM90A_DEVICE
template <int N>
__device__ __forceinline__ void wgmma_tokens_k32(int (&d)[N / 2], const std::uint32_t (&a)[4], std::uint64_t desc,
                                                 int accumulate) {
  if constexpr (N == 128)
    ptx::wgmma_m64n128k32_s8_rs(d, a, desc, accumulate);
  else if constexpr (N == 64)
    ptx::wgmma_m64n64k32_s8_rs(d, a, desc, accumulate);
  else if constexpr (N == 32)
    ptx::wgmma_m64n32k32_s8_rs(d, a, desc, accumulate);
  else
    ptx::wgmma_m64n16k32_s8_rs(d, a, desc, accumulate);
}

template <typename OutT>
__device__ __forceinline__ uint4 pack8(const float (&y)[8]);
template <>
__device__ __forceinline__ uint4 pack8<__half>(const float (&y)[8]) {
  uint4 v;
  __half2 h[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(y[2 * i], y[2 * i + 1]);
  memcpy(&v, h, 16);
  return v;
}
template <>
__device__ __forceinline__ uint4 pack8<__nv_bfloat16>(const float (&y)[8]) {
  uint4 v;
  __nv_bfloat162 h[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(y[2 * i], y[2 * i + 1]);
  memcpy(&v, h, 16);
  return v;
}
template <typename OutT>
__device__ __forceinline__ void unpack8(uint4 v, float (&y)[8]) {
  OutT h[8];
  memcpy(h, &v, 16);
#pragma unroll
  for (int i = 0; i < 8; ++i) y[i] = GemmOut<OutT>::load1(&h[i]);
}
#endif

// kW8: W8A8 on the same pipeline: plain row-major int8 weights [n, k] (the cuBLASLt layout) read by TMA with
// the same swizzle, plain int8 activations [m, k], every 128-wide block an "outlier chunk" in natural order.
template <typename OutT, int BT, int WGC, int WGT, bool kW8>
__global__ void __launch_bounds__(SwapAbTile<BT, WGC, WGT>::kThreads, SwapAbTile<BT, WGC, WGT>::kCtasPerSm)
    gemm_w4a4o8_swapab_sm90(const __grid_constant__ CUtensorMap tmap_x, const __grid_constant__ CUtensorMap tmap_w8,
                            const SwapAbParams p) {
#ifdef ATOM_SM90A_DEVICE
  using T = SwapAbTile<BT, WGC, WGT>;
  constexpr int WGS = T::kConsumers;
  constexpr int NT = T::kTokensPerWg;
  constexpr int S = T::kStages;
  constexpr int C = T::kChannels;
  extern __shared__ std::uint8_t smem_raw[];
  const std::uint32_t raw_addr = ptx::smem_u32(smem_raw);
  std::uint8_t* smem = smem_raw + (((raw_addr + 1023u) & ~1023u) - raw_addr);
  std::uint8_t* x_buf = smem;                  // [S][kX], 1024-aligned (TMA swizzle atoms)
  std::uint8_t* w_buf = x_buf + S * T::kX;     // [S][kW]
  float* w_scale = reinterpret_cast<float*>(w_buf + S * T::kW);   // [S][C]
  float2* x_scale = reinterpret_cast<float2*>(w_scale + S * C);   // [S][BT]
  std::uint64_t* full = reinterpret_cast<std::uint64_t*>(x_scale + S * BT);
  std::uint64_t* empty = full + S;

  const int tid = threadIdx.x;
  const int wg = tid / 128, ltid = tid % 128;
  // One cluster of p.splits CTAs per output tile (rank = K range); without split-K a cluster of one.
  const int rank = blockIdx.x % p.splits, tile_index = blockIdx.x / p.splits;
  const int m_tile = tile_index % p.m_tiles, n_tile = tile_index / p.m_tiles;
  const int m0 = m_tile * BT, n0 = n_tile * C;
  const int G = p.groups;
  const SplitRange range = split_range(G, p.chunks, p.splits, rank, kW8);
  const int it0 = range.it0, it1 = range.it1;
  const int w_tile = n0 / kW4A4TileRows, w_row0 = n0 % kW4A4TileRows;  // prepacked tile, first row used

  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      ptx::mbar_init(&full[s], 1 + 32);  // warp 0's copies (+ tx bytes), warp 1's scales
      ptx::mbar_init(&empty[s], 128 * WGS);
    }
    ptx::mbar_fence_init();
  }
  __syncthreads();

  if (wg == 0) {
    // ------------------------------------------------------------------ producer warpgroup
    if constexpr (T::kProducerRegs > 0) ptx::setmaxnreg_dec<T::kProducerRegs>();
    if (ltid == 0) {
      // Warp 0, lane 0: the copies of each stage (activation codes by TMA, weights and weight scales by bulk copy).
      for (int it = it0; it < it1; ++it) {
        const int rel = it - it0;  // ring position counts from the CTA's first stage
        const int s = rel % S;
        if (rel >= S) ptx::mbar_wait(&empty[s], ((rel / S) - 1) & 1);
        const bool outlier = it >= G;
        std::uint8_t* w_dst = w_buf + s * T::kW;
        if constexpr (kW8) {
          const int valid = min(C, p.n - n0);  // scales past n are not read: copy only those that exist
          ptx::mbar_arrive_expect_tx(&full[s], unsigned(T::kX) + unsigned(C * 128) + unsigned(valid * 4));
          ptx::tma_load_2d(x_buf + s * T::kX, &tmap_x, it * 128, m0, &full[s]);
          ptx::tma_load_2d(w_dst, &tmap_w8, it * 128, n0, &full[s]);
          ptx::bulk_copy_g2s(w_scale + s * C, p.w8_scales + n0, valid * 4, &full[s]);
        } else {
          const unsigned w_bytes = outlier ? unsigned(C * 128) : unsigned(C * 64);
          ptx::mbar_arrive_expect_tx(&full[s], unsigned(T::kX) + w_bytes + unsigned(T::kWScale));
          ptx::tma_load_2d(x_buf + s * T::kX, &tmap_x, it * 128, m0, &full[s]);
          if (!outlier) {
            // Piece j (canonical words {j, 4+j, 8+j, 12+j}) of C rows: [4][C][16 bytes] in the stage.
            const std::uint8_t* src = p.w_packed + ((std::size_t)w_tile * G + it) * 4 * kW4A4TileRows * 16;
            if constexpr (C == kW4A4TileRows) {
              ptx::bulk_copy_g2s(w_dst, src, C * 64, &full[s]);
            } else {
#pragma unroll
              for (int j = 0; j < 4; ++j)
                ptx::bulk_copy_g2s(w_dst + j * C * 16, src + (j * kW4A4TileRows + w_row0) * 16, C * 16, &full[s]);
            }
          } else {
            const int c = it - G;
            const std::int8_t* src =
                p.w_outliers + (((std::size_t)w_tile * p.chunks + c) * kW4A4TileRows + w_row0) * kW4A4OutlierChunk;
            ptx::bulk_copy_g2s(w_dst, src, C * 128, &full[s]);
          }
          const int entry = outlier ? G : it;
          ptx::bulk_copy_g2s(w_scale + s * C,
                             p.w_scales + ((std::size_t)w_tile * (G + 1) + entry) * kW4A4TileRows + w_row0,
                             T::kWScale, &full[s]);
        }
      }
    } else if (ltid >= 32 && ltid < 64) {
      // Warp 1: the activation scales, through registers: each lane loads its tokens' scales kScaleAhead stages
      // ahead (loads in line would make this warp, not the ring, set the pace: one stage per L2 round trip), and
      // its own warp keeps them from holding up the copies of warp 0.
      const int lane = ltid - 32;
      constexpr int kTokPerLane = (BT + 31) / 32;
      constexpr int kScaleAhead = BT >= 128 ? 4 : 8;
      float ahead[kScaleAhead][kTokPerLane];
      auto fetch_scales = [&](int it, float (&v)[kTokPerLane]) {
#pragma unroll
        for (int t = 0; t < kTokPerLane; ++t) {
          const int tok = lane + 32 * t, m = m0 + tok;
          v[t] = 0.0f;
          if (it < it1 && tok < BT && m < p.m)
            v[t] = fp16_bits_to_float(it >= G ? p.a_outlier_scales[m] : p.a_scales[(std::size_t)it * p.m + m]);
        }
      };
#pragma unroll
      for (int d = 0; d < kScaleAhead; ++d) fetch_scales(it0 + d, ahead[d]);
      for (int base = it0; base < it1; base += kScaleAhead) {
#pragma unroll
        for (int d = 0; d < kScaleAhead; ++d) {
          const int it = base + d, rel = it - it0;
          if (it >= it1) break;
          const int s = rel % S;
          if (rel >= S) ptx::mbar_wait(&empty[s], ((rel / S) - 1) & 1);
          // As the consumers use them: groups (sa/16, -magic*sa/16), since the int32 sums carry the weights'
          // x16; outliers (sa, 0). Rows past m hold 0. Released by this lane's arrival on the full barrier.
#pragma unroll
          for (int t = 0; t < kTokPerLane; ++t) {
            const int tok = lane + 32 * t;
            if (tok >= BT) break;
            float2 v = make_float2(ahead[d][t], 0.0f);
            if (it < G) {
              v.x *= 1.0f / 16.0f;
              v.y = -ptx::kMagicF * v.x;
            }
            x_scale[s * BT + tok] = v;
          }
          ptx::mbar_arrive(&full[s]);
          fetch_scales(it + kScaleAhead, ahead[d]);
        }
      }
    }
    if (p.splits > 1) {  // the consumers' two cluster barriers count every thread of the cluster
      ptx::cluster_sync();
      ptx::cluster_sync();
    }
  } else {
    // ------------------------------------------------------------------ consumer warpgroups
    if constexpr (T::kProducerRegs > 0) ptx::setmaxnreg_inc<T::kConsumerRegs>();
    constexpr int NR = NT / 2;  // int32 / fp32 registers per thread for a 64 x NT tile
    const int consumer = wg - 1;
    const int tok0 = (consumer / WGC) * NT;  // this warpgroup's first token in the tile
    const int warp = ltid / 32, lane = ltid % 32, q = lane % 4;
    const int lr = (consumer % WGC) * 64 + warp * 16 + lane / 4;  // local channel rows lr and lr + 8
    const int r7 = lr & 7;
    // Weight-scale slots of the two rows (the prepacked tile permutes channels inside its entry).
    const int sw_pos0 = kW8 ? lr : layout::scale_position_of_channel(w_row0 + lr) - w_row0;
    const int sw_pos1 = kW8 ? lr + 8 : layout::scale_position_of_channel(w_row0 + lr + 8) - w_row0;
    // This CTA's K range, counted from its first stage: Gl groups, then (if ours) all outlier chunks as one unit.
    const int Gl = min(range.u1, G) - range.u0, units = range.u1 - range.u0;
    const int chunks_l = range.it1 - max(range.it0, G);  // outlier chunks of this CTA (if it has the unit)
    // W8A8 split by chunks: the partial tiles carry int32 sums (scaled once after the cluster adds them).
    const bool int_partials = kW8 && p.splits > 1;

    float acc[NR];
    int d0[NR], d1[NR];
#pragma unroll
    for (int i = 0; i < NR; ++i) {
      acc[i] = 0.0f;
      d0[i] = d1[i] = 0;
    }
    std::uint32_t a_cur[4][4], a_next[4][4];

    // Waits for stage `it` and loads this thread's weight fragments of it (rows lr, lr + 8; k-step j).
    auto load_frags = [&](int it, std::uint32_t (&a)[4][4]) {
      const int s = it % S;
      ptx::mbar_wait(&full[s], (it / S) & 1);
      const std::uint8_t* w = w_buf + s * T::kW;
      if (it < Gl) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const std::uint32_t w0 = *reinterpret_cast<const std::uint32_t*>(w + (j * C + lr) * 16 + 4 * q);
          const std::uint32_t w1 = *reinterpret_cast<const std::uint32_t*>(w + (j * C + lr + 8) * 16 + 4 * q);
          a[j][0] = ptx::nibbles_lo_x16(w0);
          a[j][1] = ptx::nibbles_lo_x16(w1);
          a[j][2] = ptx::nibbles_hi_x16(w0);
          a[j][3] = ptx::nibbles_hi_x16(w1);
        }
      } else {
        // Outlier rows are stored with the 128-byte swizzle (16-byte unit u of row r at u ^ (r % 8)).
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int lo = ((2 * j) ^ r7) << 4, hi = ((2 * j + 1) ^ r7) << 4;
          a[j][0] = *reinterpret_cast<const std::uint32_t*>(w + lr * 128 + lo + 4 * q);
          a[j][1] = *reinterpret_cast<const std::uint32_t*>(w + (lr + 8) * 128 + lo + 4 * q);
          a[j][2] = *reinterpret_cast<const std::uint32_t*>(w + lr * 128 + hi + 4 * q);
          a[j][3] = *reinterpret_cast<const std::uint32_t*>(w + (lr + 8) * 128 + hi + 4 * q);
        }
      }
    };
    auto issue = [&](int it, const std::uint32_t (&a)[4][4], int (&d)[NR], int accumulate) {
      ptx::wgmma_fence();
      const std::uint64_t desc = ptx::smem_desc_k128_sw128(ptx::smem_u32(x_buf + (it % S) * T::kX + tok0 * 128));
#pragma unroll
      for (int j = 0; j < 4; ++j) wgmma_tokens_k32<NT>(d, a[j], desc + 2 * j, (j > 0) ? 1 : accumulate);
      ptx::wgmma_commit();
    };
    auto pin = [&](int (&d)[NR]) {
#pragma unroll
      for (int i = 0; i < NR; ++i) ptx::fence_operand(d[i]);
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) ptx::fence_operand(a_cur[j][i]);
    };
    // acc (+)= unit u's int32 sums, scaled; then releases the unit's last stage.
    // D fragment: d[4i + 2v + e] is channel row lr + 8v, token 8i + 2q + e.
    auto rescale = [&](int u, int (&d)[NR]) {
      const bool outlier = u >= Gl;
      const int s = (outlier ? Gl + chunks_l - 1 : u) % S;
      const float sw0 = w_scale[s * C + sw_pos0], sw1 = w_scale[s * C + sw_pos1];
      const float2* xs = x_scale + s * BT + tok0;
#pragma unroll
      for (int i = 0; i < NT / 8; ++i) {
        const float4 sc = *reinterpret_cast<const float4*>(xs + 8 * i + 2 * q);  // tokens 8i+2q, 8i+2q+1
        const float sa[2] = {sc.x, sc.z}, bias[2] = {sc.y, sc.w};
#pragma unroll
        for (int v = 0; v < 2; ++v)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int idx = 4 * i + 2 * v + e;
            if (int_partials) {
              acc[idx] = __int_as_float(d[idx]);
              continue;
            }
            const float t = outlier ? __fmul_rn(__int2float_rn(d[idx]), sa[e])
                                    : __fmaf_rn(ptx::magic_i2f_biased(d[idx]), sa[e], bias[e]);
            acc[idx] = __fmaf_rn(t, v ? sw1 : sw0, acc[idx]);
          }
      }
      ptx::mbar_arrive(&empty[s]);
    };
    // One stage: issue unit u into d_cur, rescale unit u - 1 from d_prev meanwhile, fetch unit u + 1's
    // fragments, then wait for the tensor cores.
    auto step = [&](int u, int (&d_cur)[NR], int (&d_prev)[NR]) {
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) a_cur[j][i] = a_next[j][i];
      if (u < Gl) {
        issue(u, a_cur, d_cur, 0);
      } else {
        // Outlier chunks accumulate into one int32 sum; chunks after the first (n_outliers > 128) wait in turn.
        issue(Gl, a_cur, d_cur, 0);
        for (int c = 1; c < chunks_l; ++c) {
          ptx::wgmma_wait<0>();
          pin(d_cur);
          ptx::mbar_arrive(&empty[(Gl + c - 1) % S]);
          load_frags(Gl + c, a_cur);
          issue(Gl + c, a_cur, d_cur, 1);
        }
      }
      if (u > 0) rescale(u - 1, d_prev);
      if (u + 1 < units) load_frags(u + 1, a_next);
      ptx::wgmma_wait<0>();
      pin(d_cur);
    };

    load_frags(0, a_next);
#pragma unroll
    for (int i = 0; i < NR; ++i) {  // materialize the accumulators before the first stage
      ptx::fence_operand(d0[i]);
      ptx::fence_operand(d1[i]);
    }
    for (int u = 0; u < units; u += 2) {
      step(u, d0, d1);
      if (u + 1 < units) step(u + 1, d1, d0);
    }
    if (units & 1)
      rescale(units - 1, d0);
    else
      rescale(units - 1, d1);

    // ------------------------------------------------------------------ epilogue
    // Every stage has been consumed by every consumer once all consumers pass this barrier (no copy is in
    // flight: the producer issues exactly this CTA's stages), so the ring holds the fp32 tile [BT][C].
    ptx::named_barrier_sync(1, 128 * WGS);
    float* tile = reinterpret_cast<float*>(smem);
    constexpr int LD = T::kEpilogueLd;
#pragma unroll
    for (int i = 0; i < NT / 8; ++i)
#pragma unroll
      for (int v = 0; v < 2; ++v)
#pragma unroll
        for (int e = 0; e < 2; ++e) tile[(tok0 + 8 * i + 2 * q + e) * LD + lr + 8 * v] = acc[4 * i + 2 * v + e];
    // Split-K: the cluster's partial tiles are summed in rank order (deterministic), each CTA storing a
    // 1/splits share of the tile; a cluster of one reads its own tile (the bit-exact path).
    if (p.splits > 1)
      ptx::cluster_sync();
    else
      ptx::named_barrier_sync(1, 128 * WGS);
    const int rows = min(BT, p.m - m0), cols = min(C, p.n - n0);  // p.n is a multiple of 8
    const int ctid = tid - 128;
    const std::uint32_t tile_addr = ptx::smem_u32(tile);
    for (int idx = int(blockIdx.x % p.splits) * 128 * WGS + ctid; idx < BT * (C / 8); idx += p.splits * 128 * WGS) {
      const int tok = idx / (C / 8), c8 = (idx % (C / 8)) * 8;
      if (tok >= rows || c8 >= cols) continue;
      // fp32 partial tiles are added; W8A8's int32 partials (int_partials) too, then scaled once.
      float y[8];
      int isum[8];
      for (int r = 0; r < p.splits; ++r) {
        const std::uint32_t at = ptx::map_cluster_rank(tile_addr + unsigned(tok * LD + c8) * 4u, r);
        const float4 lo = ptx::ld_cluster_f4(at), hi = ptx::ld_cluster_f4(at + 16);
        const float part[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if (int_partials)
            isum[i] = (r == 0 ? 0 : isum[i]) + __float_as_int(part[i]);
          else
            y[i] = r == 0 ? part[i] : __fadd_rn(y[i], part[i]);
        }
      }
      if (int_partials) {  // the reference's operations on the whole int32 sum: (d * sa) * sw
        const float sa = fp16_bits_to_float(p.a_outlier_scales[m0 + tok]);
#pragma unroll
        for (int i = 0; i < 8; ++i)
          y[i] = __fmaf_rn(__fmul_rn(__int2float_rn(isum[i]), sa), p.w8_scales[n0 + c8 + i], 0.0f);
      }
      const std::size_t off = (std::size_t)(m0 + tok) * p.n + n0 + c8;
      if (p.residual) {
        float r[8];
        unpack8<OutT>(*reinterpret_cast<const uint4*>(static_cast<const OutT*>(p.residual) + off), r);
#pragma unroll
        for (int i = 0; i < 8; ++i) y[i] = __fadd_rn(y[i], r[i]);
      }
      *reinterpret_cast<uint4*>(static_cast<OutT*>(p.out) + off) = pack8<OutT>(y);
    }
    if (p.splits > 1) ptx::cluster_sync();  // peers may still read this CTA's tile
  }
#endif  // ATOM_SM90A_DEVICE
}

// The row-major int8 matrices a launch reads by TMA: the activation rows, and for W8A8 the weight rows (both
// `row_bytes` wide).
struct SwapAbOperands {
  const void* x = nullptr;
  const void* w8 = nullptr;
  int row_bytes = 0;
};

template <typename OutT, int BT, int WGC, int WGT, bool kW8>
void launch_typed(SwapAbParams p, const SwapAbOperands& ops, cudaStream_t stream) {
  using T = SwapAbTile<BT, WGC, WGT>;
  const auto kernel = gemm_w4a4o8_swapab_sm90<OutT, BT, WGC, WGT, kW8>;
  static bool configured = [&] {
    ATOM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes));
    return true;
  }();
  (void)configured;
  p.m_tiles = layout::ceil_div(p.m, BT);
  const CUtensorMap tmap_x = detail::make_u8_tensor_map(ops.x, ops.row_bytes, p.m, 128, BT, /*swizzle_128b=*/true);
  CUtensorMap tmap_w8{};
  if constexpr (kW8)
    tmap_w8 = detail::make_u8_tensor_map(ops.w8, ops.row_bytes, p.n, 128, T::kChannels, /*swizzle_128b=*/true);
  const unsigned blocks = static_cast<unsigned>(p.m_tiles) * layout::ceil_div(p.n, T::kChannels);
  if (p.splits == 1) {
    kernel<<<blocks, T::kThreads, T::kSmemBytes, stream>>>(tmap_x, tmap_w8, p);
    ATOM_CUDA_CHECK_LAUNCH();
    return;
  }
  // Split-K: the CTAs of an output tile form one cluster (consecutive blocks), reduced through shared memory.
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(blocks * static_cast<unsigned>(p.splits));
  config.blockDim = dim3(T::kThreads);
  config.dynamicSmemBytes = T::kSmemBytes;
  config.stream = stream;
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = static_cast<unsigned>(p.splits);
  cluster.val.clusterDim.y = cluster.val.clusterDim.z = 1;
  config.attrs = &cluster;
  config.numAttrs = 1;
  ATOM_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, tmap_x, tmap_w8, p));
}

template <typename OutT, bool kW8>
void launch_tile(const SwapAbParams& p, const SwapAbOperands& ops, W4A4SwapAbTile tile, cudaStream_t stream) {
  switch (tile) {
    case W4A4SwapAbTile::kT16C64: launch_typed<OutT, 16, 1, 1, kW8>(p, ops, stream); return;
    case W4A4SwapAbTile::kT32C64: launch_typed<OutT, 32, 1, 1, kW8>(p, ops, stream); return;
    case W4A4SwapAbTile::kT32C128: launch_typed<OutT, 32, 2, 1, kW8>(p, ops, stream); return;
    case W4A4SwapAbTile::kT64C64: launch_typed<OutT, 64, 1, 1, kW8>(p, ops, stream); return;
    case W4A4SwapAbTile::kT64C128: launch_typed<OutT, 64, 2, 1, kW8>(p, ops, stream); return;
    case W4A4SwapAbTile::kT128C64: launch_typed<OutT, 128, 1, 2, kW8>(p, ops, stream); return;
    case W4A4SwapAbTile::kAuto: break;
  }
  throw_cuda_error(cudaErrorInvalidValue, "launch_w4a4_swapab_sm90: tile kAuto must be resolved", __FILE__, __LINE__);
}

template <int BT, int WGC, int WGT>
detail::W4A4SwapAbTileShape shape_of() {
  using T = SwapAbTile<BT, WGC, WGT>;
  return {BT, T::kChannels, T::kCtasPerSm};
}

template <bool kW8>
void launch_out_type(const SwapAbParams& p, const SwapAbOperands& ops, GemmOutType out_type, W4A4SwapAbTile tile,
                     cudaStream_t stream) {
  if (out_type == GemmOutType::kBF16)
    launch_tile<__nv_bfloat16, kW8>(p, ops, tile, stream);
  else
    launch_tile<__half, kW8>(p, ops, tile, stream);
}

// ---- canonical activations -> int8 rows in the tensor-core order (one thread per token and 128-wide block).
__global__ void convert_activations_s8_kernel(const W4A4Activations src, int k_normal, int n_outliers,
                                              const W4A4ActivationsS8 dst) {
  const int groups = k_normal / kW4A4Group, chunks = layout::ceil_div(n_outliers, kW4A4OutlierChunk);
  const int blocks = groups + chunks;
  const long item = (long)blockIdx.x * blockDim.x + threadIdx.x;
  if (item >= (long)src.m * blocks) return;
  const int m = static_cast<int>(item / blocks), blk = static_cast<int>(item % blocks);
  const int row_bytes = k_normal + chunks * kW4A4OutlierChunk;
  std::int8_t* out = dst.codes + (std::size_t)m * row_bytes + (std::size_t)blk * 128;
  alignas(16) std::int8_t v[128];
  if (blk < groups) {
    layout::s8_block_from_group(src.packed + (std::size_t)m * (k_normal / 2) + (std::size_t)blk * 64, v);
    dst.scales[(std::size_t)blk * src.m + m] = src.scales[(std::size_t)m * groups + blk];
  } else {
    const int c = blk - groups;
    layout::s8_block_from_outliers(src.outliers + (std::size_t)m * n_outliers + c * kW4A4OutlierChunk,
                                   min(kW4A4OutlierChunk, n_outliers - c * kW4A4OutlierChunk), v);
    if (c == 0) dst.outlier_scales[m] = src.outlier_scales[m];
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) reinterpret_cast<uint4*>(out)[i] = reinterpret_cast<const uint4*>(v)[i];
}

}  // namespace

namespace detail {

W4A4SwapAbTileShape w4a4_swapab_tile_shape(W4A4SwapAbTile tile) {
  switch (tile) {
    case W4A4SwapAbTile::kT16C64: return shape_of<16, 1, 1>();
    case W4A4SwapAbTile::kT32C64: return shape_of<32, 1, 1>();
    case W4A4SwapAbTile::kT32C128: return shape_of<32, 2, 1>();
    case W4A4SwapAbTile::kT64C64: return shape_of<64, 1, 1>();
    case W4A4SwapAbTile::kT64C128: return shape_of<64, 2, 1>();
    case W4A4SwapAbTile::kT128C64: return shape_of<128, 1, 2>();
    case W4A4SwapAbTile::kAuto: break;
  }
  throw_cuda_error(cudaErrorInvalidValue, "w4a4_swapab_tile_shape: tile kAuto has no shape", __FILE__, __LINE__);
}

void launch_w4a4_swapab_sm90(const GemmW4A4S8Args& args, W4A4SwapAbTile tile, int k_splits, cudaStream_t stream) {
  const W4A4PackedWeights& w = args.w;
  SwapAbParams p{};
  p.a_scales = args.a.scales;
  p.a_outlier_scales = args.a.outlier_scales;
  p.w_packed = w.packed;
  p.w_outliers = w.outliers;
  p.w_scales = w.scales;
  p.out = args.out;
  p.residual = args.residual;
  p.m = args.a.m;
  p.n = w.n;
  p.groups = w.k_normal / kW4A4Group;
  p.chunks = layout::ceil_div(w.n_outliers, kW4A4OutlierChunk);
  p.splits = k_splits;
  const SwapAbOperands ops{args.a.codes, nullptr, w4a4_s8_row_bytes(w.k_normal, w.n_outliers)};
  launch_out_type<false>(p, ops, args.out_type, tile, stream);
}

void launch_w8a8_swapab_sm90(const GemmW8A8Args& args, W4A4SwapAbTile tile, int k_splits, cudaStream_t stream) {
  SwapAbParams p{};  // every 128-wide block an "outlier chunk" (groups = 0)
  p.a_outlier_scales = args.x_scales;
  p.w8_scales = args.w_scales;
  p.out = args.out;
  p.residual = args.residual;
  p.m = args.m;
  p.n = args.n;
  p.chunks = layout::ceil_div(args.k, 128);
  p.splits = k_splits;
  launch_out_type<true>(p, SwapAbOperands{args.x, args.w, args.k}, args.out_type, tile, stream);
}

void launch_convert_w4a4_activations_s8(const W4A4Activations& src, int k_normal, int n_outliers,
                                        const W4A4ActivationsS8& dst, cudaStream_t stream) {
  const long items = (long)src.m * (k_normal / kW4A4Group + layout::ceil_div(n_outliers, kW4A4OutlierChunk));
  if (items == 0) return;
  const int threads = 128;
  convert_activations_s8_kernel<<<static_cast<unsigned>((items + threads - 1) / threads), threads, 0, stream>>>(
      src, k_normal, n_outliers, dst);
  ATOM_CUDA_CHECK_LAUNCH();
}

}  // namespace detail
}  // namespace atom::cuda
