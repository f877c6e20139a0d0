// Host side of the W4A4 GEMM: shape checks, the host prepack and the kernel dispatch.
#include <algorithm>
#include <cstring>

#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "backend/cuda/gemm/gemm_w4a4_layout.h"
#include "common/error.h"
#include "common/half.h"

namespace atom::cuda {

W4A4PackedSizes w4a4_packed_sizes(int n, int k_normal, int n_outliers) {
  const std::size_t tiles = layout::ceil_div(n, kW4A4TileRows);
  const std::size_t groups = k_normal / kW4A4Group;
  const std::size_t chunks = layout::ceil_div(n_outliers, kW4A4OutlierChunk);
  W4A4PackedSizes s;
  s.packed_bytes = tiles * groups * kW4A4TileRows * (kW4A4Group / 2);
  s.outlier_bytes = tiles * chunks * kW4A4TileRows * kW4A4OutlierChunk;
  s.scale_bytes = tiles * (groups + 1) * kW4A4TileRows * sizeof(float);
  return s;
}

void validate_w4a4_shape(int n, int k_normal, int n_outliers, const char* what) {
  if (n <= 0 || n % 8 != 0) fail("{}: output channels n = {} must be a positive multiple of 8", what, n);
  if (k_normal < 0 || k_normal % kW4A4Group != 0)
    fail("{}: k_normal = {} must be a non-negative multiple of the group size {}", what, k_normal, kW4A4Group);
  if (n_outliers < 0 || n_outliers % 16 != 0)
    fail("{}: n_outliers = {} must be a non-negative multiple of 16", what, n_outliers);
  if (k_normal + n_outliers == 0) fail("{}: no input channels (k_normal = n_outliers = 0)", what);
}

void prepack_w4a4_weights_host(const W4A4CanonicalWeights& w, std::uint8_t* packed, std::int8_t* outliers,
                               float* scales) {
  validate_w4a4_shape(w.n, w.k_normal, w.n_outliers, "prepack_w4a4_weights_host");
  const int tiles = layout::ceil_div(w.n, kW4A4TileRows);
  const int groups = w.k_normal / kW4A4Group;
  const int chunks = layout::ceil_div(w.n_outliers, kW4A4OutlierChunk);
  const std::size_t row_bytes = w.k_normal / 2;
  for (int t = 0; t < tiles; ++t) {
    for (int g = 0; g < groups; ++g)
      for (int piece = 0; piece < 4; ++piece)
        for (int r = 0; r < kW4A4TileRows; ++r) {
          const int row = t * kW4A4TileRows + r;
          std::uint8_t* dst = packed + ((((std::size_t)t * groups + g) * 4 + piece) * kW4A4TileRows + r) * 16;
          for (int word = 0; word < 4; ++word) {
            const int cw = layout::packed_canonical_word(piece, word);
            if (row < w.n)
              std::memcpy(dst + 4 * word, w.packed + row * row_bytes + g * (kW4A4Group / 2) + cw * 4, 4);
            else
              std::memset(dst + 4 * word, 0, 4);
          }
        }
    for (int c = 0; c < chunks; ++c)
      for (int r = 0; r < kW4A4TileRows; ++r) {
        const int row = t * kW4A4TileRows + r;
        std::int8_t* dst = outliers + (((std::size_t)t * chunks + c) * kW4A4TileRows + r) * kW4A4OutlierChunk;
        for (int p = 0; p < kW4A4OutlierChunk; ++p) {
          const int ch = c * kW4A4OutlierChunk + layout::outlier_channel_of_byte(r, p);
          dst[p] = (row < w.n && ch < w.n_outliers) ? w.outliers[(std::size_t)row * w.n_outliers + ch] : 0;
        }
      }
    for (int e = 0; e <= groups; ++e)
      for (int pos = 0; pos < kW4A4TileRows; ++pos) {
        const int row = t * kW4A4TileRows + layout::scale_channel_of_position(pos);
        float v = 0.0f;
        if (row < w.n) {
          if (e < groups)
            v = fp16_to_fp32(w.scales[(std::size_t)row * groups + e]);
          else if (w.n_outliers > 0)
            v = fp16_to_fp32(w.outlier_scales[row]);
        }
        scales[((std::size_t)t * (groups + 1) + e) * kW4A4TileRows + pos] = v;
      }
  }
}

void prepack_w4a4_weights_device(const W4A4CanonicalWeights& canonical, const W4A4PackedWeights& dst,
                                 cudaStream_t stream) {
  validate_w4a4_shape(canonical.n, canonical.k_normal, canonical.n_outliers, "prepack_w4a4_weights_device");
  if (dst.n != canonical.n || dst.k_normal != canonical.k_normal || dst.n_outliers != canonical.n_outliers)
    fail("prepack_w4a4_weights_device: destination shape (n {}, k_normal {}, n_outliers {}) differs from the "
         "source (n {}, k_normal {}, n_outliers {})",
         dst.n, dst.k_normal, dst.n_outliers, canonical.n, canonical.k_normal, canonical.n_outliers);
  if ((canonical.k_normal > 0 && (!canonical.packed || !canonical.scales || !dst.packed)) ||
      (canonical.n_outliers > 0 && (!canonical.outliers || !canonical.outlier_scales || !dst.outliers)) ||
      !dst.scales)
    fail("prepack_w4a4_weights_device: a null pointer among the tensors the shape needs");
  detail::launch_prepack_w4a4(canonical, dst, stream);
}

// ---- Dispatch.

const char* w4a4_kernel_name(W4A4Kernel k) {
  switch (k) {
    case W4A4Kernel::kAuto: return "auto";
    case W4A4Kernel::kWgmmaBn128: return "gemm_w4a4o8_wgmma_sm90<bn128>";
    case W4A4Kernel::kWgmmaBn64: return "gemm_w4a4o8_wgmma_sm90<bn64>";
    case W4A4Kernel::kMmaS8: return "gemm_w4a4o8_mma_s8";
    case W4A4Kernel::kMmaS4: return "gemm_w4a4o8_mma_s4";
    case W4A4Kernel::kStreamS8: return "gemm_w4a4o8_stream_s8";
    case W4A4Kernel::kStreamS4: return "gemm_w4a4o8_stream_s4";
  }
  return "?";
}

namespace {
struct DeviceCaps {
  int sm = 0;
  int num_sms = 0;
};
// Per device, queried once: the dispatchers ask on every launch.
DeviceCaps device_caps() {
  int dev = 0;
  ATOM_CUDA_CHECK(cudaGetDevice(&dev));
  static thread_local int cached_device = -1;
  static thread_local DeviceCaps cached;
  if (dev == cached_device) return cached;
  DeviceCaps c;
  int major = 0, minor = 0;
  ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&c.num_sms, cudaDevAttrMultiProcessorCount, dev));
  c.sm = major * 10 + minor;
  cached_device = dev;
  cached = c;
  return c;
}
bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }
}  // namespace

