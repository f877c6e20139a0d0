#include "backend/cpu/quant_linear.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backend/cpu/kernels.h"
#include "common/error.h"

namespace atom::cpu {

using quant::NumberFormat;

namespace {

void add_bias(const std::vector<float>& bias, std::int64_t m, std::int64_t n, float* y) {
  if (bias.empty()) return;
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) y[i * n + j] += bias[static_cast<std::size_t>(j)];
  }
}

void check_bias(const std::vector<float>& bias, std::int64_t n, const std::string& name) {
  if (!bias.empty() && static_cast<std::int64_t>(bias.size()) != n) {
    fail("{}: bias has {} entries for {} outputs", name, bias.size(), n);
  }
}

std::string layout_text(const quant::QuantizedLinearWeights& q) {
  std::string text = fmt::format("{} g{}", quant::format_name(q.format), q.group);
  if (q.n_outliers > 0) text += fmt::format(" + {} int8 outliers", q.n_outliers);
  return text;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

constexpr std::int64_t kFusedMaxRows = 8;     // below this, weights are decoded in registers per call
constexpr std::int64_t kBlockRows = 256;      // output rows dequantized per sgemm block

}  // namespace

// ---- AtomLinear

AtomLinear::AtomLinear(quant::QuantizedLinearWeights weights, float act_clip, std::string name, InputOrder order,
                       std::vector<float> bias)
    : w_(prepare_atom_weights(std::move(weights), name.c_str(), order)),
      act_clip_(act_clip),
      name_(std::move(name)),
      bias_(std::move(bias)) {
  if (!(act_clip_ > 0.0f && act_clip_ <= 1.0f)) fail("{}: activation clip ratio {} not in (0, 1]", name_, act_clip_);
  check_bias(bias_, w_.q.n, name_);
}

void AtomLinear::forward(const float* x, std::int64_t m, float* y) const {
  if (m <= 0) return;
  quantize_activations_avx2(x, m, w_, act_clip_, scratch_);
  atom_gemm_avx2(scratch_, w_, y);
  add_bias(bias_, m, w_.q.n, y);
}

bool AtomLinear::shares_activations_with(const AtomLinear& other) const {
  return act_clip_ == other.act_clip_ && same_activation_layout(w_, other.w_);
}

void forward_shared_input(std::span<const LinearOp* const> ops, const float* x, std::int64_t m,
                          std::span<float* const> ys) {
  ATOM_CHECK(ops.size() == ys.size());
  if (m <= 0 || ops.empty()) return;
  const AtomLinear* atom_ops[kMaxSharedProducts];
  bool shared = ops.size() <= kMaxSharedProducts;
  for (std::size_t i = 0; shared && i < ops.size(); ++i) {
    atom_ops[i] = dynamic_cast<const AtomLinear*>(ops[i]);
    shared = atom_ops[i] != nullptr && atom_ops[0]->shares_activations_with(*atom_ops[i]);
  }
  if (!shared) {
    for (std::size_t i = 0; i < ops.size(); ++i) ops[i]->forward(x, m, ys[i]);
    return;
  }
  const AtomLinear& first = *atom_ops[0];
  quantize_activations_avx2(x, m, first.w_, first.act_clip_, first.scratch_);
  const AtomPreparedWeights* weights[kMaxSharedProducts];
  for (std::size_t i = 0; i < ops.size(); ++i) weights[i] = &atom_ops[i]->w_;
  atom_gemm_avx2(first.scratch_, std::span(weights, ops.size()), ys);
  for (std::size_t i = 0; i < ops.size(); ++i) add_bias(atom_ops[i]->bias_, m, atom_ops[i]->w_.q.n, ys[i]);
}

std::string AtomLinear::describe() const {
  return fmt::format("atom {} (a_clip {}) [{} x {}]{}", layout_text(w_.q), act_clip_, w_.q.n, w_.q.k(),
                     bias_.empty() ? "" : " + bias");
}

// ---- WeightOnlyLinear

