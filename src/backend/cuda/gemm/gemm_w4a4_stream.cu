// gemm_w4a4o8_stream: a small-M W4A4 + INT8-outlier GEMM as a persistent, software-pipelined weight stream
// on warp MMA (sm_80+; m16n8k32 s8 on unpacked nibbles, or native m16n8k64 s4 on sm_80/86/89).
//
// Each CTA stays resident (grid = SMs x CTAs per SM) and walks over 16-row weight slabs (slab i,
// i + gridDim.x, ...); each warp keeps kStages - 1 work items in flight with cp.async into its own
// shared-memory ring, across slab boundaries, so the next slab streams in while this one is reduced.
// Measured on an H200 (docs/notes/gemm.md): it loses to the one-pass gemm_w4a4o8_mma_s8 at M <= 16 (it
// streams 1.9 TB/s against 2.5) and wins at M = 32 on wide layers; kAuto uses it only there.
//
// Work item (2 KB of weights, one warp): two INT4 groups of the slab's 16 rows, or one 128-channel INT8
// outlier chunk. A slab's items are dealt round-robin to the 8 warps (split-K); at the end of a slab the
// warps' fp32 partial sums are added in shared memory in warp order (fixed order: deterministic), the
// warps' int32 outlier sums are added exactly and applied last. Same value as atom_linear_reference up to
// fp32 reassociation over groups.
//
// Fragment mapping (as gemm_w4a4_mma.cu): lane (r = lane / 4, t = lane % 4) holds piece t of rows r and
// r + 8 of a group (canonical words {t, 4+t, 8+t, 12+t}) and the matching activation words of token r.
#include <algorithm>

#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/gemm/gemm_out.cuh"
#include "backend/cuda/gemm/gemm_ptx.cuh"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "backend/cuda/gemm/gemm_w4a4_layout.h"

namespace atom::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kSlabRows = 16;
constexpr int kSlabsPerTile = kW4A4TileRows / kSlabRows;
constexpr int kItemBytes = 2048;                  // 2 INT4 groups x 16 rows x 64 B, or 16 rows x 128 outliers
constexpr int kSlotBytes = kItemBytes + 2 * 64;   // + fp32 weight scales of the slab's rows for both groups
static_assert(kSlotBytes % 16 == 0, "cp.async destinations must stay 16-byte aligned");
static_assert(kW4A4OutlierChunk * kSlabRows == kItemBytes && kW4A4Group / 2 * kSlabRows * 2 == kItemBytes);

struct StreamParams {
  const std::uint8_t* a_packed;           // [m, groups*64]
  const std::uint16_t* a_scales;          // [m, groups]
  const std::int8_t* a_outliers;          // [m, n_outliers]
  const std::uint16_t* a_outlier_scales;  // [m]
  const std::uint8_t* w_packed;
  const std::int8_t* w_outliers;
  const float* w_scales;
  void* out;
  const void* residual;
  int m, n, groups, chunks, n_outliers;
  int slabs;  // ceil(n / 16)
  int items;  // per slab: `chunks` outlier items, then ceil(groups / 2) INT4 pairs
};

template <int MT>
constexpr int reduce_bytes() {
  return kWarps * MT * 32 * 4 * (sizeof(float) + sizeof(int));
}
// Warp rings, then the reduction buffer, then the slab's 16 outlier weight scales.
template <int MT, int kStages>
constexpr int stream_smem_bytes() {
  return kWarps * kStages * kSlotBytes + reduce_bytes<MT>() + kSlabRows * sizeof(float);
}
// Output entries (16 channels x 8*MT tokens) per thread in the slab reduction.
template <int MT>
constexpr int reduce_entries() {
  return (MT * 32 * 4 + kWarps * 32 - 1) / (kWarps * 32);
}