W4A4Kernel w4a4_auto_kernel(int m, int n) {
  const DeviceCaps caps = device_caps();
  if (caps.sm >= 90 && caps.sm < 100 && detail::wgmma_sm90_compiled()) {
    // Decode sizes stream the weights once with split-K warp MMA; from 64 tokens on the wgmma tiles win
    // (measured on an H200: M = 64, N = 28672 takes 63 us with wgmma, 130 us split-K). The one-pass kernel
    // beats the persistent stream kernel at M <= 16 (N = 28672, M = 1: 25 vs 34 us); at 16 < M <= 32 the
    // stream kernel wins for wide layers (N = 28672, M = 32: 65 vs 76 us; N = 4096: 14 vs 13 us).
    if (m <= 16) return W4A4Kernel::kMmaS8;
    if (m <= 32) return n >= 16384 ? W4A4Kernel::kStreamS8 : W4A4Kernel::kMmaS8;
    // Fewer than ~1.5 waves of 128x128 tiles: halve the tile width to fill the machine.
    const long tiles128 = (long)layout::ceil_div(m, 128) * layout::ceil_div(n, 128);
    return tiles128 * 2 < 3L * caps.num_sms ? W4A4Kernel::kWgmmaBn64 : W4A4Kernel::kWgmmaBn128;
  }
  if (caps.sm >= 90) return W4A4Kernel::kMmaS8;  // no native INT4 tensor cores from Hopper on
  return W4A4Kernel::kMmaS4;
}

