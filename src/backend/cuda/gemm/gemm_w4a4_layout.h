#pragma once
// Index maps of the prepacked W4A4 weight layout (gemm_w4a4.h documents it), shared by the host and device
// prepack and by the kernels' tests. Each function maps a position in the GPU layout to its source in the
// canonical layout.
#include <cstdint>

#include <cuda_runtime.h>  // __host__ __device__

namespace atom::cuda::layout {

// Packed INT4: piece j (0..3) of a row's group, 32-bit word w (0..3) inside it -> canonical word of the group.
__host__ __device__ constexpr int packed_canonical_word(int piece, int word) { return 4 * word + piece; }

// Outliers: physical byte P (0..127) of tile row r -> outlier channel offset inside the 128-wide chunk.
__host__ __device__ constexpr int outlier_channel_of_byte(int row, int physical_byte) {
  const int unit = (physical_byte >> 4) ^ (row & 7);  // undo the 128-byte swizzle
  const int p = unit * 16 + (physical_byte & 15);     // logical byte position p = 32j + 16h + 4t + b
  const int j = p >> 5, h = (p >> 4) & 1, t = (p >> 2) & 3, b = p & 3;
  return 32 * t + 8 * j + 4 * h + b;
}

// Scales: position (0..127) inside a tile's entry -> channel inside the tile; and the inverse.
__host__ __device__ constexpr int scale_channel_of_position(int pos) {
  const int cc = pos >> 4, t = (pos >> 2) & 3, i = pos & 3;
  const int j = 2 * cc + (i >> 1), e = i & 1;
  return 8 * j + 2 * t + e;
}
__host__ __device__ constexpr int scale_position_of_channel(int channel) {
  const int j = channel >> 3, t = (channel & 7) >> 1, e = channel & 1;
  return ((j >> 1) * 4 + t) * 4 + (j & 1) * 2 + e;
}

// Int8 activation rows of the serving-size kernel (W4A4ActivationsS8): element e (0..127) of a 128-wide block
// -> byte position p = 32j + 16h + 4t + b, the order in which the tensor cores pair it with the prepacked
// weights (k-step j, 16-byte half h). INT4 groups: e = 32t + 8j + 2b + h (word 4t + j of the packed group,
// byte b, nibble h); INT8 outlier chunks: e = 32t + 8j + 4h + b (as outlier_channel_of_byte, unswizzled).
__host__ __device__ constexpr int s8_group_position(int e) {
  const int t = e >> 5, j = (e >> 3) & 3, b = (e >> 1) & 3, h = e & 1;
  return 32 * j + 16 * h + 4 * t + b;
}
__host__ __device__ constexpr int s8_outlier_position(int e) {
  const int t = e >> 5, j = (e >> 3) & 3, h = (e >> 2) & 1, b = e & 3;
  return 32 * j + 16 * h + 4 * t + b;
}

// One 128-wide block of an int8 activation row from the canonical layout: an INT4 group (64 packed bytes,
// element 2i in the low nibble of byte i), or an outlier chunk (`count` <= 128 INT8 codes, zero past them).
__host__ __device__ inline void s8_block_from_group(const std::uint8_t* packed, std::int8_t* out) {
  for (int e = 0; e < 128; ++e) {
    const int nib = (e & 1) ? (packed[e >> 1] >> 4) : (packed[e >> 1] & 15);
    out[s8_group_position(e)] = static_cast<std::int8_t>(nib >= 8 ? nib - 16 : nib);
  }
}
__host__ __device__ inline void s8_block_from_outliers(const std::int8_t* outliers, int count, std::int8_t* out) {
  for (int e = 0; e < 128; ++e) out[s8_outlier_position(e)] = e < count ? outliers[e] : 0;
}

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace atom::cuda::layout
