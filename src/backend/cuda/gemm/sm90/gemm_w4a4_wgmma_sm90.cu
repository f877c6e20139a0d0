// gemm_w4a4o8_wgmma_sm90: Atom's W4A4 + INT8-outlier GEMM on Hopper's INT8 warpgroup MMA.
//
// Hopper has no INT4 tensor cores, so both 4-bit operands are widened to int8 (x16, folded into the scale):
//  - activations (wgmma A, from registers): each consumer thread loads 16 packed bytes per row and group
//    from shared memory and unpacks them with two logic ops per 4 codes;
//  - weights (wgmma B, from shared memory): three producer warps unpack the prepacked tile into the
//    128-byte-swizzled int8 layout the tensor cores read (one 16-byte load -> two 16-byte stores).
// The k order inside a group is permuted identically on both sides (see gemm_w4a4.h's layout), so the
// int32 group sums are the exact dot products x 256. Per group, int32 -> fp32 goes through the magic-number
// trick folded into t = fma(v, sa/256, -1.5*2^23*sa/256) = float(D)*sa (one rounding, as the reference),
// then acc = fma(t, sw, acc): groups in order, outliers last, so the output is bit-identical to
// atom::quant::atom_linear_reference.
//
// Block: 384 threads = producer warpgroup (warp 0: TMA/bulk-copy issue; warps 1-3: weight unpack) + two
// consumer warpgroups of 64 tokens each. Tile 128 tokens x BN channels; kStages-deep shared-memory ring with
// three mbarriers per stage (loaded: copies landed; full: weights unpacked; empty: consumers done).
#include <cuda.h>

#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/gemm/gemm_out.cuh"
#include "backend/cuda/gemm/gemm_ptx.cuh"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "backend/cuda/gemm/gemm_w4a4_layout.h"
#include "backend/cuda/gemm/sm90/tensor_map.h"

namespace atom::cuda {
namespace {

struct WgmmaParams {
  const std::uint16_t* a_scales;          // [m, groups] fp16
  const std::uint16_t* a_outlier_scales;  // [m] fp16
  const std::uint8_t* w_packed;
  const std::int8_t* w_outliers;
  const float* w_scales;
  void* out;
  const void* residual;
  int m, n, groups, chunks, m_tiles;
  int outlier_row_bytes;  // width of the activation outlier box (<= 128)
};

template <int BN>
struct Sm90Tile {
  static constexpr int kBM = 128;
  static constexpr int kStages = 5;
  static constexpr int kWInt8 = BN * 128;  // unpacked weights of one group / outlier chunk (swizzled)
  static constexpr int kA = kBM * 128;     // activations: packed INT4 (64 B/row) or INT8 outliers (<= 128 B/row)
  static constexpr int kWPacked = BN * 64;
  static constexpr int kWScale = BN * 4;
  static constexpr int kRegions = kStages * (kWInt8 + kA + kWPacked + kWScale);
  static constexpr int kSmemBytes = 1024 + kRegions + 3 * kStages * 8;
  static constexpr int kUnpackThreads = 96;
  static constexpr int kConsumerThreads = 256;
};

#ifdef ATOM_SM90A_DEVICE
template <int N>
__device__ __forceinline__ void wgmma_k32(int (&d)[N / 2], const std::uint32_t (&a)[4], std::uint64_t desc,
                                          int accumulate) {
  if constexpr (N == 128)
    ptx::wgmma_m64n128k32_s8_rs(d, a, desc, accumulate);
  else if constexpr (N == 64)
    ptx::wgmma_m64n64k32_s8_rs(d, a, desc, accumulate);
  else
    ptx::wgmma_m64n32k32_s8_rs(d, a, desc, accumulate);
}
#endif

// kAblate (diagnostics only, results wrong): 1 skips the weight unpack, 2 the group rescale, 3 the MMAs.
template <typename OutT, int BN, int kAblate = 0>
__global__ void __launch_bounds__(384, 1)
    gemm_w4a4o8_wgmma_sm90(const __grid_constant__ CUtensorMap tmap_a, const __grid_constant__ CUtensorMap tmap_ao,
                           const WgmmaParams p) {
#ifdef ATOM_SM90A_DEVICE
  using T = Sm90Tile<BN>;
  constexpr int S = T::kStages;
  extern __shared__ std::uint8_t smem_raw[];
  const std::uint32_t raw_addr = ptx::smem_u32(smem_raw);
  std::uint8_t* smem = smem_raw + (((raw_addr + 1023u) & ~1023u) - raw_addr);
  std::uint8_t* w_int8 = smem;                   // [S][kWInt8], 1024-aligned
  std::uint8_t* a_buf = w_int8 + S * T::kWInt8;  // [S][kA]
  std::uint8_t* w_packed = a_buf + S * T::kA;    // [S][kWPacked]
  float* w_scale = reinterpret_cast<float*>(w_packed + S * T::kWPacked);  // [S][BN]
  std::uint64_t* loaded = reinterpret_cast<std::uint64_t*>(w_scale + S * BN);
  std::uint64_t* full = loaded + S;
  std::uint64_t* empty = full + S;

  const int tid = threadIdx.x;
  const int wg = tid / 128, ltid = tid % 128;
  const int m_tile = blockIdx.x % p.m_tiles, n_tile = blockIdx.x / p.m_tiles;
  const int m0 = m_tile * T::kBM, n0 = n_tile * BN;
  const int G = p.groups, total = p.groups + p.chunks;
  const int w_tile = n0 / kW4A4TileRows, w_row0 = n0 % kW4A4TileRows;  // prepacked tile, first row used

  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      ptx::mbar_init(&loaded[s], 1);
      ptx::mbar_init(&full[s], T::kUnpackThreads);
      ptx::mbar_init(&empty[s], T::kConsumerThreads);
    }
    ptx::mbar_fence_init();
  }
  __syncthreads();