void gemm_w4a4_o8(const GemmW4A4Args& args, cudaStream_t stream, W4A4Kernel kernel) {
  const W4A4PackedWeights& w = args.w;
  validate_w4a4_shape(w.n, w.k_normal, w.n_outliers, "gemm_w4a4_o8 weights");
  const W4A4Activations& a = args.a;
  if (a.m < 0) fail("gemm_w4a4_o8: m = {} is negative", a.m);
  if (a.m == 0) return;
  if (!args.out) fail("gemm_w4a4_o8: output pointer is null");
  if (w.k_normal > 0 && (!a.packed || !a.scales || !w.packed))
    fail("gemm_w4a4_o8: k_normal = {} but the INT4 activations, their scales or the packed weights are null",
         w.k_normal);
  if (w.n_outliers > 0 && (!a.outliers || !a.outlier_scales || !w.outliers))
    fail("gemm_w4a4_o8: n_outliers = {} but the outlier activations, their scales or weights are null",
         w.n_outliers);
  if (!w.scales) fail("gemm_w4a4_o8: weight scales are null");
  if (!aligned16(a.packed) || !aligned16(a.outliers) || !aligned16(w.packed) || !aligned16(w.outliers) ||
      !aligned16(w.scales))
    fail("gemm_w4a4_o8: activation and weight code/scale buffers must be 16-byte aligned");
  if ((reinterpret_cast<std::uintptr_t>(args.out) & 3u) || (reinterpret_cast<std::uintptr_t>(args.residual) & 3u))
    fail("gemm_w4a4_o8: output and residual must be 4-byte aligned");
  if (kernel == W4A4Kernel::kAuto) kernel = w4a4_auto_kernel(a.m, w.n);
  const DeviceCaps caps = device_caps();
  switch (kernel) {
    case W4A4Kernel::kWgmmaBn128:
    case W4A4Kernel::kWgmmaBn64:
      if (caps.sm < 90 || caps.sm >= 100 || !detail::wgmma_sm90_compiled())
        fail("gemm_w4a4_o8: {} needs an sm_90 device and a build with 90a in ATOM_CUDA_ARCHS (device sm_{})",
             w4a4_kernel_name(kernel), caps.sm);
      detail::launch_w4a4_wgmma_sm90(args, kernel == W4A4Kernel::kWgmmaBn128 ? 128 : 64, stream);
      return;
    case W4A4Kernel::kMmaS8:
    case W4A4Kernel::kMmaS4:
      if (caps.sm < 80) fail("gemm_w4a4_o8: {} needs sm_80 or newer (device sm_{})", w4a4_kernel_name(kernel), caps.sm);
      detail::launch_w4a4_mma(args, kernel == W4A4Kernel::kMmaS4, stream);
      return;
    case W4A4Kernel::kStreamS8:
    case W4A4Kernel::kStreamS4: {
      if (caps.sm < 80) fail("gemm_w4a4_o8: {} needs sm_80 or newer (device sm_{})", w4a4_kernel_name(kernel), caps.sm);
      detail::W4A4StreamConfig config;
      config.native_s4 = kernel == W4A4Kernel::kStreamS4;
      detail::launch_w4a4_stream(args, config, stream);
      return;
    }
    case W4A4Kernel::kAuto: break;
  }
  fail("gemm_w4a4_o8: unknown kernel");
}

// ---- Serving sizes: int8 activations, swapped operands (sm_90a).

