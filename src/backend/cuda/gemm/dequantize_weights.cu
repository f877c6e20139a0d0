// Prepacked W4A4 weights -> dense fp16 [n, k] (dequantize_weights.h). Memory-bound: 16-byte loads of the
// prepacked codes, 16-byte stores of fp16, fp16 conversion by exponent tricks instead of I2F/F2F (which run
// at quarter rate and would otherwise rival the memory time).
//
// A warp owns 8 consecutive rows (one row octet; n is a multiple of 8, so an octet is all real rows or all
// tile padding) and a few column blocks. Lane = part * 8 + rr: rr picks the row, part (0..3) the piece of a
// group (INT4) or the pair of 16-byte units of a chunk row (outliers). For the INT4 part one load instruction
// reads 128 contiguous bytes per piece (8 rows x 16 bytes) and each store instruction writes 64 contiguous
// bytes per row (the 4 pieces' words of equal index are 4 consecutive 8-code chunks of the row).
#include <cstdint>
#include <cstring>

#include <cuda_fp16.h>

#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/gemm/dequantize_weights.h"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "backend/cuda/gemm/gemm_w4a4_layout.h"

namespace atom::cuda {
namespace {

constexpr int kRowsPerWarp = 8;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarpsPerBlock * 32;
constexpr int kRowsPerBlock = kRowsPerWarp * kWarpsPerBlock;  // 64: a block never spans two tiles
constexpr int kGroupsPerBlock = 2;                            // loads in flight per thread
constexpr int kUnitsPerOutlierRow = kW4A4OutlierChunk / 16;   // 16-byte units of a chunk row
static_assert(kW4A4TileRows % kRowsPerBlock == 0, "a block must stay inside one tile");
static_assert(kW4A4Group == 128 && kW4A4TileRows == 128 && kW4A4OutlierChunk == 128,
              "the lane mapping assumes 128-wide groups, tiles and chunks");

__device__ __forceinline__ std::uint32_t bits_of(__half2 h) {
  std::uint32_t u;
  std::memcpy(&u, &h, sizeof u);
  return u;
}
__device__ __forceinline__ __half2 half2_of(std::uint32_t u) {
  __half2 h;
  std::memcpy(&h, &u, sizeof u);
  return h;
}

// fp16 arithmetic on (code, fp16(s)) is exact-then-rounded-once like fp16(float(code) * s) (the fp32 product
// of an 8-bit code and an 11-bit significand is exact) if s is an fp16 value, which prepack guarantees; other
// scales take the fp32 path.
__device__ __forceinline__ bool is_fp16_value(float s) { return __half2float(__float2half_rn(s)) == s; }

// 8 INT4 codes (element i in bits 4i..4i+3, two's complement) times scale -> 8 fp16, element 0 first.
__device__ __forceinline__ uint4 int4x8_to_f16(std::uint32_t x, __half2 scale) {
  const std::uint32_t biased = x ^ 0x88888888u;  // code + 8 (0..15) in every nibble
  const __half2 offset = half2_of(0x64086408u);  // fp16 1032 = 1024 + 8
  std::uint32_t p[4];                            // p[s] = (element s, element s + 4)
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    // fp16 bits 0x6400 | v are 1024 + v: exact, and so is the subtraction of 1032.
    const std::uint32_t h = ((biased >> (4 * s)) & 0x000F000Fu) | 0x64006400u;
    p[s] = bits_of(__hmul2_rn(__hsub2_rn(half2_of(h), offset), scale));
  }
  return make_uint4(__byte_perm(p[0], p[1], 0x5410), __byte_perm(p[2], p[3], 0x5410),
                    __byte_perm(p[0], p[1], 0x7632), __byte_perm(p[2], p[3], 0x7632));
}

__device__ __forceinline__ std::uint32_t f16x2_of_products(int lo, int hi, float scale) {
  return bits_of(__halves2half2(__float2half_rn(static_cast<float>(lo) * scale),
                                __float2half_rn(static_cast<float>(hi) * scale)));
}

// The same in fp32 (scales that are not fp16 values).
__device__ uint4 int4x8_to_f16_fp32(std::uint32_t x, float scale) {
  std::uint32_t r[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int lo = static_cast<std::int32_t>(x << (28 - 8 * i)) >> 28;  // element 2i
    const int hi = static_cast<std::int32_t>(x << (24 - 8 * i)) >> 28;  // element 2i + 1
    r[i] = f16x2_of_products(lo, hi, scale);
  }
  return make_uint4(r[0], r[1], r[2], r[3]);
}

// 4 INT8 codes (byte i = element i) times scale -> 4 fp16.
__device__ __forceinline__ uint2 int8x4_to_f16(std::uint32_t x, __half2 scale) {
  const std::uint32_t biased = x ^ 0x80808080u;  // code + 128 (0..255) in every byte
  const __half2 offset = half2_of(0x64806480u);  // fp16 1152 = 1024 + 128
  // Bytes {v0, 0x64, v1, 0x64}: fp16 (1024 + v0, 1024 + v1).
  const std::uint32_t h01 = __byte_perm(biased, 0x64646464u, 0x4140);
  const std::uint32_t h23 = __byte_perm(biased, 0x64646464u, 0x4342);
  return make_uint2(bits_of(__hmul2_rn(__hsub2_rn(half2_of(h01), offset), scale)),
                    bits_of(__hmul2_rn(__hsub2_rn(half2_of(h23), offset), scale)));
}

__device__ uint2 int8x4_to_f16_fp32(std::uint32_t x, float scale) {
  const auto code = [x](int i) { return static_cast<int>(static_cast<std::int8_t>(x >> (8 * i))); };
  return make_uint2(f16x2_of_products(code(0), code(1), scale), f16x2_of_products(code(2), code(3), scale));
}

// A 16-byte store as one instruction (nvcc otherwise splits some uint4 stores into four 4-byte ones). Nothing
// in the kernel reads the output, so the asm needs no memory clobber.
__device__ __forceinline__ void store16(void* p, uint4 v) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w));
}

