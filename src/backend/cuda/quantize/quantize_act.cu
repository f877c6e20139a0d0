// Fused activation quantizers (see quantize_act.h). A token is handled by a team of warps: one warp
// when there are enough tokens to fill the GPU (no block barriers, so every warp streams independently
// and keeps many loads in flight), the whole block when there are fewer tokens than resident blocks
// (decode batches: one warp walking a 4096-channel row alone took 20-26 us):
//   1. (row kernels) the fp16 row is read once with 16-byte loads into the team's shared-memory row
//      (residual added and written, sum of squares taken on the way);
//   2. normal groups: G/8 lanes per group, 8 consecutive reordered channels per lane, the group max by
//      shuffles, one 4-byte store of 8 packed codes per lane; the team's warps take turns by pass;
//   3. outliers: 8 channels per lane over the team's warps, the team's max, one INT8 per channel.
// At decode sizes a token's row may be split over a cluster of blocks (row slices, quantize_act.h): each
// block stages the whole row but quantizes only its share (SliceShare).
// The arithmetic mirrors format/format.h (fp32, IEEE division, round half to even): the quotient x / scale
// is formed as x * (1 / scale) and rounded with the 1.5 * 2^23 trick, which is provably the same
// integer unless the product lies within a few ulps of a half-integer; those rare elements take the
// IEEE division.
#include <cooperative_groups.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/common/fp16_vec.cuh"
#include "backend/cuda/common/launch.cuh"
#include "backend/cuda/gemm/gemm_w4a4_layout.h"
#include "backend/cuda/quantize/quantize_act.h"
#include "format/format.h"

namespace atom::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: (y + magic) - magic = rint(y) for |y| < 2^22

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}


// rint(x / scale) with / the IEEE division (quant::quantize_symmetric_value); inv = __frcp_rn(scale).
// |x * inv - x / scale| <= |y| * 2^-22.9 and the IEEE quotient is within |y| * 2^-24 of x / scale, so
// outside a band of |y| * 2^-20 around a half-integer both round to the same integer.
__device__ __forceinline__ float round_quotient(float x, float scale, float inv) {
  const float y = __fmul_rn(x, inv);
  const float r = __fsub_rn(__fadd_rn(y, kRoundMagic), kRoundMagic);
  const float tie_gap = fabsf(__fsub_rn(fabsf(__fsub_rn(y, r)), 0.5f));
  if (tie_gap <= fmaf(fabsf(y), 0x1p-20f, 0x1p-24f)) return rintf(__fdiv_rn(x, scale));
  return r;
}
// Low bits of an integer-valued float in [-2^21, 2^21), two's complement.
__device__ __forceinline__ unsigned int_bits(float r) { return __float_as_uint(__fadd_rn(r, kRoundMagic)); }

struct GroupArgs {
  float qmax, clip;
};

// One group spread over `lanes` (a power of two, aligned) lanes of the warp, 8 values per lane. All 32
// lanes must call it (shuffles); returns the lane's 8 codes packed (value i in nibble i); the group's first
// active lane stores the scale.
template <bool kFp4>
__device__ __forceinline__ std::uint32_t quantize_group8(const float (&v)[8], int lanes, GroupArgs a, bool active,
                                                         __half* scale_dst, bool first_lane) {
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < 8; ++i) amax = fmaxf(fabsf(v[i]), amax);
  for (int off = lanes / 2; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, off));
  const __half scale_h = __float2half_rn(__fdiv_rn(__fmul_rn(a.clip, amax), a.qmax));
  const float scale = __half2float(scale_h);
  std::uint32_t word = 0;
  if (scale != 0.0f) {
    if constexpr (kFp4) {
#pragma unroll
      for (int i = 0; i < 8; ++i) word |= static_cast<std::uint32_t>(quant::fp4_encode(__fdiv_rn(v[i], scale))) << (4 * i);
    } else {
      const float inv = __frcp_rn(scale);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float q = fminf(fmaxf(round_quotient(v[i], scale, inv), -a.qmax - 1.0f), a.qmax);
        word |= (int_bits(q) & 0xFu) << (4 * i);
      }
    }
  }
  if (active && first_lane) *scale_dst = scale_h;
  return word;
}

