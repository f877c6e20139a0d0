// Device prepack of W4A4 weights: FORMAT.md's canonical layout -> the GPU layout of gemm_w4a4.h.
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "backend/cuda/gemm/gemm_w4a4_layout.h"

#include <cuda_fp16.h>

namespace atom::cuda {
namespace {

// One thread per 32-bit word of the packed INT4 output.
__global__ void prepack_packed_kernel(const std::uint8_t* __restrict__ src, std::uint8_t* __restrict__ dst, int n,
                                      int groups, long long words) {
  const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= words) return;
  const int word = i & 3;
  const int r = (i >> 2) & (kW4A4TileRows - 1);
  const long long rest = i >> 9;  // (tile * groups + g) * 4 + piece
  const int piece = rest & 3;
  const long long tg = rest >> 2;
  const int g = tg % groups;
  const long long t = tg / groups;
  const long long row = t * kW4A4TileRows + r;
  std::uint32_t v = 0;
  if (row < n) {
    const std::size_t row_bytes = (std::size_t)groups * (kW4A4Group / 2);
    v = *reinterpret_cast<const std::uint32_t*>(src + row * row_bytes + g * (kW4A4Group / 2) +
                                                layout::packed_canonical_word(piece, word) * 4);
  }
  reinterpret_cast<std::uint32_t*>(dst)[i] = v;
}

// One thread per byte of the outlier output.
__global__ void prepack_outliers_kernel(const std::int8_t* __restrict__ src, std::int8_t* __restrict__ dst, int n,
                                        int n_outliers, int chunks, long long bytes) {
  const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= bytes) return;
  const int p = i & (kW4A4OutlierChunk - 1);
  const int r = (i >> 7) & (kW4A4TileRows - 1);
  const long long tc = i >> 14;
  const int c = tc % chunks;
  const long long t = tc / chunks;
  const long long row = t * kW4A4TileRows + r;
  const int ch = c * kW4A4OutlierChunk + layout::outlier_channel_of_byte(r, p);
  dst[i] = (row < n && ch < n_outliers) ? src[row * n_outliers + ch] : std::int8_t{0};
}

__global__ void prepack_scales_kernel(const std::uint16_t* __restrict__ scales,
                                      const std::uint16_t* __restrict__ outlier_scales, float* __restrict__ dst,
                                      int n, int groups, bool has_outliers, long long count) {
  const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int pos = i & (kW4A4TileRows - 1);
  const long long te = i >> 7;
  const int e = te % (groups + 1);
  const long long t = te / (groups + 1);
  const long long row = t * kW4A4TileRows + layout::scale_channel_of_position(pos);
  float v = 0.0f;
  if (row < n) {
    if (e < groups)
      v = __half2float(__ushort_as_half(scales[row * groups + e]));
    else if (has_outliers)
      v = __half2float(__ushort_as_half(outlier_scales[row]));
  }
  dst[i] = v;
}

unsigned blocks_for(long long count, int threads) { return static_cast<unsigned>((count + threads - 1) / threads); }

}  // namespace

namespace detail {
void launch_prepack_w4a4(const W4A4CanonicalWeights& w, const W4A4PackedWeights& dst, cudaStream_t stream) {
  const int tiles = layout::ceil_div(w.n, kW4A4TileRows);
  const int groups = w.k_normal / kW4A4Group;
  const int chunks = layout::ceil_div(w.n_outliers, kW4A4OutlierChunk);
  constexpr int kThreads = 256;
  if (groups > 0) {
    const long long words = (long long)tiles * groups * kW4A4TileRows * (kW4A4Group / 2) / 4;
    prepack_packed_kernel<<<blocks_for(words, kThreads), kThreads, 0, stream>>>(w.packed, dst.packed, w.n, groups,
                                                                                words);
    ATOM_CUDA_CHECK_LAUNCH();
  }
  if (chunks > 0) {
    const long long bytes = (long long)tiles * chunks * kW4A4TileRows * kW4A4OutlierChunk;
    prepack_outliers_kernel<<<blocks_for(bytes, kThreads), kThreads, 0, stream>>>(w.outliers, dst.outliers, w.n,
                                                                                  w.n_outliers, chunks, bytes);
    ATOM_CUDA_CHECK_LAUNCH();
  }
  const long long count = (long long)tiles * (groups + 1) * kW4A4TileRows;
  prepack_scales_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream>>>(w.scales, w.outlier_scales, dst.scales,
                                                                              w.n, groups, w.n_outliers > 0, count);
  ATOM_CUDA_CHECK_LAUNCH();
}
}  // namespace detail

}  // namespace atom::cuda