// One lane's share of an INT4 group: its 16-byte piece `part` holds the canonical words 4w + part (w = 0..3),
// i.e. the 8-code runs at columns 32w + 8 * part of the group; dst points at column 8 * part.
template <bool kFp16Scale>
__device__ __forceinline__ void store_int4_piece(uint4* dst, uint4 codes, float scale) {
  const std::uint32_t words[4] = {codes.x, codes.y, codes.z, codes.w};
#pragma unroll
  for (int w = 0; w < 4; ++w)
    store16(dst + 4 * w, kFp16Scale ? int4x8_to_f16(words[w], __float2half2_rn(scale))
                                    : int4x8_to_f16_fp32(words[w], scale));
}

// One lane's share of an outlier chunk row: logical units a = 2 * part and b = 2 * part + 1. Word t of
// logical unit 2j + h holds channels 32t + 8j + 4h + (0..3), so words t of a and b are the 8 channels
// 32t + 8 * part + (0..7); dst points at channel 8 * part of the chunk, `first` is that channel's index among
// the outliers. n_outliers is a multiple of 16, so an 8-channel run is all real channels or all padding.
template <bool kFp16Scale>
__device__ __forceinline__ void store_outlier_runs(std::uint16_t* dst, uint4 a, uint4 b, float scale,
                                                   int first, int n_outliers) {
  const std::uint32_t wa[4] = {a.x, a.y, a.z, a.w}, wb[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    if (first + 32 * t >= n_outliers) break;
    const uint2 lo =
        kFp16Scale ? int8x4_to_f16(wa[t], __float2half2_rn(scale)) : int8x4_to_f16_fp32(wa[t], scale);
    const uint2 hi =
        kFp16Scale ? int8x4_to_f16(wb[t], __float2half2_rn(scale)) : int8x4_to_f16_fp32(wb[t], scale);
    store16(dst + 32 * t, make_uint4(lo.x, lo.y, hi.x, hi.y));
  }
}

struct DequantizeArgs {
  const uint4* packed;    // [tiles][groups][4 pieces][128 rows] 16-byte units
  const uint4* outliers;  // [tiles][chunks][128 rows][8 units]
  const float* scales;    // [tiles][groups + 1][128]
  std::uint16_t* out;
  long long out_stride;
  int n, groups, n_outliers, chunks;
  int group_blocks;  // column blocks of the INT4 part (kGroupsPerBlock groups each); the chunks follow
};