// Int8 rows of the serving-size GEMM (W4A4ActivationsS8): the 8 codes of group elements e = 8c .. 8c + 7
// (value i in nibble i) go to byte positions layout::s8_group_position(e): codes 0, 2, 4, 6 to the 4 bytes at
// 32 (c % 4) + 4 (c / 4), codes 1, 3, 5, 7 to the 4 bytes 16 further, sign-extended to int8.
__device__ __forceinline__ void store_codes_s8(std::int8_t* group_row, int c, std::uint32_t word) {
  const std::uint32_t even = word & 0x0F0F0F0Fu, odd = (word >> 4) & 0x0F0F0F0Fu;
  const int base = layout::s8_group_position(8 * c);  // even codes at base + i/2, odd codes 16 further
  *reinterpret_cast<std::uint32_t*>(group_row + base) = __vsub4(even ^ 0x08080808u, 0x08080808u);
  *reinterpret_cast<std::uint32_t*>(group_row + base + 16) = __vsub4(odd ^ 0x08080808u, 0x08080808u);
}
// Byte position of outlier o of a row in the int8 layout: chunk o / 128, layout::s8_outlier_position inside.
__device__ __forceinline__ int outlier_position_s8(int o) { return (o & ~127) + layout::s8_outlier_position(o & 127); }


// What one block of a token's row slices quantizes: normal groups [g_begin, g_end) and outlier chunks
// (8 channels each) [c_begin, c_end). The outliers go whole to the last slice, unless they are most of the
// row (W8A8: all of it), when they are dealt out like the groups and their max is taken across the cluster.
struct SliceShare {
  int g_begin, g_end, c_begin, c_end;
  bool cluster_max;  // block-uniform: the outlier max is the cluster's (every slice takes part)
  bool owns_scale;   // writes the outlier scale (and the int8 layout's padding)
};
constexpr bool outliers_spread_over_slices(const ActQuantLayout& l) { return l.n_outliers > l.k - l.n_outliers; }
__device__ __forceinline__ SliceShare slice_share(const ActQuantLayout& l, int slices, int slice) {
  const int groups = (l.k - l.n_outliers) / l.group_size, chunks = l.n_outliers / 8;
  const bool spread = slices > 1 && outliers_spread_over_slices(l);
  SliceShare s{groups * slice / slices, groups * (slice + 1) / slices, 0, 0, spread, false};
  if (spread) {
    s.c_begin = chunks * slice / slices, s.c_end = chunks * (slice + 1) / slices, s.owns_scale = slice == 0;
  } else if (slice == slices - 1) {
    s.c_end = chunks, s.owns_scale = true;
  }
  return s;
}