  if (wg == 0) {
    // ------------------------------------------------------------------ producer warpgroup
    ptx::setmaxnreg_dec<40>();
    if (ltid == 0) {
      for (int it = 0; it < total; ++it) {
        const int s = it % S;
        if (it >= S) ptx::mbar_wait(&empty[s], ((it / S) - 1) & 1);
        const bool outlier = it >= G;
        const unsigned bytes = T::kWScale + (outlier ? unsigned(T::kWInt8 + p.outlier_row_bytes * T::kBM)
                                                     : unsigned(T::kWPacked + 64 * T::kBM));
        ptx::mbar_arrive_expect_tx(&loaded[s], bytes);
        if (!outlier) {
          ptx::tma_load_2d(a_buf + s * T::kA, &tmap_a, it * (kW4A4Group / 2), m0, &loaded[s]);
          const std::uint8_t* src = p.w_packed + ((std::size_t)w_tile * G + it) * 4 * kW4A4TileRows * 16;
          if constexpr (BN == kW4A4TileRows) {
            ptx::bulk_copy_g2s(w_packed + s * T::kWPacked, src, T::kWPacked, &loaded[s]);
          } else {
#pragma unroll
            for (int j = 0; j < 4; ++j)
              ptx::bulk_copy_g2s(w_packed + s * T::kWPacked + j * BN * 16, src + (j * kW4A4TileRows + w_row0) * 16,
                                 BN * 16, &loaded[s]);
          }
        } else {
          const int c = it - G;
          ptx::tma_load_2d(a_buf + s * T::kA, &tmap_ao, c * kW4A4OutlierChunk, m0, &loaded[s]);
          const std::int8_t* src =
              p.w_outliers + (((std::size_t)w_tile * p.chunks + c) * kW4A4TileRows + w_row0) * kW4A4OutlierChunk;
          ptx::bulk_copy_g2s(w_int8 + s * T::kWInt8, src, T::kWInt8, &loaded[s]);
        }
        const int entry = outlier ? G : it;
        ptx::bulk_copy_g2s(w_scale + s * BN, p.w_scales + ((std::size_t)w_tile * (G + 1) + entry) * kW4A4TileRows + w_row0,
                           T::kWScale, &loaded[s]);
      }
    } else if (ltid >= 32) {
      const int ut = ltid - 32;
      for (int it = 0; it < total; ++it) {
        const int s = it % S;
        ptx::mbar_wait(&loaded[s], (it / S) & 1);
        if (it < G && kAblate != 1) {
          const std::uint32_t src = ptx::smem_u32(w_packed + s * T::kWPacked);
          const std::uint32_t dst = ptx::smem_u32(w_int8 + s * T::kWInt8);
          for (int c = ut; c < BN * 4; c += T::kUnpackThreads) {
            const int j = c / BN, row = c % BN;
            const uint4 v = ptx::lds_v4(src + c * 16);
            const uint4 lo = make_uint4(ptx::nibbles_lo_x16(v.x), ptx::nibbles_lo_x16(v.y), ptx::nibbles_lo_x16(v.z),
                                        ptx::nibbles_lo_x16(v.w));
            const uint4 hi = make_uint4(ptx::nibbles_hi_x16(v.x), ptx::nibbles_hi_x16(v.y), ptx::nibbles_hi_x16(v.z),
                                        ptx::nibbles_hi_x16(v.w));
            const std::uint32_t row_addr = dst + row * 128;
            ptx::sts_v4(row_addr + (((2 * j) ^ (row & 7)) << 4), lo);
            ptx::sts_v4(row_addr + (((2 * j + 1) ^ (row & 7)) << 4), hi);
          }
          ptx::fence_proxy_async_smem();
        }
        ptx::mbar_arrive(&full[s]);
      }
    }
  } else {
    // ------------------------------------------------------------------ consumer warpgroups
    // The warpgroup's 64 x BN tile is computed as two 64 x BN/2 halves with their own int32 accumulators:
    // while the tensor cores run one half, the threads rescale the other (ping-pong inside the warpgroup).
    ptx::setmaxnreg_inc<232>();
    constexpr int H = BN / 2;       // columns per half
    constexpr int HR = H / 2;       // int32 accumulator registers per half
    const int consumer = wg - 1;
    const int warp = ltid / 32, lane = ltid % 32, q = lane % 4;
    const int row0 = consumer * 64 + warp * 16 + lane / 4;  // tile rows row0 and row0 + 8
    const int grow0 = min(m0 + row0, p.m - 1), grow1 = min(m0 + row0 + 8, p.m - 1);  // clamped for scale loads

    float acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;
    int iacc0[HR], iacc1[HR];
#pragma unroll
    for (int i = 0; i < HR; ++i) iacc0[i] = iacc1[i] = 0;

    auto load_scales = [&](int it, std::uint16_t& b0, std::uint16_t& b1) {
      if (it < G) {
        b0 = p.a_scales[(std::size_t)grow0 * G + it];
        b1 = p.a_scales[(std::size_t)grow1 * G + it];
      } else {
        b0 = p.a_outlier_scales[grow0];
        b1 = p.a_outlier_scales[grow1];
      }
    };
    // Waits for stage `it` and loads this thread's activation fragments of it.
    auto load_a = [&](int it, std::uint32_t (&a)[4][4]) {
      const int s = it % S;
      const unsigned parity = (it / S) & 1;
      ptx::mbar_wait(&loaded[s], parity);
      ptx::mbar_wait(&full[s], parity);
      const std::uint32_t a_base = ptx::smem_u32(a_buf + s * T::kA);
      if (it < G) {
        const uint4 p0 = ptx::lds_v4(a_base + row0 * 64 + q * 16);
        const uint4 p1 = ptx::lds_v4(a_base + (row0 + 8) * 64 + q * 16);
        const std::uint32_t w0[4] = {p0.x, p0.y, p0.z, p0.w}, w1[4] = {p1.x, p1.y, p1.z, p1.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          a[j][0] = ptx::nibbles_lo_x16(w0[j]);
          a[j][1] = ptx::nibbles_lo_x16(w1[j]);
          a[j][2] = ptx::nibbles_hi_x16(w0[j]);
          a[j][3] = ptx::nibbles_hi_x16(w1[j]);
        }
      } else {
        const int stride = p.outlier_row_bytes;
        const uint4 x0 = ptx::lds_v4(a_base + row0 * stride + q * 32);
        const uint4 x1 = ptx::lds_v4(a_base + row0 * stride + q * 32 + 16);
        const uint4 y0 = ptx::lds_v4(a_base + (row0 + 8) * stride + q * 32);
        const uint4 y1 = ptx::lds_v4(a_base + (row0 + 8) * stride + q * 32 + 16);
        const std::uint32_t w0[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
        const std::uint32_t w1[8] = {y0.x, y0.y, y0.z, y0.w, y1.x, y1.y, y1.z, y1.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          a[j][0] = w0[2 * j];
          a[j][1] = w1[2 * j];
          a[j][2] = w0[2 * j + 1];
          a[j][3] = w1[2 * j + 1];
        }
      }
    };
    // Issues the 4 k-steps of one half of iteration `it` as one wgmma group.
    // (No operand fences in here: ptxas serializes all wgmmas if a stage's accumulators are touched by other
    // instructions between the stage's first wgmma and its wait.)
    auto issue = [&](int it, int half, const std::uint32_t (&a)[4][4], int (&d)[HR]) {
      if constexpr (kAblate == 3) return;
      ptx::wgmma_fence();
      const std::uint64_t desc =
          ptx::smem_desc_k128_sw128(ptx::smem_u32(w_int8 + (it % S) * T::kWInt8 + half * H * 128));
      const int keep = it > G ? 1 : 0;  // outlier chunks after the first accumulate into one int32 sum
#pragma unroll
      for (int j = 0; j < 4; ++j) wgmma_k32<H>(d, a[j], desc + 2 * j, (j > 0) ? 1 : keep);
      ptx::wgmma_commit();
    };
    // acc (+)= the half's int32 sums, scaled: groups by magic-number conversion, outliers after the last chunk.
    auto rescale = [&](int it, int half, int (&d)[HR], float sa0, float sa1) {
      if constexpr (kAblate == 2) {
        if (it == total - 1)
#pragma unroll
          for (int i = 0; i < HR; ++i) acc[half * HR + i] += static_cast<float>(d[i]);
        return;
      }
      const std::uint32_t sw_base = ptx::smem_u32(w_scale + (it % S) * BN);
      if (it < G) {
        // Codes are x16 on both sides: the int32 sum is 256 x the dot product (|sum| <= 2^21).
        const float s0 = sa0 * (1.0f / 256.0f), s1 = sa1 * (1.0f / 256.0f);
        const float b0 = -ptx::kMagicF * s0, b1 = -ptx::kMagicF * s1;
#pragma unroll
        for (int cc = 0; cc < H / 16; ++cc) {
          const float4 sw4 = ptx::lds_f4(sw_base + ((half * H / 16 + cc) * 4 + q) * 16);
          const float sw[4] = {sw4.x, sw4.y, sw4.z, sw4.w};
#pragma unroll
          for (int jj = 0; jj < 2; ++jj)
#pragma unroll
            for (int v1 = 0; v1 < 2; ++v1)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int idx = 4 * (2 * cc + jj) + 2 * v1 + e;
                const float t = __fmaf_rn(ptx::magic_i2f_biased(d[idx]), v1 ? s1 : s0, v1 ? b1 : b0);
                acc[half * HR + idx] = __fmaf_rn(t, sw[2 * jj + e], acc[half * HR + idx]);
              }
        }
      } else if (it == total - 1) {
#pragma unroll
        for (int cc = 0; cc < H / 16; ++cc) {
          const float4 sw4 = ptx::lds_f4(sw_base + ((half * H / 16 + cc) * 4 + q) * 16);
          const float sw[4] = {sw4.x, sw4.y, sw4.z, sw4.w};
#pragma unroll
          for (int jj = 0; jj < 2; ++jj)
#pragma unroll
            for (int v1 = 0; v1 < 2; ++v1)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int idx = 4 * (2 * cc + jj) + 2 * v1 + e;
                const float t = __fmul_rn(__int2float_rn(d[idx]), v1 ? sa1 : sa0);
                acc[half * HR + idx] = __fmaf_rn(t, sw[2 * jj + e], acc[half * HR + idx]);
              }
        }
      }
    };
    // Schedule: every wgmma stage (ended by wait<0>) issues one half and, while it runs, rescales the other
    // half from the previous stage. (ptxas keeps wgmmas asynchronous only if no accumulator written in a stage
    // is touched by other instructions during that stage.) The activation fragments of the next iteration are
    // loaded into a_next while the current ones (a_cur) are still being read by the tensor cores.
    std::uint32_t a_cur[4][4], a_next[4][4];
    std::uint16_t sb0, sb1;
    float sa0, sa1;
    auto next_a = [&]() {
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) a_cur[j][i] = a_next[j][i];
    };
    load_scales(0, sb0, sb1);
    load_a(0, a_next);
