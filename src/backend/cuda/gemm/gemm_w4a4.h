#pragma once
// Atom's quantized linear layer on NVIDIA GPUs (docs/FORMAT.md, "An Atom linear layer"):
//
//   y[m, n] = sum_g fma-chain( float(int32 dot of group g) * sa[m,g], sw[n,g] )  then the INT8 outliers,
//
// INT4 (or INT3) codes in groups of 128 along K, INT8 outlier channels last, int32 sums per group, fp32
// scaling and accumulation, fp16/bf16 output, optional residual add (out = round(acc + residual)).
//
// Kernels (all read the same prepacked weight layout, see prepack_w4a4_weights_*):
//  - gemm_w4a4o8_wgmma_sm90 (sm_90a): warp-specialized, INT8 wgmma with the activation operand unpacked in
//    registers and the weight operand unpacked into swizzled shared memory; groups summed in order, so the
//    result is bit-identical to atom::quant::atom_linear_reference. For M > 32.
//  - gemm_w4a4o8_mma_s8 (sm_80+, used on sm_90 for M <= 32): split-K over warps, one load pass per block,
//    mma.sync INT8 on unpacked nibbles; fp32 partial sums are added across warps (same value up to fp32
//    reassociation).
//  - gemm_w4a4o8_stream_s8 (sm_80+, used on sm_90 for 16 < M <= 32 and N >= 16384): persistent CTAs stream
//    16-row weight slabs through per-warp cp.async rings (items in flight across slabs), split-K over the 8
//    warps of a CTA, partial sums added in a fixed order. Slower than mma_s8 at M <= 16 on an H200
//    (docs/notes/gemm.md). _s4: the same on native INT4 MMA.
//  - gemm_w4a4o8_mma_s4 (sm_80/86/89): the same kernel on the native INT4 tensor cores (m16n8k64 s4).
//    It also compiles and runs on sm_90, where INT4 MMA is emulated (tests use that to check it).
// W8A8 (per-token x per-channel INT8) is the same product with k_normal = 0 and every channel an "outlier".
// gemm_w4a16 is the weight-only baseline (fp16 activations, same INT4 weight layout, no outliers).
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace atom::cuda {

constexpr int kW4A4Group = 128;         // group size along K of the INT4 part (the only one supported)
constexpr int kW4A4TileRows = 128;      // output channels per prepacked tile
constexpr int kW4A4OutlierChunk = 128;  // outlier channels per prepacked chunk

enum class GemmOutType : std::uint8_t { kF16, kBF16 };

// Weights in FORMAT.md's canonical layout (host or device memory; fp16 as raw bits).
struct W4A4CanonicalWeights {
  const std::uint8_t* packed = nullptr;           // [n, k_normal/2], element 2i in the low nibble
  const std::uint16_t* scales = nullptr;          // [n, k_normal/128] fp16
  const std::int8_t* outliers = nullptr;          // [n, n_outliers]
  const std::uint16_t* outlier_scales = nullptr;  // [n] fp16
  int n = 0, k_normal = 0, n_outliers = 0;
};

// The GPU layout (device memory). Channels are padded to tiles of 128 with zero codes and zero scales.
//  packed:   [tiles][groups][piece 0..3][128 rows][16 bytes]; piece j of a row's group holds the canonical
//            32-bit words {j, 4+j, 8+j, 12+j} of that group (each word = 8 consecutive codes).
//  outliers: [tiles][chunks][128 rows][128 bytes]; byte position p = 32j + 16h + 4t + b of a row holds outlier
//            channel 32t + 8j + 4h + b of the chunk (zero past n_outliers), and the 16-byte unit u of row r
//            is stored at unit u ^ (r % 8) (the 128-byte swizzle the tensor cores read).
//  scales:   fp32 [tiles][groups + 1][128] (entry `groups` is the outlier scale); within a tile, channel
//            c = 8j + 2t + e is stored at ((j/2)*4 + t)*4 + (j%2)*2 + e.
struct W4A4PackedWeights {
  std::uint8_t* packed = nullptr;
  std::int8_t* outliers = nullptr;
  float* scales = nullptr;
  int n = 0, k_normal = 0, n_outliers = 0;
};

struct W4A4PackedSizes {
  std::size_t packed_bytes = 0, outlier_bytes = 0, scale_bytes = 0;
};
W4A4PackedSizes w4a4_packed_sizes(int n, int k_normal, int n_outliers);

// Checks the shape (k_normal a multiple of 128, n_outliers a multiple of 16, n a multiple of 8, sizes >= 0,
// at least one input channel); throws atom::Error naming `what` and the field.
void validate_w4a4_shape(int n, int k_normal, int n_outliers, const char* what);

// Canonical -> GPU layout. Host version: all pointers host memory, outputs sized by w4a4_packed_sizes.
void prepack_w4a4_weights_host(const W4A4CanonicalWeights& canonical, std::uint8_t* packed, std::int8_t* outliers,
                               float* scales);
// Device version: canonical and dst are device pointers; asynchronous on `stream`.
void prepack_w4a4_weights_device(const W4A4CanonicalWeights& canonical, const W4A4PackedWeights& dst,
                                 cudaStream_t stream);

// Quantized activations in FORMAT.md's layout (device memory): rows are tokens.
struct W4A4Activations {
  const std::uint8_t* packed = nullptr;           // [m, k_normal/2]
  const std::uint16_t* scales = nullptr;          // [m, k_normal/128] fp16
  const std::int8_t* outliers = nullptr;          // [m, n_outliers]
  const std::uint16_t* outlier_scales = nullptr;  // [m] fp16
  int m = 0;
};

enum class W4A4Kernel : std::uint8_t { kAuto, kWgmmaBn128, kWgmmaBn64, kMmaS8, kMmaS4, kStreamS8, kStreamS4 };
const char* w4a4_kernel_name(W4A4Kernel k);

struct GemmW4A4Args {
  W4A4Activations a;
  W4A4PackedWeights w;
  void* out = nullptr;  // [m, w.n] row-major, out_type
  GemmOutType out_type = GemmOutType::kF16;
  const void* residual = nullptr;  // optional [m, w.n] of out_type, added in fp32 before rounding; may == out
};

// y = A x W^T in Atom's format. Throws atom::Error on inconsistent arguments or a kernel the device cannot run.
// kAuto picks the fastest kernel for the device and M. Asynchronous on `stream`.
void gemm_w4a4_o8(const GemmW4A4Args& args, cudaStream_t stream, W4A4Kernel kernel = W4A4Kernel::kAuto);
// The kernel kAuto picks for this shape on the current device.
W4A4Kernel w4a4_auto_kernel(int m, int n);

// Weight-only INT4 baseline: out[m, n] (fp16) = sum_g sw[n,g] * (sum_{k in g} x[m,k] * q[n,k]) with fp16 x,
// fp32 accumulation; w must have n_outliers == 0. For decode sizes (any m works).
struct GemmW4A16Args {
  const std::uint16_t* x = nullptr;  // [m, w.k_normal] fp16
  int m = 0;
  W4A4PackedWeights w;
  std::uint16_t* out = nullptr;  // [m, w.n] fp16
};
void gemm_w4a16(const GemmW4A16Args& args, cudaStream_t stream);

// ---- Serving sizes (16 < M <= 512 on sm_90a): gemm_w4a4o8_swapab_sm90 computes out^T = W x A^T, the weights
// as wgmma's 64-row register operand (nibbles unpacked straight into the A fragment) and the tokens as its
// N = 16..128 shared-memory operand. It reads the activations as int8 codes, each 128-wide block in the
// tensor-core order (layout::s8_group_position / s8_outlier_position), written by the quantizers in that form
// (QuantizedActOut::codes_s8) or converted from the canonical layout. Same prepacked weights as the other
// kernels; groups summed in order, bit-identical to atom::quant::atom_linear_reference.
struct W4A4ActivationsS8 {
  std::int8_t* codes = nullptr;             // [m, w4a4_s8_row_bytes(k_normal, n_outliers)]; outliers zero-padded
  std::uint16_t* scales = nullptr;          // fp16 group-major: group g of token i at g * m + i
  std::uint16_t* outlier_scales = nullptr;  // fp16 [m]
  int m = 0;
};
// Bytes per token row: k_normal INT4 codes then the outlier chunks, 128 bytes each.
int w4a4_s8_row_bytes(int k_normal, int n_outliers);

// Tile shapes of the serving-size kernel: tokens per CTA x output channels per CTA (64 per consumer warpgroup).
// The tiles of two 64-token consumer warpgroups - kT64C128 (two channel halves) and kT128C64 (two token halves)
// - are built but give wrong sums on an H100 (kT64C128 was exact before the split-K rework; docs/notes/gemm.md):
// they are kept out of kW4A4SwapAbTiles (tests, the benchmark sweep) and kAuto until fixed.
enum class W4A4SwapAbTile : std::uint8_t { kAuto, kT16C64, kT32C64, kT32C128, kT64C64, kT64C128, kT128C64 };
const char* w4a4_swapab_tile_name(W4A4SwapAbTile tile);
inline constexpr W4A4SwapAbTile kW4A4SwapAbTiles[] = {W4A4SwapAbTile::kT16C64, W4A4SwapAbTile::kT32C64,
                                                      W4A4SwapAbTile::kT32C128, W4A4SwapAbTile::kT64C64};

struct GemmW4A4S8Args {
  W4A4ActivationsS8 a;
  W4A4PackedWeights w;
  void* out = nullptr;  // [m, w.n] row-major, out_type, 16-byte aligned
  GemmOutType out_type = GemmOutType::kF16;
  const void* residual = nullptr;  // optional [m, w.n] of out_type, 16-byte aligned; may == out
};
// Split-K: with k_splits = S > 1 the K units (the 128-wide groups, then all outlier chunks as one unit) are
// dealt to S CTAs in contiguous ranges; the S CTAs of an output tile form a thread-block cluster and add their
// fp32 partial tiles through distributed shared memory in rank order. Deterministic, and independent of M for
// a given (tile width, S), but not bit-identical to the reference: the fp32 sum is reassociated at S - 1
// split points. k_splits = 1 is the bit-exact kernel; 0 picks w4a4_swapab_auto_splits. S is clamped to the
// number of units and to kW4A4MaxSplits (the portable cluster size).
constexpr int kW4A4MaxSplits = 8;
// y = A x W^T with int8 activations. Needs an sm_90 device and a build with 90a. Asynchronous on `stream`.
void gemm_w4a4_o8_s8(const GemmW4A4S8Args& args, cudaStream_t stream, W4A4SwapAbTile tile = W4A4SwapAbTile::kAuto,
                     int k_splits = 0);
// The tile kAuto picks for this shape (the fastest in the measured tile sweep, docs/notes/gemm.md).
W4A4SwapAbTile w4a4_swapab_auto_tile(int m, int n);
// The split count k_splits = 0 picks (measured): 2 while the doubled grid fits one wave of the tile's CTAs per
// SM and each split keeps at least kW4A4MinUnitsPerSplit units, else 1.
int w4a4_swapab_auto_splits(int m, int n, int k_normal, int n_outliers, W4A4SwapAbTile tile);
int w8a8_swapab_auto_splits(int m, int n, int k, W4A4SwapAbTile tile);
constexpr int kW4A4MinUnitsPerSplit = 4;
// Whether the serving-size kernel runs on the current device (sm_90 with sm_90a code in this binary).
bool w4a4_swapab_available();
// Products of more rows than this always read packed activations (the runner's int8-row buffer size).
constexpr int kW4A4S8MaxRows = 512;
// Whether a product of m rows and n output channels is faster on the serving-size kernel (int8 activation
// rows, gemm_w4a4_o8_s8 / gemm_w8a8_s8) than on the packed layout (gemm_w4a4_o8), by the H100 measurements:
// 16 < m <= 64, on a device that runs it.
bool w4a4_prefers_s8_activations(int m, int n);

// W8A8 (per-token x per-channel INT8) on the same kernel, reading the plain layouts cuBLASLt reads: for serving
// sizes, where cuBLASLt plus a separate scaling pass is slower. out = round(float(x.w) * sx * sw [+ residual]),
// bit-identical to the all-outlier case of atom::quant::atom_linear_reference.
struct GemmW8A8Args {
  const std::int8_t* x = nullptr;          // [m, k] row-major, 16-byte aligned
  const std::uint16_t* x_scales = nullptr;  // fp16 [m]
  int m = 0;
  const std::int8_t* w = nullptr;  // [n, k] row-major, 16-byte aligned
  const float* w_scales = nullptr;  // fp32 [n], 16-byte aligned
  int n = 0, k = 0;                 // n a multiple of 8, k a multiple of 16
  void* out = nullptr;              // [m, n] of out_type, 16-byte aligned
  GemmOutType out_type = GemmOutType::kF16;
  const void* residual = nullptr;  // optional, as GemmW4A4S8Args
};
// k_splits as gemm_w4a4_o8_s8, over the 128-wide chunks of K; the partial sums are int32, so every split
// count is bit-identical to the reference.
void gemm_w8a8_s8(const GemmW8A8Args& args, cudaStream_t stream, W4A4SwapAbTile tile = W4A4SwapAbTile::kAuto,
                  int k_splits = 0);

// Canonical activations -> the int8 layout (scales transposed to group-major). Device: src and dst in device
// memory, asynchronous. Host: host memory.
void convert_w4a4_activations_s8(const W4A4Activations& src, int k_normal, int n_outliers,
                                 const W4A4ActivationsS8& dst, cudaStream_t stream);
void convert_w4a4_activations_s8_host(const W4A4Activations& src, int k_normal, int n_outliers,
                                      const W4A4ActivationsS8& dst);

// ---- Launchers (no argument checks: gemm_w4a4_o8 / gemm_w4a16 check and dispatch).
namespace detail {
void launch_prepack_w4a4(const W4A4CanonicalWeights& canonical, const W4A4PackedWeights& dst, cudaStream_t stream);
void launch_w4a4_wgmma_sm90(const GemmW4A4Args& args, int bn, cudaStream_t stream);
// Diagnostics for bench_gemm (fp16 out, 128-wide tiles; results are wrong): ablate 1 skips the weight unpack,
// 2 the per-group rescale, 3 the tensor-core MMAs; 0 is the full kernel.
void launch_w4a4_wgmma_sm90_ablation(const GemmW4A4Args& args, int ablate, cudaStream_t stream);
void launch_w4a4_mma(const GemmW4A4Args& args, bool native_s4, cudaStream_t stream);
// Tuning of the stream (decode) kernel; kStreamS8 / kStreamS4 run the defaults, bench_gemm sweeps the rest.
struct W4A4StreamConfig {
  int stages = 3;           // cp.async slots per warp: 3, 4 or 6 (stages - 1 work items of 2 KB in flight)
  int max_ctas_per_sm = 0;  // 0: as many as fit
  int max_ctas = 0;         // 0: no cap (tests cap the grid so that each CTA walks many slabs)
  bool native_s4 = false;   // m16n8k64 s4 tensor cores (sm_80/86/89; emulated on sm_90); 4 stages
};
void launch_w4a4_stream(const GemmW4A4Args& args, const W4A4StreamConfig& config, cudaStream_t stream);
void launch_w4a16_mma(const GemmW4A16Args& args, cudaStream_t stream);
// A serving-size tile's tokens x channels per CTA and CTAs per SM, from the kernel's own tile constants.
struct W4A4SwapAbTileShape {
  int tokens, channels, ctas_per_sm;
};
W4A4SwapAbTileShape w4a4_swapab_tile_shape(W4A4SwapAbTile tile);
void launch_w4a4_swapab_sm90(const GemmW4A4S8Args& args, W4A4SwapAbTile tile, int k_splits, cudaStream_t stream);
void launch_w8a8_swapab_sm90(const GemmW8A8Args& args, W4A4SwapAbTile tile, int k_splits, cudaStream_t stream);
void launch_convert_w4a4_activations_s8(const W4A4Activations& src, int k_normal, int n_outliers,
                                        const W4A4ActivationsS8& dst, cudaStream_t stream);
// Whether this binary holds sm_90a code for the wgmma kernel (ATOM_CUDA_ARCHS contains 90a).
bool wgmma_sm90_compiled();
}  // namespace detail

}  // namespace atom::cuda