// Issues the copies of item q of `slab` into `slot` (this warp's; every lane takes part).
__device__ __forceinline__ void issue_item(const StreamParams& p, std::uint32_t slot, int slab, int q, int lane) {
  const int tile = slab / kSlabsPerTile, slab_row = (slab % kSlabsPerTile) * kSlabRows;
  const int G = p.groups;
  if (q < p.chunks) {
    // The slab's 16 rows of the chunk are 2 KB contiguous (kept in the global swizzled byte order); chunk 0
    // also brings the 16 rows' outlier weight scales (entry `groups` of the tile), used by the reduction.
    const std::int8_t* src = p.w_outliers + (((std::size_t)tile * p.chunks + q) * kW4A4TileRows + slab_row) * 128;
#pragma unroll
    for (int i = 0; i < 4; ++i) ptx::cp_async_16(slot + (lane + 32 * i) * 16, src + (lane + 32 * i) * 16);
    if (q == 0 && lane < 4)
      ptx::cp_async_16(slot + kItemBytes + lane * 16,
                       p.w_scales + ((std::size_t)tile * (G + 1) + G) * kW4A4TileRows + slab_row + lane * 4);
    return;
  }
  const int g0 = 2 * (q - p.chunks);
  const int r = lane / 4, t = lane % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int g = g0 + h;
    if (g < G) {
      const std::uint8_t* src = p.w_packed + ((((std::size_t)tile * G + g) * 4 + t) * kW4A4TileRows + slab_row + r) * 16;
      ptx::cp_async_16(slot + h * 1024 + lane * 16, src);
      ptx::cp_async_16(slot + h * 1024 + 512 + lane * 16, src + 8 * 16);
    }
  }
  // The 16 rows' scales of a group are 64 contiguous bytes of the tile's entry (see gemm_w4a4.h).
  if (lane < 8) {
    const int g = g0 + lane / 4;
    if (g < G)
      ptx::cp_async_16(slot + kItemBytes + lane * 16,
                       p.w_scales + ((std::size_t)tile * (G + 1) + g) * kW4A4TileRows + slab_row + (lane % 4) * 4);
  }
}

// Adds the warps' partial sums of one slab and writes 16 channels x 8*MT tokens (+ residual). The outlier
// int32 sums are added exactly first and applied last: y = fma(float(D_o) * sa_o, sw_o, y). Every global
// read of this step (residual; sa_o at kernel start; sw_o via the outlier item) is issued before the barrier
// so that no memory round trip sits between two slabs.
template <typename OutT, int MT>
__device__ __forceinline__ void reduce_slab(const StreamParams& p, float4* red, int4* red_i, const float* slab_sw_o,
                                            float (&acc)[MT][4], int (&outl)[MT][4], const float (&sa_o)[reduce_entries<MT>()],
                                            int slab, int m_base) {
  constexpr int kEntries = reduce_entries<MT>();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n_base = slab * kSlabRows;
  float residual[kEntries];
#pragma unroll
  for (int e = 0; e < kEntries; ++e) {
    const int idx = threadIdx.x + e * kWarps * 32;
    const int i = idx & 3, l = (idx >> 2) & 31, mt = idx >> 7;
    const int channel = n_base + l / 4 + 8 * (i >> 1), token = m_base + 8 * mt + 2 * (l % 4) + (i & 1);
    residual[e] = 0.0f;
    if (p.residual && idx < MT * 128 && channel < p.n && token < p.m)
      residual[e] = GemmOut<OutT>::load1(static_cast<const OutT*>(p.residual) + (std::size_t)token * p.n + channel);
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    red[(warp * MT + mt) * 32 + lane] = make_float4(acc[mt][0], acc[mt][1], acc[mt][2], acc[mt][3]);
    red_i[(warp * MT + mt) * 32 + lane] = make_int4(outl[mt][0], outl[mt][1], outl[mt][2], outl[mt][3]);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      acc[mt][i] = 0.0f;
      outl[mt][i] = 0;
    }
  }
  __syncthreads();
  const float* redf = reinterpret_cast<const float*>(red);
  const int* redi = reinterpret_cast<const int*>(red_i);
#pragma unroll
  for (int e = 0; e < kEntries; ++e) {
    const int idx = threadIdx.x + e * kWarps * 32;
    const int i = idx & 3, l = (idx >> 2) & 31, mt = idx >> 7;
    const int row = l / 4 + 8 * (i >> 1), token = m_base + 8 * mt + 2 * (l % 4) + (i & 1);
    const int channel = n_base + row;
    if (idx >= MT * 128 || channel >= p.n || token >= p.m) continue;
    float y = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) y += redf[((w * MT + mt) * 32 + l) * 4 + i];
    if (p.chunks > 0) {
      int d = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) d += redi[((w * MT + mt) * 32 + l) * 4 + i];
      y = __fmaf_rn(__fmul_rn(__int2float_rn(d), sa_o[e]), slab_sw_o[row], y);
    }
    if (p.residual) y += residual[e];
    GemmOut<OutT>::store1(static_cast<OutT*>(p.out) + (std::size_t)token * p.n + channel, y);
  }
  __syncthreads();  // the buffers are rewritten during the next slab
}

// The activation operands of one work item for this thread. INT4 pair: x[h][mt][j] = word 4j + t of group
// g0 + h of token row r, sa[h][mt][e] = scale of token 2t + e. Outlier chunk: x[0][mt][j], x[1][mt][j] = the 8
// bytes of channels 32t + 8j .. +7 of token row r (zero past n_outliers).
template <int MT>
struct ActFragment {
  std::uint32_t x[2][MT][4];
  std::uint16_t sa[2][MT][2];
};