// Steps 2 and 3 for one token, by warp `rank` of a team of kTeam warps (kTeam > 1: the whole block, which
// then meets at block barriers), for the block's share of the row. Source::get8(j, v) gives the fp16-exact
// values (as floats) of reordered channels j..j+7 (j a multiple of 8) and writes them to the debug output if
// any. Each group is quantized by one warp and the outliers' max is order-free, so neither the team nor the
// row slices change any arithmetic.
template <bool kFp4, int kTeam, class Source>
__device__ void quantize_token(int token, int rank, const ActQuantLayout& layout, const QuantizedActOut& out,
                               Source& src, const SliceShare& share) {
  constexpr int team = kTeam;
  const int lane = threadIdx.x % 32;
  const int k_normal = layout.k - layout.n_outliers;
  const int group = layout.group_size;
  const int lanes = group / 8;
  const int groups_per_pass = 32 / lanes;
  const int slot = lane / lanes, lane_in_group = lane % lanes;
  const float qmax = layout.format == ActFormat::kInt3 ? 3.0f : layout.format == ActFormat::kFp4 ? 6.0f : 7.0f;
  const GroupArgs args{qmax, layout.clip_ratio};
  std::uint8_t* packed_row = out.packed + token * out.packed_stride;
  std::int8_t* codes_row = out.codes_s8 ? out.codes_s8 + token * out.codes_s8_stride : nullptr;
  for (int first = share.g_begin + rank * groups_per_pass; first < share.g_end; first += team * groups_per_pass) {
    const int g = first + slot;  // (the loop is warp-uniform)
    const bool active = g < share.g_end;
    const int j = g * group + lane_in_group * 8;
    float v[8];
    if (active) {
      src.get8(j, v);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = 0.0f;
    }
    const std::uint32_t word =
        quantize_group8<kFp4>(v, lanes, args, active,
                              reinterpret_cast<__half*>(out.scales) + token * out.scale_token_stride +
                                  static_cast<std::int64_t>(g) * out.scale_group_stride,
                              lane_in_group == 0);
    if (active) {
      if (codes_row)
        store_codes_s8(codes_row + g * group, lane_in_group, word);
      else
        *reinterpret_cast<std::uint32_t*>(packed_row + j / 2) = word;
    }
  }
  if (share.c_end > share.c_begin || share.cluster_max) {  // block-uniform
    // Outliers: 8 consecutive channels per lane, over all warps of the team (n_outliers is a multiple of 8:
    // K and K_n are). W8A8 rows are all outliers: one warp walking an 11008-channel row took ~85 us a token.
    // Two passes (the max, then the codes) read the values twice instead of keeping them in registers.
    const int team_lane = rank * 32 + lane;
    float amax = 0.0f;
    for (int c = share.c_begin + team_lane; c < share.c_end; c += kTeam * 32) {
      float v[8];
      src.get8(k_normal + 8 * c, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) amax = fmaxf(fabsf(v[i]), amax);
    }
    amax = warp_max(amax);
    if constexpr (kTeam > 1) {
      __shared__ float team_amax[kTeam];
      if (lane == 0) team_amax[rank] = amax;
      __syncthreads();
#pragma unroll
      for (int w = 0; w < kTeam; ++w) amax = fmaxf(amax, team_amax[w]);
      __syncthreads();  // the next token writes team_amax again
      if (share.cluster_max) {  // (only team kernels run in clusters)
        __shared__ float block_amax;
        if (threadIdx.x == 0) block_amax = amax;
        auto cluster = cooperative_groups::this_cluster();
        cluster.sync();
        for (unsigned r = 0; r < cluster.num_blocks(); ++r) amax = fmaxf(amax, *cluster.map_shared_rank(&block_amax, r));
        cluster.sync();  // no block moves on (overwriting block_amax, or exiting) while another still reads it
      }
    }
    const __half scale_h = __float2half_rn(__fdiv_rn(amax, 127.0f));
    const float scale = __half2float(scale_h);
    const float inv = __frcp_rn(scale);
    std::int8_t* dst = codes_row ? codes_row + k_normal : out.outliers + token * out.outlier_stride;
    const bool aligned8 = codes_row == nullptr && (reinterpret_cast<std::uintptr_t>(dst) & 7u) == 0;
    for (int c = share.c_begin + team_lane; c < share.c_end; c += kTeam * 32) {
      float v[8];
      src.get8(k_normal + 8 * c, v);
      std::uint32_t bytes[2] = {0, 0};
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        float q = 0.0f;
        if (scale != 0.0f) q = fminf(fmaxf(round_quotient(v[i], scale, inv), -128.0f), 127.0f);
        bytes[i / 4] |= (int_bits(q) & 0xFFu) << (8 * (i % 4));
      }
      if (aligned8) {
        *reinterpret_cast<uint2*>(dst + 8 * c) = make_uint2(bytes[0], bytes[1]);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int o = 8 * c + i;
          dst[codes_row ? outlier_position_s8(o) : o] = static_cast<std::int8_t>((bytes[i / 4] >> (8 * (i % 4))) & 0xFFu);
        }
      }
    }
    if (codes_row && share.owns_scale && rank == kTeam - 1)  // zero the padding of the last 128-wide chunk
      for (int o = layout.n_outliers + lane; o < ((layout.n_outliers + 127) & ~127); o += 32)
        dst[outlier_position_s8(o)] = 0;
    if (share.owns_scale && rank == 0 && lane == 0)
      reinterpret_cast<__half*>(out.outlier_scales)[token * out.outlier_scale_stride] = scale_h;
  }
}

// ---- rmsnorm_quantize / reorder_quantize: the row is staged in the warp's shared-memory row, then
// gathered by perm (kept in shared memory as uint16 for the whole block).

constexpr int kRowWarps = 4;