int w4a4_s8_row_bytes(int k_normal, int n_outliers) {
  return k_normal + layout::ceil_div(n_outliers, kW4A4OutlierChunk) * kW4A4OutlierChunk;
}

const char* w4a4_swapab_tile_name(W4A4SwapAbTile tile) {
  switch (tile) {
    case W4A4SwapAbTile::kAuto: return "auto";
    case W4A4SwapAbTile::kT16C64: return "gemm_w4a4o8_swapab_sm90<t16,c64>";
    case W4A4SwapAbTile::kT32C64: return "gemm_w4a4o8_swapab_sm90<t32,c64>";
    case W4A4SwapAbTile::kT32C128: return "gemm_w4a4o8_swapab_sm90<t32,c128>";
    case W4A4SwapAbTile::kT64C64: return "gemm_w4a4o8_swapab_sm90<t64,c64>";
    case W4A4SwapAbTile::kT64C128: return "gemm_w4a4o8_swapab_sm90<t64,c128>";
    case W4A4SwapAbTile::kT128C64: return "gemm_w4a4o8_swapab_sm90<t128,c64>";
  }
  return "?";
}

bool w4a4_swapab_available() {
  const DeviceCaps caps = device_caps();
  return caps.sm >= 90 && caps.sm < 100 && detail::wgmma_sm90_compiled();
}

// The rules below are read off the H100 sweep of every tile and split count (bench_gemm, 2026-12-07 15:45 UTC,
// docs/data/gemm/bench_gemm_h100_2026-12-07_splitk.csv; docs/notes/gemm.md). Summed over the Llama-2-7B shapes
// the serving-size kernel beats the packed-layout kernels at 17-64 rows (M = 32: 91 vs 126 us, M = 64: 129 vs
// 171) and loses at 16 rows and from 128 rows on.
bool w4a4_prefers_s8_activations(int m, int n) {
  (void)n;
  return m > 16 && m <= 64 && w4a4_swapab_available();
}

W4A4SwapAbTile w4a4_swapab_auto_tile(int m, int n) {
  // Up to 64 rows: 32-token stages on one warpgroup, two CTAs per SM (fastest at M = 32 and 64 summed over the
  // shapes). Above: 64-token stages on one warpgroup (t64 x c128 is faster there but not bit-exact now).
  (void)n;
  return m <= 64 ? W4A4SwapAbTile::kT32C64 : W4A4SwapAbTile::kT64C64;
}

namespace {
// Measured: two CTAs per output tile win while the doubled grid still fits one wave (4096 x 4096 at M = 32:
// 10.5 us vs 15.7 unsplit); past a wave, or with 4 or 8 splits, the cluster's extra CTAs cost more than the
// shorter walk over K saves (4 splits: 14.6 us, 8: 19.8).
int swapab_auto_splits(int m, int n, int units, W4A4SwapAbTile tile) {
  if (tile == W4A4SwapAbTile::kAuto) tile = w4a4_swapab_auto_tile(m, n);
  const detail::W4A4SwapAbTileShape shape = detail::w4a4_swapab_tile_shape(tile);
  const int tiles = layout::ceil_div(std::max(m, 1), shape.tokens) * layout::ceil_div(n, shape.channels);
  const int slots = std::max(device_caps().num_sms, 1) * shape.ctas_per_sm;
  return (2 * tiles <= slots && units / 2 >= kW4A4MinUnitsPerSplit) ? 2 : 1;
}
}  // namespace

int w4a4_swapab_auto_splits(int m, int n, int k_normal, int n_outliers, W4A4SwapAbTile tile) {
  return swapab_auto_splits(m, n, k_normal / kW4A4Group + (n_outliers > 0 ? 1 : 0), tile);
}
int w8a8_swapab_auto_splits(int m, int n, int k, W4A4SwapAbTile tile) {
  return swapab_auto_splits(m, n, layout::ceil_div(k, 128), tile);
}