WeightOnlyLinear::WeightOnlyLinear(quant::QuantizedLinearWeights weights, std::string name, InputOrder order,
                                   std::vector<float> bias)
    : q_(std::move(weights)), name_(std::move(name)), bias_(std::move(bias)) {
  quant::validate(q_, name_.c_str());
  if (!quant::format_is_packed(q_.format)) {
    fail("{}: weight-only linear needs a 4-bit weight format, got {}", name_, quant::format_name(q_.format));
  }
  if (q_.group % 32 != 0) fail("{}: group size {} is not a multiple of 32 (CPU kernels)", name_, q_.group);
  check_bias(bias_, q_.n, name_);
  chunk_ = q_.group % 64 == 0 ? 64 : 32;
  n_out_pad_ = (q_.n_outliers + 7) / 8 * 8;
  const std::int64_t groups = q_.k_normal / q_.group;
  const float code_unit = q_.format == NumberFormat::kFp4 ? 0.5f : 1.0f;  // LUT gives doubled FP4 codes
  scales_.resize(static_cast<std::size_t>(q_.n * groups));
  for (std::size_t i = 0; i < scales_.size(); ++i) scales_[i] = fp16_to_fp32(q_.scales[i]) * code_unit;
  outlier_scales_.assign(static_cast<std::size_t>(q_.n), 0.0f);
  outliers_.assign(static_cast<std::size_t>(q_.n * n_out_pad_), 0);
  for (std::int64_t n = 0; n < q_.n && q_.n_outliers > 0; ++n) {
    outlier_scales_[n] = fp16_to_fp32(q_.outlier_scales[n]);
    std::memcpy(outliers_.data() + n * n_out_pad_, q_.outliers.data() + n * q_.n_outliers,
                static_cast<std::size_t>(q_.n_outliers));
  }
  const auto source = [&](std::int64_t j) -> std::int32_t {
    return order == InputOrder::kOriginal ? q_.perm[j] : static_cast<std::int32_t>(j);
  };
  gather_.resize(static_cast<std::size_t>(q_.k_normal + n_out_pad_));
  for (std::int64_t p = 0; p < q_.k_normal; ++p) gather_[p] = source(split_layout_channel(p, chunk_));
  for (std::int64_t o = 0; o < n_out_pad_; ++o) gather_[q_.k_normal + o] = o < q_.n_outliers ? source(q_.k_normal + o) : -1;
}

void WeightOnlyLinear::forward(const float* x, std::int64_t m, float* y) const {
  if (m <= 0) return;
  const std::int64_t K = q_.k(), width = q_.k_normal + n_out_pad_;
  std::vector<float> xr(static_cast<std::size_t>(m * width));
#pragma omp parallel for schedule(static) if (m > 1)
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t p = 0; p < width; ++p) xr[r * width + p] = gather_[p] >= 0 ? x[r * K + gather_[p]] : 0.0f;
  }
  if (m < kFusedMaxRows || batch_invariant())
    forward_fused(xr.data(), m, y);
  else forward_blocked(xr.data(), m, y);
  add_bias(bias_, m, q_.n, y);
}

namespace {

__m256i code_lut(NumberFormat format) {
  alignas(32) std::int8_t lut_bytes[32];
  for (int i = 0; i < 32; ++i) {
    const auto nibble = static_cast<std::uint8_t>(i & 15);
    lut_bytes[i] = format == NumberFormat::kFp4 ? quant::fp4_decode_doubled(nibble) : quant::nibble_to_int4(nibble);
  }
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(lut_bytes));
}

// The C (64 or 32) codes of the packed weight bytes at `w` as int8 in split-layout order (even channels, then
// odd ones), matching the gathered activations.
inline void decode_chunk(const std::uint8_t* w, std::int64_t C, __m256i lut, std::int8_t* codes) {
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  if (C == 64) {
    const __m256i wb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    _mm256_store_si256(reinterpret_cast<__m256i*>(codes), _mm256_shuffle_epi8(lut, _mm256_and_si256(wb, low_nibbles)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(codes + 32),
                       _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(wb, 4), low_nibbles)));
  } else {
    const __m128i wb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
    const __m256i both = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(wb, 4), wb), low_nibbles);
    _mm256_store_si256(reinterpret_cast<__m256i*>(codes), _mm256_shuffle_epi8(lut, both));
  }
}

inline __m256 codes_to_float(const std::int8_t* codes) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes))));
}

}  // namespace