// The block's share of a reordered row (SliceShare) as channel ranges, staged at local index l: normal
// channels [normal_first, + normal_count) first, then outlier channels [k_normal + outlier_first,
// + outlier_count); every bound a multiple of 8.
struct StagedSlice {
  int k_normal, normal_first, normal_count, outlier_first, outlier_count;
  __device__ StagedSlice(const ActQuantLayout& l, const SliceShare& s)
      : k_normal(l.k - l.n_outliers),
        normal_first(s.g_begin * l.group_size),
        normal_count((s.g_end - s.g_begin) * l.group_size),
        outlier_first(8 * s.c_begin),
        outlier_count(8 * (s.c_end - s.c_begin)) {}
  __device__ int staged() const { return normal_count + outlier_count; }
  __device__ int channel(int l) const {
    return l < normal_count ? normal_first + l : k_normal + outlier_first + (l - normal_count);
  }
  __device__ int local(int j) const {
    return j < k_normal ? j - normal_first : normal_count + (j - k_normal - outlier_first);
  }
};

template <bool kNorm>
struct GatherSource {
  StagedSlice slice;
  const std::uint16_t* perm;  // by local index
  const __half* gamma;  // gamma[perm[j]] by local index (norm only)
  const __half* row;    // h, original order
  float inv_rms;
  __half* debug;  // this token's normed_out row or null

  __device__ void get8(int j, float (&v)[8]) {
    const int l = slice.local(j);  // j..j+7 lie in one staged range
    const uint4 idx = *reinterpret_cast<const uint4*>(perm + l);  // one 16-byte shared load
    const std::uint32_t iw[4] = {idx.x, idx.y, idx.z, idx.w};
    unsigned ix[8];
#pragma unroll
    for (int i = 0; i < 4; ++i) ix[2 * i] = iw[i] & 0xFFFFu, ix[2 * i + 1] = iw[i] >> 16;
    if constexpr (kNorm) {
      float gm[8];
      unpack8(*reinterpret_cast<const uint4*>(gamma + l), gm);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = __fmul_rn(__fmul_rn(__half2float(row[ix[i]]), inv_rms), gm[i]);
      const uint4 h = pack8(v);  // the fp16 values are what gets quantized
      unpack8(h, v);
      if (debug != nullptr) *reinterpret_cast<uint4*>(debug + j) = h;
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = __half2float(row[ix[i]]);
    }
  }
};

struct RowKernelArgs {
  int num_tokens;
  ActQuantLayout layout;
  const __half* input;
  std::int64_t input_stride;
  const __half* residual;
  std::int64_t residual_stride;
  __half* residual_out;
  std::int64_t residual_out_stride;
  const __half* weight;  // null: no norm
  float eps;
  const std::int32_t* perm;
  QuantizedActOut out;
  __half* normed_out;
  std::int64_t normed_stride;
  int slices;  // gridDim.x is a multiple: block b takes slice b % slices of its tokens
};

// perm (uint16) [+ gamma] for the block, one row per team.
std::size_t row_smem_bytes(int k, bool norm, int team) {
  return static_cast<std::size_t>(k) * 2 * ((norm ? 2 : 1) + kRowWarps / team);
}

