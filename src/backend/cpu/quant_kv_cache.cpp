#include "backend/cpu/quant_kv_cache.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "format/format.h"

namespace atom::cpu {

void quantize_kv_group(const float* x, std::int64_t n, int bits, std::uint8_t* codes, std::uint16_t& scale_bits,
                       std::uint16_t& lo_bits) {
  if (n < 8) {
    quant::quantize_asymmetric_group(x, n, bits, codes, scale_bits, lo_bits);
    return;
  }
  // Minimum and maximum; min/max order does not matter for finite values (a NaN or infinity goes scalar:
  // fminf's NaN rule differs from min_ps's, and inf - inf would need it too).
  __m256 lo_v = _mm256_loadu_ps(x), hi_v = lo_v, finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  const __m256 inf = _mm256_set1_ps(INFINITY);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    lo_v = _mm256_min_ps(v, lo_v);
    hi_v = _mm256_max_ps(v, hi_v);
    finite = _mm256_and_ps(finite, _mm256_cmp_ps(_mm256_and_ps(v, abs_mask), inf, _CMP_LT_OQ));
  }
  alignas(32) float lo_lanes[8], hi_lanes[8];
  _mm256_store_ps(lo_lanes, lo_v);
  _mm256_store_ps(hi_lanes, hi_v);
  float lo_x = lo_lanes[0], hi_x = hi_lanes[0];
  for (int l = 1; l < 8; ++l) lo_x = std::min(lo_x, lo_lanes[l]), hi_x = std::max(hi_x, hi_lanes[l]);
  bool all_finite = _mm256_movemask_ps(finite) == 0xFF;
  for (; i < n; ++i) {
    all_finite = all_finite && std::isfinite(x[i]);
    lo_x = std::min(lo_x, x[i]);
    hi_x = std::max(hi_x, x[i]);
  }
  // A zero extreme goes scalar too: fminf keeps the first of two zeros in element order, whose sign the lanes
  // may not see first.
  if (!all_finite || lo_x == 0.0f || hi_x == 0.0f) {
    quant::quantize_asymmetric_group(x, n, bits, codes, scale_bits, lo_bits);
    return;
  }
  // From here exactly the format's steps: fp16 minimum, fp16 scale of (max - minimum) / qmax, then per value
  // nearbyint((x - lo) / scale) (round_ps in the default nearest-even mode, as nearbyint), clamped to [0, qmax].
  const float qmax = static_cast<float>((1 << bits) - 1);
  lo_bits = fp32_to_fp16(lo_x);
  const float lo = fp16_to_fp32(lo_bits);
  scale_bits = fp32_to_fp16((hi_x - lo) / qmax);
  const float scale = fp16_to_fp32(scale_bits);
  if (scale == 0.0f) {
    std::fill(codes, codes + n, std::uint8_t{0});
    return;
  }
  const __m256 lo8 = _mm256_set1_ps(lo), scale8 = _mm256_set1_ps(scale), qmax8 = _mm256_set1_ps(qmax);
  i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), lo8), scale8),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i c = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, _mm256_setzero_ps()), qmax8));
    const __m128i c16 = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + i), _mm_packus_epi16(c16, c16));
  }
  for (; i < n; ++i) {
    codes[i] = static_cast<std::uint8_t>(std::fmin(std::fmax(std::nearbyint((x[i] - lo) / scale), 0.0f), qmax));
  }
}

QuantKvRowStore::QuantKvRowStore(std::int64_t row_width, std::int64_t head_dim, int bits, std::int64_t group_size)
    : width_(row_width), head_dim_(head_dim), group_(0), groups_(0), row_bytes_(0), bits_(bits) {
  if (bits != 4 && bits != 8) fail("KV cache: {} bits (expected 4 or 8)", bits);
  if (head_dim <= 0 || row_width <= 0 || row_width % head_dim != 0) {
    fail("KV cache: head_dim {} does not divide the row width {}", head_dim, row_width);
  }
  if (bits == 4 && head_dim % 2 != 0) fail("KV cache: UINT4 needs an even head_dim, got {}", head_dim);
  group_ = group_size == 0 ? head_dim : group_size;
  if (group_ < 0 || head_dim % group_ != 0) {
    fail("KV cache: kv_group_size {} does not divide head_dim {}", group_size, head_dim);
  }
  if (bits == 4 && group_ % 2 != 0) fail("KV cache: UINT4 needs an even kv_group_size, got {}", group_size);
  groups_ = row_width / group_;
  row_bytes_ = bits == 4 ? row_width / 2 : row_width;
}

void QuantKvRowStore::append(const float* rows, std::int64_t n) {
  codes_.resize(static_cast<std::size_t>((rows_ + n) * row_bytes_));
  scales_.resize(static_cast<std::size_t>((rows_ + n) * groups_));
  mins_.resize(scales_.size());
  std::vector<std::uint8_t> group_codes(static_cast<std::size_t>(group_));
  for (std::int64_t r = 0; r < n; ++r) {
    const std::int64_t row = rows_ + r;
    for (std::int64_t g = 0; g < groups_; ++g) {
      quantize_kv_group(rows + r * width_ + g * group_, group_, bits_, group_codes.data(),
                        scales_[row * groups_ + g], mins_[row * groups_ + g]);
      std::uint8_t* dst = codes_.data() + row * row_bytes_ + (bits_ == 4 ? g * group_ / 2 : g * group_);
      if (bits_ == 4) {
        for (std::int64_t i = 0; i < group_; i += 2) {
          dst[i / 2] = static_cast<std::uint8_t>(group_codes[i] | (group_codes[i + 1] << 4));
        }
      } else {
        std::copy(group_codes.begin(), group_codes.end(), dst);
      }
    }
  }
  rows_ += n;
}