#pragma unroll
    for (int i = 0; i < HR; ++i) {  // materialize the accumulators before the first stage
      ptx::fence_operand(iacc0[i]);
      ptx::fence_operand(iacc1[i]);
    }
    next_a();
    issue(0, 0, a_cur, iacc0);
    sa0 = fp16_bits_to_float(sb0);
    sa1 = fp16_bits_to_float(sb1);
    if (total > 1) load_scales(1, sb0, sb1);
    ptx::wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < HR; ++i) ptx::fence_operand(iacc0[i]);
    issue(0, 1, a_cur, iacc1);
    rescale(0, 0, iacc0, sa0, sa1);
    if (total > 1) load_a(1, a_next);
    ptx::wgmma_wait<0>();
    // After each wait (between stages): keep the registers the retired wgmmas read or wrote pinned until here,
    // so the compiler neither reads accumulators early nor reuses A registers still read by the tensor cores.
    auto pin = [&](int (&d)[HR]) {
#pragma unroll
      for (int i = 0; i < HR; ++i) ptx::fence_operand(d[i]);
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) ptx::fence_operand(a_cur[j][i]);
    };
    pin(iacc1);
    for (int it = 1; it < total; ++it) {
      next_a();
      issue(it, 0, a_cur, iacc0);
      rescale(it - 1, 1, iacc1, sa0, sa1);
      ptx::mbar_arrive(&empty[(it - 1) % S]);
      sa0 = fp16_bits_to_float(sb0);
      sa1 = fp16_bits_to_float(sb1);
      if (it + 1 < total) load_scales(it + 1, sb0, sb1);
      ptx::wgmma_wait<0>();
      pin(iacc0);
      issue(it, 1, a_cur, iacc1);
      rescale(it, 0, iacc0, sa0, sa1);
      if (it + 1 < total) load_a(it + 1, a_next);
      ptx::wgmma_wait<0>();
      pin(iacc1);
    }
    rescale(total - 1, 1, iacc1, sa0, sa1);
    ptx::mbar_arrive(&empty[(total - 1) % S]);

    // ------------------------------------------------------------------ epilogue