__global__ void __launch_bounds__(kThreads) dequantize_w4a4_f16_kernel(const DequantizeArgs args) {
  const int lane = threadIdx.x & 31;
  const int rr = lane & (kRowsPerWarp - 1), part = lane / kRowsPerWarp;
  const long long row0 = (long long)blockIdx.x * kRowsPerBlock + (threadIdx.x / 32) * kRowsPerWarp;
  if (row0 >= args.n) return;  // tile padding: the whole octet (n is a multiple of 8)
  const long long row = row0 + rr;
  const long long tile = row / kW4A4TileRows;
  const int r = static_cast<int>(row % kW4A4TileRows);
  const int groups = args.groups;
  const float* row_scales =
      args.scales + tile * (groups + 1) * kW4A4TileRows + layout::scale_position_of_channel(r);
  std::uint16_t* out_row = args.out + row * args.out_stride;
  const int column_blocks = args.group_blocks + args.chunks;

  for (int cb = blockIdx.y; cb < column_blocks; cb += gridDim.y) {
    if (cb < args.group_blocks) {
      uint4 codes[kGroupsPerBlock];
      float scale[kGroupsPerBlock];
      bool fp16_scales = true;
#pragma unroll
      for (int i = 0; i < kGroupsPerBlock; ++i) {
        const int g = cb * kGroupsPerBlock + i;
        codes[i] = make_uint4(0, 0, 0, 0);
        scale[i] = 0.0f;
        if (g < groups) {
          codes[i] = __ldg(args.packed + ((tile * groups + g) * 4 + part) * kW4A4TileRows + r);
          scale[i] = __ldg(row_scales + (long long)g * kW4A4TileRows);
        }
        fp16_scales = fp16_scales && is_fp16_value(scale[i]);
      }
      uint4* dst =
          reinterpret_cast<uint4*>(out_row + (long long)cb * kGroupsPerBlock * kW4A4Group + part * 8);
      constexpr int kUnitsPerGroup = kW4A4Group / 8;  // 16-byte units of fp16 output per group
      if (fp16_scales) {
#pragma unroll
        for (int i = 0; i < kGroupsPerBlock; ++i)
          if (cb * kGroupsPerBlock + i < groups)
            store_int4_piece<true>(dst + i * kUnitsPerGroup, codes[i], scale[i]);
      } else {
#pragma unroll
        for (int i = 0; i < kGroupsPerBlock; ++i)
          if (cb * kGroupsPerBlock + i < groups)
            store_int4_piece<false>(dst + i * kUnitsPerGroup, codes[i], scale[i]);
      }
    } else {
      // INT8 outlier chunk c: logical units 2 * part and 2 * part + 1 of row r sit at units u ^ (r % 8).
      const int c = cb - args.group_blocks;
      const uint4* src = args.outliers + ((tile * args.chunks + c) * kW4A4TileRows + r) * kUnitsPerOutlierRow;
      const uint4 a = __ldg(src + ((2 * part) ^ (r & 7)));
      const uint4 b = __ldg(src + ((2 * part + 1) ^ (r & 7)));
      const float scale = __ldg(row_scales + (long long)groups * kW4A4TileRows);
      const int first = c * kW4A4OutlierChunk + part * 8;
      std::uint16_t* dst = out_row + (long long)groups * kW4A4Group + first;
      if (is_fp16_value(scale))
        store_outlier_runs<true>(dst, a, b, scale, first, args.n_outliers);
      else
        store_outlier_runs<false>(dst, a, b, scale, first, args.n_outliers);
    }
  }
}

}  // namespace

namespace detail {
void launch_dequantize_w4a4_f16(const W4A4PackedWeights& w, std::uint16_t* out, std::int64_t out_stride,
                                cudaStream_t stream) {
  DequantizeArgs args;
  args.packed = reinterpret_cast<const uint4*>(w.packed);
  args.outliers = reinterpret_cast<const uint4*>(w.outliers);
  args.scales = w.scales;
  args.out = out;
  args.out_stride = out_stride;
  args.n = w.n;
  args.groups = w.k_normal / kW4A4Group;
  args.n_outliers = w.n_outliers;
  args.chunks = layout::ceil_div(w.n_outliers, kW4A4OutlierChunk);
  args.group_blocks = layout::ceil_div(args.groups, kGroupsPerBlock);
  const int column_blocks = args.group_blocks + args.chunks;
  if (w.n <= 0 || column_blocks <= 0) return;
  const dim3 grid(static_cast<unsigned>(layout::ceil_div(w.n, kRowsPerBlock)),
                  static_cast<unsigned>(column_blocks < 65535 ? column_blocks : 65535));
  dequantize_w4a4_f16_kernel<<<grid, kThreads, 0, stream>>>(args);
  ATOM_CUDA_CHECK_LAUNCH();
}
}  // namespace detail

}  // namespace atom::cuda