template <int MT>
__device__ __forceinline__ void load_activations(const StreamParams& p, int q, const int (&tok_b)[MT],
                                                 const int (&tok_c)[MT][2], int t, ActFragment<MT>& f) {
  if (q < p.chunks) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = q * kW4A4OutlierChunk + 32 * t + 8 * j;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        uint2 b = make_uint2(0u, 0u);
        if (col < p.n_outliers) b = ptx::ldg_nc_v2(p.a_outliers + (std::size_t)tok_b[mt] * p.n_outliers + col);
        f.x[0][mt][j] = b.x;
        f.x[1][mt][j] = b.y;
      }
    }
    return;
  }
  const int G = p.groups;
  const std::size_t a_row_bytes = (std::size_t)G * (kW4A4Group / 2);
  const int g0 = 2 * (q - p.chunks);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int g = min(g0 + h, G - 1);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int j = 0; j < 4; ++j)
        f.x[h][mt][j] = ptx::ldg_nc_u32(p.a_packed + tok_b[mt] * a_row_bytes + g * (kW4A4Group / 2) + (4 * j + t) * 4);
      f.sa[h][mt][0] = ptx::ldg_nc_u16(p.a_scales + (std::size_t)tok_c[mt][0] * G + g);
      f.sa[h][mt][1] = ptx::ldg_nc_u16(p.a_scales + (std::size_t)tok_c[mt][1] * G + g);
    }
  }
}