#pragma unroll
    for (int v1 = 0; v1 < 2; ++v1) {
      const int row = m0 + row0 + 8 * v1;
      if (row >= p.m) continue;
      OutT* out_row = static_cast<OutT*>(p.out) + (std::size_t)row * p.n;
      const OutT* res_row = p.residual ? static_cast<const OutT*>(p.residual) + (std::size_t)row * p.n : nullptr;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        const int col = n0 + 8 * j + 2 * q;
        if (col >= p.n) continue;
        float y0 = acc[4 * j + 2 * v1], y1 = acc[4 * j + 2 * v1 + 1];
        if (res_row) {
          const float2 r = GemmOut<OutT>::load2(res_row + col);
          y0 = __fadd_rn(y0, r.x);
          y1 = __fadd_rn(y1, r.y);
        }
        GemmOut<OutT>::store2(out_row + col, y0, y1);
      }
    }
  }
#endif  // ATOM_SM90A_DEVICE
}

__global__ void sm90a_probe(int* flag) {
#ifdef ATOM_SM90A_DEVICE
  *flag = 1;
#else
  *flag = 0;
#endif
}

template <typename OutT, int BN, int kAblate = 0>
void launch_typed(const GemmW4A4Args& args, cudaStream_t stream) {
  using T = Sm90Tile<BN>;
  const auto kernel = gemm_w4a4o8_wgmma_sm90<OutT, BN, kAblate>;
  static bool configured = [&] {
    ATOM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes));
    return true;
  }();
  (void)configured;
  const W4A4PackedWeights& w = args.w;
  WgmmaParams p{};
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
  p.m_tiles = layout::ceil_div(p.m, T::kBM);
  p.outlier_row_bytes = w.n_outliers < kW4A4OutlierChunk ? w.n_outliers : kW4A4OutlierChunk;
  CUtensorMap tmap_a{}, tmap_ao{};
  if (p.groups > 0) tmap_a = detail::make_u8_tensor_map(args.a.packed, w.k_normal / 2, p.m, kW4A4Group / 2, T::kBM);
  if (p.chunks > 0) tmap_ao = detail::make_u8_tensor_map(args.a.outliers, w.n_outliers, p.m, p.outlier_row_bytes, T::kBM);
  const unsigned blocks = static_cast<unsigned>(p.m_tiles) * layout::ceil_div(p.n, BN);
  kernel<<<blocks, 384, T::kSmemBytes, stream>>>(tmap_a, tmap_ao, p);
  ATOM_CUDA_CHECK_LAUNCH();
}

}  // namespace