// Per output row: nibbles -> int8 (LUT) -> fp32, FMA with up to 4 activation rows, group scale at the end of
// each group.
void WeightOnlyLinear::forward_fused(const float* xr, std::int64_t m, float* y) const {
  const std::int64_t N = q_.n, G = q_.group, groups = q_.k_normal / G, width = q_.k_normal + n_out_pad_;
  const std::int64_t row_bytes = q_.k_normal / 2, C = chunk_;
  const __m256i lut = code_lut(q_.format);
#pragma omp parallel for schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    const std::uint8_t* wrow = q_.packed.data() + n * row_bytes;
    for (std::int64_t r0 = 0; r0 < m; r0 += 4) {
      const std::int64_t rows = std::min<std::int64_t>(4, m - r0);
      __m256 acc[4], gacc[4];
      for (auto& v : acc) v = _mm256_setzero_ps();
      alignas(32) std::int8_t codes[64];
      for (std::int64_t g = 0; g < groups; ++g) {
        for (auto& v : gacc) v = _mm256_setzero_ps();
        for (std::int64_t k = g * G; k < (g + 1) * G; k += C) {
          decode_chunk(wrow + k / 2, C, lut, codes);
          for (std::int64_t piece = 0; piece < C; piece += 8) {
            const __m256 wf = codes_to_float(codes + piece);
            for (std::int64_t r = 0; r < rows; ++r) {
              gacc[r] = _mm256_fmadd_ps(wf, _mm256_loadu_ps(xr + (r0 + r) * width + k + piece), gacc[r]);
            }
          }
        }
        const __m256 s = _mm256_set1_ps(scales_[n * groups + g]);
        for (std::int64_t r = 0; r < rows; ++r) acc[r] = _mm256_fmadd_ps(gacc[r], s, acc[r]);
      }
      if (n_out_pad_ > 0) {
        for (auto& v : gacc) v = _mm256_setzero_ps();
        const std::int8_t* wo = outliers_.data() + n * n_out_pad_;
        for (std::int64_t o = 0; o < n_out_pad_; o += 8) {
          const __m256 wf = codes_to_float(wo + o);
          for (std::int64_t r = 0; r < rows; ++r) {
            gacc[r] = _mm256_fmadd_ps(wf, _mm256_loadu_ps(xr + (r0 + r) * width + q_.k_normal + o), gacc[r]);
          }
        }
        const __m256 s = _mm256_set1_ps(outlier_scales_[n]);
        for (std::int64_t r = 0; r < rows; ++r) acc[r] = _mm256_fmadd_ps(gacc[r], s, acc[r]);
      }
      for (std::int64_t r = 0; r < rows; ++r) y[(r0 + r) * N + n] = hsum(acc[r]);
    }
  }
}

// Many rows: dequantize blocks of output rows to fp32 (in the gathered layout) and multiply with sgemm.
void WeightOnlyLinear::forward_blocked(const float* xr, std::int64_t m, float* y) const {
  const std::int64_t N = q_.n, G = q_.group, groups = q_.k_normal / G, width = q_.k_normal + n_out_pad_;
  const std::int64_t row_bytes = q_.k_normal / 2, C = chunk_;
  const __m256i lut = code_lut(q_.format);
  std::vector<float> block(static_cast<std::size_t>(std::min(kBlockRows, N) * width));
  for (std::int64_t n0 = 0; n0 < N; n0 += kBlockRows) {
    const std::int64_t rows = std::min(kBlockRows, N - n0);
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < rows; ++i) {
      const std::int64_t n = n0 + i;
      const std::uint8_t* wrow = q_.packed.data() + n * row_bytes;
      float* dst = block.data() + i * width;
      alignas(32) std::int8_t codes[64];
      for (std::int64_t k = 0; k < q_.k_normal; k += C) {
        decode_chunk(wrow + k / 2, C, lut, codes);
        const __m256 s = _mm256_set1_ps(scales_[n * groups + k / G]);
        for (std::int64_t piece = 0; piece < C; piece += 8) {
          _mm256_storeu_ps(dst + k + piece, _mm256_mul_ps(codes_to_float(codes + piece), s));
        }
      }
      for (std::int64_t o = 0; o < n_out_pad_; ++o) {
        dst[q_.k_normal + o] = outliers_[n * n_out_pad_ + o] * outlier_scales_[n];
      }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m), static_cast<blasint>(rows),
                static_cast<blasint>(width), 1.0f, xr, static_cast<blasint>(width), block.data(),
                static_cast<blasint>(width), 0.0f, y + n0, static_cast<blasint>(N));
  }
}

std::string WeightOnlyLinear::describe() const {
  return fmt::format("weight-only {} [{} x {}]{}", layout_text(q_), q_.n, q_.k(), bias_.empty() ? "" : " + bias");
}

}  // namespace atom::cpu
