#include "io/dtype.h"

#include <algorithm>
#include <array>
#include <cstring>

#if defined(__F16C__) && defined(__AVX2__)
#include <immintrin.h>
#endif

#include "common/error.h"
#include "common/half.h"
#include "io/ggml_quants.h"

namespace atom {
namespace {

constexpr std::size_t kNumDTypes = static_cast<std::size_t>(DType::Q6_K) + 1;

constexpr std::array<DTypeTraits, kNumDTypes> kTraits = {{
    {"F32", 1, 4},
    {"F16", 1, 2},
    {"BF16", 1, 2},
    {"F64", 1, 8},
    {"I8", 1, 1},
    {"U8", 1, 1},
    {"I16", 1, 2},
    {"I32", 1, 4},
    {"I64", 1, 8},
    {"Q4_0", ggml::kQK4_0, sizeof(ggml::BlockQ4_0)},
    {"Q4_1", ggml::kQK4_1, sizeof(ggml::BlockQ4_1)},
    {"Q5_0", ggml::kQK5_0, sizeof(ggml::BlockQ5_0)},
    {"Q5_1", ggml::kQK5_1, sizeof(ggml::BlockQ5_1)},
    {"Q8_0", ggml::kQK8_0, sizeof(ggml::BlockQ8_0)},
    {"Q4_K", ggml::kQK_K, sizeof(ggml::BlockQ4_K)},
    {"Q5_K", ggml::kQK_K, sizeof(ggml::BlockQ5_K)},
    {"Q6_K", ggml::kQK_K, sizeof(ggml::BlockQ6_K)},
}};
static_assert(static_cast<int>(DType::F32) == 0 && static_cast<int>(DType::U8) == 5 &&
                  static_cast<int>(DType::I64) == 8 && static_cast<int>(DType::Q4_0) == 9,
              "kTraits follows the order of enum DType");

// Plain element types: each element converted as a value (integers exactly where fp32 can hold them,
// otherwise rounded to nearest even like a C cast).
template <class T, class Convert>
void convert_elements(const std::uint8_t* src, float* dst, std::size_t n, Convert convert) {
  for (std::size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, src + i * sizeof(T), sizeof(T));
    dst[i] = convert(v);
  }
}

template <class T>
void cast_elements(const std::uint8_t* src, float* dst, std::size_t n) {
  convert_elements<T>(src, dst, n, [](T v) { return static_cast<float>(v); });
}

// fp16 -> fp32, 8 at a time with F16C where available. The hardware conversion is exact except that it
// quiets signalling NaNs; groups holding a NaN take the scalar path so that results stay bit-identical to
// fp16_to_fp32 (tested against it).
void fp16_elements(const std::uint8_t* src, float* dst, std::size_t n) {
  std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX2__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    const __m128i magnitude = _mm_and_si128(h, _mm_set1_epi16(0x7FFF));
    const __m128i nan = _mm_cmpgt_epi16(magnitude, _mm_set1_epi16(0x7C00));
    if (_mm_movemask_epi8(nan) != 0) {
      convert_elements<std::uint16_t>(src + 2 * i, dst + i, 8, fp16_to_fp32);
    } else {
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
  }
#endif
  convert_elements<std::uint16_t>(src + 2 * i, dst + i, n - i, fp16_to_fp32);
}

// Converts n elements (a multiple of the block size) starting at src, sequentially.
void dequantize_range(DType t, const std::uint8_t* src, float* dst, std::size_t n) {
  const std::size_t blocks = n / dtype_traits(t).block_elems;
  switch (t) {
    case DType::F32: std::memcpy(dst, src, n * sizeof(float)); return;
    case DType::F16: fp16_elements(src, dst, n); return;
    case DType::BF16: convert_elements<std::uint16_t>(src, dst, n, bf16_to_fp32); return;
    case DType::F64: cast_elements<double>(src, dst, n); return;
    case DType::I8: cast_elements<std::int8_t>(src, dst, n); return;
    case DType::U8: cast_elements<std::uint8_t>(src, dst, n); return;
    case DType::I16: cast_elements<std::int16_t>(src, dst, n); return;
    case DType::I32: cast_elements<std::int32_t>(src, dst, n); return;
    case DType::I64: cast_elements<std::int64_t>(src, dst, n); return;
    case DType::Q4_0: ggml::dequantize_q4_0(src, dst, blocks); return;
    case DType::Q4_1: ggml::dequantize_q4_1(src, dst, blocks); return;
    case DType::Q5_0: ggml::dequantize_q5_0(src, dst, blocks); return;
    case DType::Q5_1: ggml::dequantize_q5_1(src, dst, blocks); return;
    case DType::Q8_0: ggml::dequantize_q8_0(src, dst, blocks); return;
    case DType::Q4_K: ggml::dequantize_q4_k(src, dst, blocks); return;
    case DType::Q5_K: ggml::dequantize_q5_k(src, dst, blocks); return;
    case DType::Q6_K: ggml::dequantize_q6_k(src, dst, blocks); return;
  }
  ATOM_CHECK(false);
}

}  // namespace

const DTypeTraits& dtype_traits(DType t) {
  const auto i = static_cast<std::size_t>(t);
  if (i >= kNumDTypes) fail("invalid dtype value {}", i);
  return kTraits[i];
}

void dequantize_to_f32(DType t, const void* src, float* dst, std::size_t n) {
  const auto& tr = dtype_traits(t);
  if (n % tr.block_elems != 0) {
    fail("cannot convert {} elements of {}: not a multiple of its block size {}", n, tr.name, tr.block_elems);
  }
  const auto* bytes = static_cast<const std::uint8_t*>(src);
  // Large tensors are converted in parallel, in chunks of whole blocks; results do not depend on chunking.
  constexpr std::size_t kChunkElems = std::size_t{1} << 16;
  const std::size_t chunk = kChunkElems / tr.block_elems * tr.block_elems;  // block_elems <= 256
  if (n <= chunk) {
    dequantize_range(t, bytes, dst, n);
    return;
  }
  const auto n_chunks = static_cast<std::int64_t>((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static)
  for (std::int64_t c = 0; c < n_chunks; ++c) {
    const std::size_t begin = static_cast<std::size_t>(c) * chunk;
    const std::size_t count = std::min(chunk, n - begin);
    dequantize_range(t, bytes + dtype_bytes(t, begin), dst + begin, count);
  }
}

}  // namespace atom