// kTeam: warps per token, 1 or kRowWarps (the whole block; its barriers are then block barriers).
template <bool kNorm, bool kFp4, int kTeam>
__global__ void __launch_bounds__(kRowWarps * 32) row_quantize_kernel(RowKernelArgs a) {
  static_assert(kTeam == 1 || kTeam == kRowWarps);
  constexpr int kTeams = kRowWarps / kTeam;
  extern __shared__ uint4 smem_raw[];
  __shared__ float s_sumsq[kRowWarps];
  const int k = a.layout.k;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rank = warp % kTeam, team_lane = rank * 32 + lane;
  const int slices = kTeam == 1 ? 1 : a.slices, slice = blockIdx.x % slices;
  const SliceShare share = slice_share(a.layout, slices, slice);
  const StagedSlice staged(a.layout, share);
  const int n_staged = staged.staged();
  pdl_allow_dependents();
  const auto team_sync = [] {
    if constexpr (kTeam == 1) __syncwarp();
    else __syncthreads();
  };
  std::uint16_t* perm_s = reinterpret_cast<std::uint16_t*>(smem_raw);
  __half* gamma_s = reinterpret_cast<__half*>(perm_s + k);
  __half* row = (kNorm ? gamma_s + k : gamma_s) + static_cast<std::size_t>(warp / kTeam) * k;  // 16-byte aligned: k % 8 == 0
  // The slice's perm as 16-byte loads (8 in flight per thread), then the gamma gather from the staged
  // indices: with one dependent load chain per element this prologue alone took about 15 us.
  for (int base = threadIdx.x * 4; base < n_staged; base += kRowWarps * 32 * 4 * 8) {
    int4 idx[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int l = base + u * kRowWarps * 32 * 4;  // staged ranges are multiples of 8: never straddled
      if (l < n_staged) idx[u] = *reinterpret_cast<const int4*>(a.perm + staged.channel(l));  // perm 16-byte aligned
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int l = base + u * kRowWarps * 32 * 4;
      if (l >= n_staged) continue;
      const int v[4] = {idx[u].x, idx[u].y, idx[u].z, idx[u].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {  // never out of bounds
        perm_s[l + e] = static_cast<std::uint16_t>(min(static_cast<unsigned>(v[e]), static_cast<unsigned>(k - 1)));
      }
    }
  }
  __syncthreads();
  if constexpr (kNorm) {
#pragma unroll 8
    for (int l = threadIdx.x; l < n_staged; l += kRowWarps * 32) gamma_s[l] = a.weight[perm_s[l]];
    __syncthreads();
  }
  pdl_wait();  // perm and gamma are weights; the rows come from the kernels before
  const int first_token = blockIdx.x / slices * kTeams + warp / kTeam, token_step = gridDim.x / slices * kTeams;
  for (int token = first_token; token < a.num_tokens; token += token_step) {
    const __half* in = a.input + token * a.input_stride;
    const __half* res = a.residual ? a.residual + token * a.residual_stride : nullptr;
    __half* res_out = a.residual_out ? a.residual_out + token * a.residual_out_stride : nullptr;
    constexpr int kUnroll = 4;  // 4 (8 with the residual) 16-byte loads in flight per lane
    // The sum of squares in one order for both team sizes (and rmsnorm_f16, elementwise.cu): chunk u of a
    // warp-per-token lane l is what lane l + 32u of the block-per-token mode loads, so it gets that lane's
    // own accumulator, summed over the warp and then in order of u like the block's warps.
    static_assert(kUnroll == kRowWarps);
    float sumsq_part[kTeam == 1 ? kUnroll : 1] = {};
    constexpr int kStep = kTeam * 32 * 8;
    for (int base = team_lane * 8; base < k; base += kStep * kUnroll) {
      uint4 x[kUnroll], r[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = base + u * kStep;
        if (c < k) {
          x[u] = *reinterpret_cast<const uint4*>(in + c);
          if (res) r[u] = *reinterpret_cast<const uint4*>(res + c);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = base + u * kStep;
        if (c >= k) continue;
        uint4 h = x[u];
        if (res) {
          float xv[8], rv[8];
          unpack8(x[u], xv);
          unpack8(r[u], rv);
#pragma unroll
          for (int i = 0; i < 8; ++i) xv[i] = __fadd_rn(xv[i], rv[i]);
          h = pack8(xv);
        }
        if (res_out && slices == 1) *reinterpret_cast<uint4*>(res_out + c) = h;
        *reinterpret_cast<uint4*>(row + c) = h;
        if constexpr (kNorm) {
          float hv[8];
          unpack8(h, hv);
          float& s = sumsq_part[kTeam == 1 ? u : 0];
#pragma unroll
          for (int i = 0; i < 8; ++i) s = fmaf(hv[i], hv[i], s);
        }
      }
    }
    float inv_rms = 1.0f;
    if constexpr (kNorm) {
      float sumsq = 0.0f;
      if constexpr (kTeam == 1) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) sumsq += warp_sum(sumsq_part[u]);
      } else {
        const float warp_sumsq = warp_sum(sumsq_part[0]);
        if (lane == 0) s_sumsq[warp] = warp_sumsq;
        __syncthreads();
#pragma unroll
        for (int w = 0; w < kTeam; ++w) sumsq += s_sumsq[w];
      }
      inv_rms = rsqrtf(sumsq / static_cast<float>(k) + a.eps);
    }
    team_sync();  // the row is read across lanes (and warps)
    if (res_out && slices > 1) {
      // The slices of a token are one cluster; residual_out may alias residual, so no slice overwrites it
      // before every slice has read it. Then each writes its share of the chunks from its staged row.
      cooperative_groups::this_cluster().sync();
      for (int c = team_lane * 8; c < k; c += kTeam * 32 * 8) {
        if ((c / 8) % slices == slice) *reinterpret_cast<uint4*>(res_out + c) = *reinterpret_cast<const uint4*>(row + c);
      }
    }
    GatherSource<kNorm> src{staged, perm_s, gamma_s, row, inv_rms,
                            a.normed_out ? a.normed_out + token * a.normed_stride : nullptr};
    quantize_token<kFp4, kTeam>(token, rank, a.layout, a.out, src, share);
    team_sync();  // the next token overwrites the row (and s_sumsq)
  }
}