void QuantKvRowStore::read(std::int64_t begin, std::int64_t end, float* out) const {
  if (begin < 0 || end > rows_ || begin > end) fail("KV cache: read of rows [{}, {}) of {}", begin, end, rows_);
  for (std::int64_t row = begin; row < end; ++row) {
    const std::uint8_t* src = codes_.data() + row * row_bytes_;
    float* dst = out + (row - begin) * width_;
    for (std::int64_t g = 0; g < groups_; ++g) {
      const std::uint16_t s_bits = scales_[row * groups_ + g], lo_bits = mins_[row * groups_ + g];
      const __m256 s = _mm256_set1_ps(fp16_to_fp32(s_bits)), lo = _mm256_set1_ps(fp16_to_fp32(lo_bits));
      const std::int64_t base = g * group_;
      std::int64_t i = 0;
      if (bits_ == 8) {
        for (; i + 8 <= group_; i += 8) {  // fma(q, scale, lo), exactly as the format's scalar rule
          const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + base + i));
          _mm256_storeu_ps(dst + base + i, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)), s, lo));
        }
        for (; i < group_; ++i) dst[base + i] = quant::dequantize_asymmetric_value(src[base + i], s_bits, lo_bits);
      } else {
        const std::uint8_t* packed = src + base / 2;
        for (; i + 16 <= group_; i += 16) {
          const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed + i / 2));
          const __m128i low = _mm_and_si128(b, _mm_set1_epi8(0x0F));
          const __m128i high = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
          const __m128i inter = _mm_unpacklo_epi8(low, high);  // element order: low nibble first
          _mm256_storeu_ps(dst + base + i, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(inter)), s, lo));
          _mm256_storeu_ps(dst + base + i + 8,
                           _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(inter, 8))), s, lo));
        }
        for (; i < group_; ++i) {
          const std::uint8_t q = (packed[i / 2] >> (4 * (i & 1))) & 0x0Fu;
          dst[base + i] = quant::dequantize_asymmetric_value(q, s_bits, lo_bits);
        }
      }
    }
  }
}

bool QuantKvRowStore::quantized_rows(QuantKvRows& view) const {
  view.bits = bits_;
  view.rows = rows_;
  view.run_rows = std::max<std::int64_t>(rows_, 1);
  view.code_stride = row_bytes_;
  view.group_size = group_;
  view.param_stride = groups_ * static_cast<std::int64_t>(sizeof(std::uint16_t));
  view.runs.assign(1, {codes_.data(), reinterpret_cast<const std::uint8_t*>(scales_.data()),
                       reinterpret_cast<const std::uint8_t*>(mins_.data())});
  return true;
}

void QuantKvRowStore::truncate(std::int64_t rows) {
  if (rows < 0 || rows > rows_) fail("KV cache: truncate to {} rows of {}", rows, rows_);
  rows_ = rows;
  codes_.resize(static_cast<std::size_t>(rows_ * row_bytes_));
  scales_.resize(static_cast<std::size_t>(rows_ * groups_));
  mins_.resize(scales_.size());
}

std::size_t QuantKvRowStore::bytes() const {
  return codes_.capacity() + (scales_.capacity() + mins_.capacity()) * sizeof(std::uint16_t);
}

std::unique_ptr<KvRowStore> make_u8_kv_row_store(std::int64_t row_width, std::int64_t head_dim) {
  return std::make_unique<QuantKvRowStore>(row_width, head_dim, 8);
}

std::unique_ptr<KvRowStore> make_u4_kv_row_store(std::int64_t row_width, std::int64_t head_dim) {
  return std::make_unique<QuantKvRowStore>(row_width, head_dim, 4);
}

KvRowStoreFactory kv_row_store_factory(KvDType dtype, std::int64_t group_size) {
  const auto quantized = [group_size](int bits) -> KvRowStoreFactory {
    return [bits, group_size](std::int64_t row_width, std::int64_t head_dim) -> std::unique_ptr<KvRowStore> {
      return std::make_unique<QuantKvRowStore>(row_width, head_dim, bits, group_size);
    };
  };
  switch (dtype) {
    case KvDType::F32:
      if (group_size != 0) fail("KV cache: kv_group_size {} needs a quantized cache, not f32", group_size);
      return make_f32_kv_row_store;
    case KvDType::U8: return group_size == 0 ? KvRowStoreFactory(make_u8_kv_row_store) : quantized(8);
    case KvDType::U4: return group_size == 0 ? KvRowStoreFactory(make_u4_kv_row_store) : quantized(4);
  }
  fail("KV cache: unknown dtype {}", static_cast<int>(dtype));
}

}  // namespace atom::cpu