template <typename OutT, int MT, bool kNativeS4, int kStages>
__global__ void __launch_bounds__(kWarps * 32, 2) gemm_w4a4o8_stream(const StreamParams p) {
  static_assert(kStages >= 2);
  extern __shared__ __align__(16) std::uint8_t smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t = lane % 4, r = lane / 4;
  const std::uint32_t ring = ptx::smem_u32(smem) + warp * kStages * kSlotBytes;  // this warp's slots
  const std::uint8_t* ring_ptr = smem + warp * kStages * kSlotBytes;
  float4* red = reinterpret_cast<float4*>(smem + kWarps * kStages * kSlotBytes);
  int4* red_i = reinterpret_cast<int4*>(red + kWarps * MT * 32);
  float* slab_sw_o = reinterpret_cast<float*>(red_i + kWarps * MT * 32);
  const int G = p.groups, Q = p.items;
  const int m_base = blockIdx.y * 8 * MT;
  // Tokens whose activations this thread loads (B operand column r) and whose scales it applies (2t, 2t+1).
  int tok_b[MT], tok_c[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    tok_b[mt] = min(m_base + 8 * mt + r, p.m - 1);
    tok_c[mt][0] = min(m_base + 8 * mt + 2 * t, p.m - 1);
    tok_c[mt][1] = min(m_base + 8 * mt + 2 * t + 1, p.m - 1);
  }
  // The outlier activation scale of each of this thread's reduction entries (the same token every slab).
  float sa_o[reduce_entries<MT>()];
#pragma unroll
  for (int e = 0; e < reduce_entries<MT>(); ++e) {
    const int idx = threadIdx.x + e * kWarps * 32, l = (idx >> 2) & 31;
    const int token = min(m_base + 8 * (idx >> 7) + 2 * (l % 4) + (idx & 1), p.m - 1);
    sa_o[e] = p.chunks > 0 ? fp16_bits_to_float(p.a_outlier_scales[token]) : 0.0f;
  }

  // Load cursor: this warp's items in order (slab-major, items warp, warp + 8, ...), kStages - 1 ahead.
  int ld_slab = blockIdx.x, ld_q = warp, ld_slot = 0;
  const bool has_items = warp < Q;
  auto issue_next = [&]() {
    if (has_items && ld_slab < p.slabs) {
      issue_item(p, ring + ld_slot * kSlotBytes, ld_slab, ld_q, lane);
      ld_q += kWarps;
      if (ld_q >= Q) {
        ld_q = warp;
        ld_slab += gridDim.x;
      }
    }
    ptx::cp_async_commit();  // possibly empty: keeps one group per item for the wait count
    ld_slot = ld_slot + 1 == kStages ? 0 : ld_slot + 1;
  };
#pragma unroll 1
  for (int s = 0; s < kStages - 1; ++s) issue_next();
  int slot = 0;
  // Before reading item c: wait for its group, make every lane's copies visible, then refill the slot
  // read at item c - 1 (all lanes are past it).
  auto await_item_and_refill = [&]() {
    ptx::cp_async_wait<kStages - 2>();
    __syncwarp();
    issue_next();
  };

  float acc[MT][4];
  int outl[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      acc[mt][i] = 0.0f;
      outl[mt][i] = 0;
    }

  // Activation fragments depend on the item only (not on the slab). They are loaded one item ahead, at the
  // end of the previous item (into the registers it just finished with), so their latency overlaps the
  // cp.async wait; loads placed just before the wait get scheduled after it, exposed at every item.
  ActFragment<MT> cur;
  if (has_items) load_activations(p, warp, tok_b, tok_c, t, cur);

#pragma unroll 1
  for (int slab = blockIdx.x; slab < p.slabs; slab += gridDim.x) {
#pragma unroll 1
    for (int q = warp; q < Q; q += kWarps) {
      const std::uint8_t* buf = ring_ptr + slot * kSlotBytes;
      slot = slot + 1 == kStages ? 0 : slot + 1;
      await_item_and_refill();
      if (q < p.chunks) {
        // INT8 outlier chunk q (activation channels 32t + 8j .. +7 of the chunk for k-step j).
        if (q == 0 && t == 0) {  // the slab's outlier weight scales, for the reduction
          const float* sw_buf = reinterpret_cast<const float*>(buf + kItemBytes);
          const int sw_pos = 4 * (r >> 1) + (r & 1);
          slab_sw_o[r] = sw_buf[sw_pos];
          slab_sw_o[r + 8] = sw_buf[sw_pos + 2];
        }
        const std::uint8_t* row0 = buf + r * 128;
        const std::uint8_t* row8 = buf + (r + 8) * 128;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          // Rows r and r + 8 share the 128-byte swizzle (row % 8 == r).
          const int u0 = ((2 * j) ^ r) << 4, u1 = ((2 * j + 1) ^ r) << 4;
          const std::uint32_t a[4] = {*reinterpret_cast<const std::uint32_t*>(row0 + u0 + 4 * t),
                                      *reinterpret_cast<const std::uint32_t*>(row8 + u0 + 4 * t),
                                      *reinterpret_cast<const std::uint32_t*>(row0 + u1 + 4 * t),
                                      *reinterpret_cast<const std::uint32_t*>(row8 + u1 + 4 * t)};
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) ptx::mma_m16n8k32_s8(outl[mt], a, cur.x[0][mt][j], cur.x[1][mt][j]);
        }
      } else {
        // Two INT4 groups g0, g0 + 1 (the second may be past the end).
        const int g0 = 2 * (q - p.chunks);
        const float* sw_buf = reinterpret_cast<const float*>(buf + kItemBytes);
        // Channel r of the slab sits at scale position 4 * (r / 2) + r % 2, channel r + 8 two further.
        const int sw_pos = 4 * (r >> 1) + (r & 1);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (g0 + h >= G) break;
          const uint4 w0 = *reinterpret_cast<const uint4*>(buf + h * 1024 + lane * 16);
          const uint4 w1 = *reinterpret_cast<const uint4*>(buf + h * 1024 + 512 + lane * 16);
          const float sw0 = sw_buf[h * 16 + sw_pos], sw1 = sw_buf[h * 16 + sw_pos + 2];
          int c[MT][4];
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int i = 0; i < 4; ++i) c[mt][i] = 0;
          const std::uint32_t wa[4] = {w0.x, w0.y, w0.z, w0.w};
          const std::uint32_t wb[4] = {w1.x, w1.y, w1.z, w1.w};
          if constexpr (kNativeS4) {
#pragma unroll
            for (int s = 0; s < 2; ++s) {
              const std::uint32_t a[4] = {wa[2 * s], wb[2 * s], wa[2 * s + 1], wb[2 * s + 1]};
#pragma unroll
              for (int mt = 0; mt < MT; ++mt)
                ptx::mma_m16n8k64_s4(c[mt], a, cur.x[h][mt][2 * s], cur.x[h][mt][2 * s + 1]);
            }
          } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              const std::uint32_t a[4] = {ptx::nibbles_lo_x16(wa[j]), ptx::nibbles_lo_x16(wb[j]),
                                          ptx::nibbles_hi_x16(wa[j]), ptx::nibbles_hi_x16(wb[j])};
#pragma unroll
              for (int mt = 0; mt < MT; ++mt)
                ptx::mma_m16n8k32_s8(c[mt], a, ptx::nibbles_lo_x16(cur.x[h][mt][j]),
                                     ptx::nibbles_hi_x16(cur.x[h][mt][j]));
            }
          }
          // Group rescale: t = float(D) * sa (one rounding; D = c, or c / 256 after the x16 unpack of both
          // operands), acc = fma(t, sw, acc).
          constexpr float kUnpackScale = kNativeS4 ? 1.0f : 1.0f / 256.0f;
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float sa = fp16_bits_to_float(cur.sa[h][mt][e]) * kUnpackScale;
              const float nb = -ptx::kMagicF * sa;