void gemm_w4a4_o8_s8(const GemmW4A4S8Args& args, cudaStream_t stream, W4A4SwapAbTile tile, int k_splits) {
  const W4A4PackedWeights& w = args.w;
  validate_w4a4_shape(w.n, w.k_normal, w.n_outliers, "gemm_w4a4_o8_s8 weights");
  const W4A4ActivationsS8& a = args.a;
  if (a.m < 0) fail("gemm_w4a4_o8_s8: m = {} is negative", a.m);
  if (k_splits < 0) fail("gemm_w4a4_o8_s8: k_splits = {} is negative (0 picks the split count)", k_splits);
  if (a.m == 0) return;
  if (!args.out || !a.codes || !w.scales) fail("gemm_w4a4_o8_s8: output, activation codes or weight scales are null");
  if (w.k_normal > 0 && (!a.scales || !w.packed))
    fail("gemm_w4a4_o8_s8: k_normal = {} but the activation scales or the packed weights are null", w.k_normal);
  if (w.n_outliers > 0 && (!a.outlier_scales || !w.outliers))
    fail("gemm_w4a4_o8_s8: n_outliers = {} but the outlier scales or weights are null", w.n_outliers);
  if (!aligned16(a.codes) || !aligned16(w.packed) || !aligned16(w.outliers) || !aligned16(w.scales))
    fail("gemm_w4a4_o8_s8: activation codes and weight buffers must be 16-byte aligned");
  if (!aligned16(args.out) || !aligned16(args.residual))
    fail("gemm_w4a4_o8_s8: output and residual must be 16-byte aligned");
  if (!w4a4_swapab_available())
    fail("gemm_w4a4_o8_s8: needs an sm_90 device and a build with 90a in ATOM_CUDA_ARCHS (device sm_{})",
         device_caps().sm);
  if (tile == W4A4SwapAbTile::kAuto) tile = w4a4_swapab_auto_tile(a.m, w.n);
  if (k_splits == 0) k_splits = w4a4_swapab_auto_splits(a.m, w.n, w.k_normal, w.n_outliers, tile);
  const int units = w.k_normal / kW4A4Group + (w.n_outliers > 0 ? 1 : 0);
  k_splits = std::min({k_splits, units, kW4A4MaxSplits});
  detail::launch_w4a4_swapab_sm90(args, tile, k_splits, stream);
}

void gemm_w8a8_s8(const GemmW8A8Args& args, cudaStream_t stream, W4A4SwapAbTile tile, int k_splits) {
  if (args.n <= 0 || args.n % 8 != 0 || args.k <= 0 || args.k % 16 != 0)
    fail("gemm_w8a8_s8: n = {} must be a positive multiple of 8 and k = {} of 16", args.n, args.k);
  if (args.m < 0) fail("gemm_w8a8_s8: m = {} is negative", args.m);
  if (k_splits < 0) fail("gemm_w8a8_s8: k_splits = {} is negative (0 picks the split count)", k_splits);
  if (args.m == 0) return;
  if (!args.x || !args.x_scales || !args.w || !args.w_scales || !args.out)
    fail("gemm_w8a8_s8: a null activation, scale, weight or output pointer");
  if (!aligned16(args.x) || !aligned16(args.w) || !aligned16(args.w_scales) || !aligned16(args.out) ||
      !aligned16(args.residual))
    fail("gemm_w8a8_s8: activations, weights, weight scales, output and residual must be 16-byte aligned");
  if (!w4a4_swapab_available())
    fail("gemm_w8a8_s8: needs an sm_90 device and a build with 90a in ATOM_CUDA_ARCHS (device sm_{})",
         device_caps().sm);
  if (tile == W4A4SwapAbTile::kAuto) tile = w4a4_swapab_auto_tile(args.m, args.n);
  if (k_splits == 0) k_splits = w8a8_swapab_auto_splits(args.m, args.n, args.k, tile);
  k_splits = std::min({k_splits, layout::ceil_div(args.k, 128), kW4A4MaxSplits});
  detail::launch_w8a8_swapab_sm90(args, tile, k_splits, stream);
}