// ---- silu_mul_quantize: streaming from global memory, one warp per token.

constexpr int kSiluWarps = 8;

struct SiluKernelArgs {
  int num_tokens;
  ActQuantLayout layout;
  const __half* gate;
  std::int64_t gate_stride;
  const __half* up;
  std::int64_t up_stride;
  QuantizedActOut out;
  __half* act_out;
  std::int64_t act_stride;
  int slices;  // as RowKernelArgs::slices
};

// fp16( silu(g) * u ); the fp16 rounding is the definition, the fp32 inside need not be IEEE-exact.
__device__ __forceinline__ float silu_mul(float g, float u) { return __fdividef(g, 1.0f + __expf(-g)) * u; }

struct SiluSource {
  const __half* gate;
  const __half* up;
  __half* debug;

  __device__ void get8(int j, float (&v)[8]) {
    float g[8], u[8];
    unpack8(*reinterpret_cast<const uint4*>(gate + j), g);
    unpack8(*reinterpret_cast<const uint4*>(up + j), u);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = silu_mul(g[i], u[i]);
    const uint4 h = pack8(v);
    unpack8(h, v);
    if (debug != nullptr) *reinterpret_cast<uint4*>(debug + j) = h;
  }
};

// kTeam: warps per token, 1 or kSiluWarps (no shared state: the team only splits the passes).
template <bool kFp4, int kTeam>
__global__ void __launch_bounds__(kSiluWarps * 32) silu_quantize_kernel(SiluKernelArgs a) {
  static_assert(kTeam == 1 || kTeam == kSiluWarps);
  constexpr int kTeams = kSiluWarps / kTeam;
  const int warp = threadIdx.x / 32;
  const int slices = kTeam == 1 ? 1 : a.slices, slice = blockIdx.x % slices;
  const SliceShare share = slice_share(a.layout, slices, slice);
  pdl_allow_dependents();
  pdl_wait();
  const int first_token = blockIdx.x / slices * kTeams + warp / kTeam, token_step = gridDim.x / slices * kTeams;
  for (int token = first_token; token < a.num_tokens; token += token_step) {
    SiluSource src{a.gate + token * a.gate_stride, a.up + token * a.up_stride,
                   a.act_out ? a.act_out + token * a.act_stride : nullptr};
    quantize_token<kFp4, kTeam>(token, warp % kTeam, a.layout, a.out, src, share);
  }
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

// Resident blocks of `kernel` on the whole GPU.
template <class Kernel>
long long resident_blocks(Kernel kernel, int threads, std::size_t smem) {
  int per_sm = 0;
  ATOM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  return static_cast<long long>(per_sm < 1 ? 1 : per_sm) * num_sms();
}

constexpr int kMaxSlices = 8;

// A block per token while the tokens fit on the GPU at once (all warps of the block share a token; with
// row slices, `slices` blocks per token), else a warp per token; persistent grid: never more blocks than
// fit at once or than the tokens need, and a multiple of the slice count.
template <class Kernel, class Args>
void launch_teams(Kernel team_kernel, Kernel warp_kernel, int warps, std::size_t team_smem, std::size_t warp_smem,
                  int num_tokens, int requested_slices, cudaStream_t stream, Args args) {
  const int threads = warps * 32;
  for (auto [k, bytes] : {std::pair{team_kernel, team_smem}, std::pair{warp_kernel, warp_smem}}) {
    if (bytes > 48 * 1024) {  // (before the occupancy queries, which otherwise assume the 48 KB default)
      ATOM_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    }
  }
  const long long team_fit = resident_blocks(team_kernel, threads, team_smem);
  const bool teams = num_tokens <= team_fit;
  Kernel kernel = teams ? team_kernel : warp_kernel;
  const std::size_t smem = teams ? team_smem : warp_smem;
  const long long fit = teams ? team_fit : resident_blocks(kernel, threads, smem);
  // Units of work to deal out: the normal groups, or, when the outliers are spread too, 32-lane passes over
  // their 8-channel chunks.
  const ActQuantLayout& l = args.layout;
  const int units = outliers_spread_over_slices(l) ? l.n_outliers / 8 / 32 : (l.k - l.n_outliers) / l.group_size;
  int slices = 1;
  if (teams) {
    // Default: every warp of a slice gets a unit or more, and all tokens' slices fit on the GPU at once.
    const long long by_fit = team_fit / std::max(num_tokens, 1);
    slices = requested_slices > 0 ? requested_slices
                                   : static_cast<int>(std::min<long long>({kMaxSlices, units / warps, by_fit}));
    slices = std::clamp(slices, 1, kMaxSlices);  // a portable cluster holds 8 blocks
  }
  args.slices = slices;
  const int tokens_per_block = teams ? 1 : warps;
  const long long need = (static_cast<long long>(num_tokens) + tokens_per_block - 1) / tokens_per_block * slices;
  const long long blocks = std::min(need, std::max<long long>(fit / slices, 1) * slices);
  // The slices of a token form one thread-block cluster (consecutive blocks).
  launch_kernel(kernel, LaunchShape{dim3(static_cast<unsigned>(blocks)), dim3(static_cast<unsigned>(threads)), smem,
                                    static_cast<unsigned>(slices)},
                /*pdl=*/true, stream, args);
  ATOM_CUDA_CHECK_LAUNCH();
}

template <bool kNorm, bool kFp4>
void launch_row(const RowKernelArgs& a, int slices, cudaStream_t stream) {
  if (a.num_tokens == 0) return;
  launch_teams(row_quantize_kernel<kNorm, kFp4, kRowWarps>, row_quantize_kernel<kNorm, kFp4, 1>, kRowWarps,
               row_smem_bytes(a.layout.k, kNorm, kRowWarps), row_smem_bytes(a.layout.k, kNorm, 1), a.num_tokens,
               slices, stream, a);
}

template <bool kNorm>
void dispatch_row(const RowKernelArgs& a, int slices, cudaStream_t stream) {
  if (a.layout.format == ActFormat::kFp4) launch_row<kNorm, true>(a, slices, stream);
  else launch_row<kNorm, false>(a, slices, stream);
}

}  // namespace