#pragma unroll
              for (int hh = 0; hh < 2; ++hh) {
                const int i = 2 * hh + e;
                const float tv = __fmaf_rn(ptx::magic_i2f_biased(c[mt][i]), sa, nb);
                acc[mt][i] = __fmaf_rn(tv, hh ? sw1 : sw0, acc[mt][i]);
              }
            }
        }
      }
      load_activations(p, q + kWarps < Q ? q + kWarps : warp, tok_b, tok_c, t, cur);
    }
    reduce_slab<OutT, MT>(p, red, red_i, slab_sw_o, acc, outl, sa_o, slab, m_base);
  }
  ptx::cp_async_wait<0>();
}

int current_device_sms() {
  static thread_local int cached_device = -1, cached_sms = 0;
  int dev = 0;
  ATOM_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev != cached_device) {
    ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&cached_sms, cudaDevAttrMultiProcessorCount, dev));
    cached_device = dev;
  }
  return cached_sms;
}

template <typename OutT, int MT, bool kNativeS4, int kStages>
void launch_typed(const StreamParams& p, const detail::W4A4StreamConfig& c, cudaStream_t stream) {
  const auto kernel = gemm_w4a4o8_stream<OutT, MT, kNativeS4, kStages>;
  constexpr int kSmem = stream_smem_bytes<MT, kStages>();
  static const int ctas_per_sm = [&] {
    ATOM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    int blocks = 0;
    ATOM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kWarps * 32, kSmem));
    return blocks < 1 ? 1 : blocks;
  }();
  const int token_tiles = layout::ceil_div(p.m, 8 * MT);
  const int per_sm = c.max_ctas_per_sm > 0 && c.max_ctas_per_sm < ctas_per_sm ? c.max_ctas_per_sm : ctas_per_sm;
  int ctas_x = std::min(p.slabs, layout::ceil_div(current_device_sms() * per_sm, token_tiles));
  if (c.max_ctas > 0) ctas_x = std::min(ctas_x, c.max_ctas);
  ctas_x = std::max(ctas_x, 1);
  kernel<<<dim3(ctas_x, token_tiles), kWarps * 32, kSmem, stream>>>(p);
  ATOM_CUDA_CHECK_LAUNCH();
}

// Tokens per CTA: 8, 16 or 32 (more tokens: further CTA rows, each streaming the weights again).
template <typename OutT, bool kNativeS4, int kStages>
void launch_tokens(const StreamParams& p, const detail::W4A4StreamConfig& c, cudaStream_t stream) {
  if (p.m <= 8)
    launch_typed<OutT, 1, kNativeS4, kStages>(p, c, stream);
  else if (p.m <= 16)
    launch_typed<OutT, 2, kNativeS4, kStages>(p, c, stream);
  else
    launch_typed<OutT, 4, kNativeS4, kStages>(p, c, stream);
}

template <typename OutT>
void launch_config(const StreamParams& p, const detail::W4A4StreamConfig& c, cudaStream_t stream) {
  if (c.native_s4) {
    launch_tokens<OutT, true, 4>(p, c, stream);
    return;
  }
  switch (c.stages) {
    case 3: launch_tokens<OutT, false, 3>(p, c, stream); break;
    case 6: launch_tokens<OutT, false, 6>(p, c, stream); break;
    default: launch_tokens<OutT, false, 4>(p, c, stream); break;
  }
}

}  // namespace

namespace detail {

void launch_w4a4_stream(const GemmW4A4Args& args, const W4A4StreamConfig& config, cudaStream_t stream) {
  const W4A4PackedWeights& w = args.w;
  StreamParams p{};
  p.a_packed = args.a.packed;
  p.a_scales = args.a.scales;
  p.a_outliers = args.a.outliers;
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
  p.n_outliers = w.n_outliers;
  p.slabs = layout::ceil_div(w.n, kSlabRows);
  p.items = p.chunks + layout::ceil_div(p.groups, 2);
  if (args.out_type == GemmOutType::kBF16)
    launch_config<__nv_bfloat16>(p, config, stream);
  else
    launch_config<__half>(p, config, stream);
}

}  // namespace detail
}  // namespace atom::cuda