namespace {
void check_s8_conversion(const W4A4Activations& src, int k_normal, int n_outliers, const W4A4ActivationsS8& dst,
                         const char* what) {
  if (k_normal < 0 || k_normal % kW4A4Group != 0 || n_outliers < 0 || n_outliers % 16 != 0)
    fail("{}: k_normal = {} must be a multiple of {} and n_outliers = {} a multiple of 16", what, k_normal,
         kW4A4Group, n_outliers);
  if (src.m < 0 || dst.m != src.m) fail("{}: token counts differ (source {}, destination {})", what, src.m, dst.m);
  if (src.m == 0) return;
  if (!dst.codes || (k_normal > 0 && (!src.packed || !src.scales || !dst.scales)) ||
      (n_outliers > 0 && (!src.outliers || !src.outlier_scales || !dst.outlier_scales)))
    fail("{}: a null pointer among the tensors the shape needs", what);
  if (!aligned16(dst.codes)) fail("{}: destination codes must be 16-byte aligned", what);
}
}  // namespace

void convert_w4a4_activations_s8(const W4A4Activations& src, int k_normal, int n_outliers,
                                 const W4A4ActivationsS8& dst, cudaStream_t stream) {
  check_s8_conversion(src, k_normal, n_outliers, dst, "convert_w4a4_activations_s8");
  if (src.m > 0) detail::launch_convert_w4a4_activations_s8(src, k_normal, n_outliers, dst, stream);
}

void convert_w4a4_activations_s8_host(const W4A4Activations& src, int k_normal, int n_outliers,
                                      const W4A4ActivationsS8& dst) {
  check_s8_conversion(src, k_normal, n_outliers, dst, "convert_w4a4_activations_s8_host");
  const int groups = k_normal / kW4A4Group, chunks = layout::ceil_div(n_outliers, kW4A4OutlierChunk);
  const std::size_t row_bytes = w4a4_s8_row_bytes(k_normal, n_outliers);
  for (int m = 0; m < src.m; ++m) {
    std::int8_t* row = dst.codes + m * row_bytes;
    for (int g = 0; g < groups; ++g) {
      layout::s8_block_from_group(src.packed + (std::size_t)m * (k_normal / 2) + g * 64, row + g * 128);
      dst.scales[(std::size_t)g * src.m + m] = src.scales[(std::size_t)m * groups + g];
    }
    for (int c = 0; c < chunks; ++c)
      layout::s8_block_from_outliers(src.outliers + (std::size_t)m * n_outliers + c * kW4A4OutlierChunk,
                                     std::min(kW4A4OutlierChunk, n_outliers - c * kW4A4OutlierChunk),
                                     row + k_normal + c * 128);
    if (n_outliers > 0) dst.outlier_scales[m] = src.outlier_scales[m];
  }
}

void gemm_w4a16(const GemmW4A16Args& args, cudaStream_t stream) {
  const W4A4PackedWeights& w = args.w;
  validate_w4a4_shape(w.n, w.k_normal, w.n_outliers, "gemm_w4a16 weights");
  if (w.n_outliers != 0 || w.k_normal == 0)
    fail("gemm_w4a16: weights must be INT4 only (n_outliers = {}, k_normal = {})", w.n_outliers, w.k_normal);
  if (args.m < 0) fail("gemm_w4a16: m = {} is negative", args.m);
  if (args.m == 0) return;
  if (!args.x || !args.out || !w.packed || !w.scales) fail("gemm_w4a16: a null input, output or weight pointer");
  if (!aligned16(args.x) || !aligned16(w.packed)) fail("gemm_w4a16: x and the packed weights must be 16-byte aligned");
  if (device_caps().sm < 80) fail("gemm_w4a16: needs sm_80 or newer");
  detail::launch_w4a16_mma(args, stream);
}

}  // namespace atom::cuda