namespace detail {

bool wgmma_sm90_compiled() {
  // Per device: whether the code the driver loads for this GPU was built for sm_90a (a plain sm_90 or older
  // target compiles the kernel body out).
  static thread_local int cached_device = -1;
  static thread_local bool cached = false;
  int dev = 0;
  ATOM_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev == cached_device) return cached;
  int* flag = nullptr;
  int host = 0;
  ATOM_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
  sm90a_probe<<<1, 1>>>(flag);
  const cudaError_t launched = cudaGetLastError();
  if (launched == cudaSuccess) ATOM_CUDA_CHECK(cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost));
  ATOM_CUDA_CHECK(cudaFree(flag));
  cached_device = dev;
  cached = launched == cudaSuccess && host == 1;
  return cached;
}

void launch_w4a4_wgmma_sm90_ablation(const GemmW4A4Args& args, int ablate, cudaStream_t stream) {
  switch (ablate) {
    case 1: launch_typed<__half, 128, 1>(args, stream); break;
    case 2: launch_typed<__half, 128, 2>(args, stream); break;
    case 3: launch_typed<__half, 128, 3>(args, stream); break;
    default: launch_typed<__half, 128>(args, stream); break;
  }
}

void launch_w4a4_wgmma_sm90(const GemmW4A4Args& args, int bn, cudaStream_t stream) {
  const bool bf16 = args.out_type == GemmOutType::kBF16;
  if (bn == 128)
    bf16 ? launch_typed<__nv_bfloat16, 128>(args, stream) : launch_typed<__half, 128>(args, stream);
  else
    bf16 ? launch_typed<__nv_bfloat16, 64>(args, stream) : launch_typed<__half, 64>(args, stream);
}

}  // namespace detail
}  // namespace atom::cuda