void rmsnorm_quantize(const RmsNormQuantParams& p, cudaStream_t stream) {
  check_params(p);
  RowKernelArgs a{p.num_tokens,
                  p.layout,
                  reinterpret_cast<const __half*>(p.input),
                  p.input_stride,
                  reinterpret_cast<const __half*>(p.residual),
                  p.residual_stride,
                  reinterpret_cast<__half*>(p.residual_out),
                  p.residual_out_stride,
                  reinterpret_cast<const __half*>(p.weight),
                  p.eps,
                  p.perm,
                  p.out,
                  reinterpret_cast<__half*>(p.normed_out),
                  p.normed_stride,
                  1};
  dispatch_row<true>(a, p.slices, stream);
}

void reorder_quantize(const ReorderQuantParams& p, cudaStream_t stream) {
  check_params(p);
  RowKernelArgs a{p.num_tokens, p.layout, reinterpret_cast<const __half*>(p.input), p.input_stride, nullptr, 0,
                  nullptr,      0,        nullptr,                                  0.0f,           p.perm, p.out,
                  nullptr,      0,        1};
  dispatch_row<false>(a, p.slices, stream);
}

void silu_mul_quantize(const SiluMulQuantParams& p, cudaStream_t stream) {
  check_params(p);
  if (p.num_tokens == 0) return;
  SiluKernelArgs a{p.num_tokens,
                   p.layout,
                   reinterpret_cast<const __half*>(p.gate),
                   p.gate_stride,
                   reinterpret_cast<const __half*>(p.up),
                   p.up_stride,
                   p.out,
                   reinterpret_cast<__half*>(p.act_out),
                   p.act_stride,
                   1};
  if (p.layout.format == ActFormat::kFp4) {
    launch_teams(silu_quantize_kernel<true, kSiluWarps>, silu_quantize_kernel<true, 1>, kSiluWarps, 0, 0,
                 p.num_tokens, p.slices, stream, a);
  } else {
    launch_teams(silu_quantize_kernel<false, kSiluWarps>, silu_quantize_kernel<false, 1>, kSiluWarps, 0, 0,
                 p.num_tokens, p.slices, stream, a);
  }
}

}  // namespace atom::cuda
