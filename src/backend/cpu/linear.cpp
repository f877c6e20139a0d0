#include "backend/cpu/linear.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <mutex>

#include <algorithm>
#include <cmath>

#include "backend/cpu/kernels.h"
#include "common/error.h"

namespace atom::cpu {

DenseLinear::DenseLinear(std::shared_ptr<const std::vector<float>> weight, std::int64_t out_features,
                         std::int64_t in_features, std::vector<float> bias)
    : weight_(std::move(weight)), out_(out_features), in_(in_features), bias_(std::move(bias)) {
  ATOM_CHECK(weight_ != nullptr && out_ > 0 && in_ > 0);
  ATOM_CHECK(static_cast<std::int64_t>(weight_->size()) == out_ * in_);
  ATOM_CHECK(bias_.empty() || static_cast<std::int64_t>(bias_.size()) == out_);
}

void use_single_threaded_blas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

namespace {

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Rows [r0, r0 + rows) x outputs [n0, n0 + outs) of dense_fixed_order; kRows >= rows (surplus lanes repeat
// the last row and are not stored: one row, a decode step, multiplies only that row).
template <std::int64_t kRows>
inline void dense_tile(const float* x, std::int64_t r0, std::int64_t rows, const float* const wr[2],
                       std::int64_t outs, std::int64_t n0, std::int64_t N, std::int64_t K, float* y) {
  const std::int64_t k8 = K / 8 * 8;
  const float* xr[kRows];
  for (std::int64_t r = 0; r < kRows; ++r) xr[r] = x + (r0 + std::min(r, rows - 1)) * K;
  __m256 acc[kRows][2];
  for (auto& row : acc) row[0] = row[1] = _mm256_setzero_ps();
  for (std::int64_t k = 0; k < k8; k += 8) {
    const __m256 w0 = _mm256_loadu_ps(wr[0] + k), w1 = _mm256_loadu_ps(wr[1] + k);
    for (std::int64_t r = 0; r < kRows; ++r) {
      const __m256 xv = _mm256_loadu_ps(xr[r] + k);
      acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
    }
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t o = 0; o < outs; ++o) {
      float sum = hsum8(acc[r][o]);
      for (std::int64_t k = k8; k < K; ++k) sum = std::fma(xr[r][k], wr[o][k], sum);
      y[(r0 + r) * N + n0 + o] = sum;
    }
  }
}

// y[r, n] = x[r, :] . w[n, :] with one fixed order of operations per output, whatever m (batch-invariant):
// 8-lane FMA partial sums over k, a fixed horizontal sum, then the k % 8 tail in order. Tiles of up to 4 rows
// x 2 outputs share loads; every output still has its own accumulator and sequence.
void dense_fixed_order(const float* x, std::int64_t m, const float* w, std::int64_t N, std::int64_t K,
                       float* y) {
  // Blocks of 64 rows stay in L2 while every output sweeps them (an output's order of operations does not
  // depend on the blocking).
  constexpr std::int64_t kRowBlock = 64;
  for (std::int64_t rb = 0; rb < m; rb += kRowBlock) {
    const std::int64_t rb_end = std::min(m, rb + kRowBlock);
#pragma omp parallel for schedule(static)
    for (std::int64_t n0 = 0; n0 < N; n0 += 2) {
      const std::int64_t outs = std::min<std::int64_t>(2, N - n0);
      const float* const wr[2] = {w + n0 * K, w + (n0 + outs - 1) * K};
      for (std::int64_t r0 = rb; r0 < rb_end; r0 += 4) {
        const std::int64_t rows = std::min<std::int64_t>(4, rb_end - r0);
        if (rows == 1) {
          dense_tile<1>(x, r0, rows, wr, outs, n0, N, K, y);
        } else {
          dense_tile<4>(x, r0, rows, wr, outs, n0, N, K, y);
        }
      }
    }
  }
}

}  // namespace

void DenseLinear::forward(const float* x, std::int64_t m, float* y) const {
  if (m <= 0) return;
  if (batch_invariant()) {
    dense_fixed_order(x, m, weight_->data(), out_, in_, y);
    add_bias_rows(y, m);
    return;
  }
  use_single_threaded_blas();
  const std::int64_t work = m * out_ * in_;
  // Each OpenMP thread multiplies by its own block of weight rows (output features).
#pragma omp parallel if (work >= (1 << 16))
  {
    const std::int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    constexpr std::int64_t kAlign = 16;
    const std::int64_t blocks = (out_ + kAlign - 1) / kAlign;
    const std::int64_t n0 = std::min(out_, blocks * t / threads * kAlign);
    const std::int64_t n1 = std::min(out_, blocks * (t + 1) / threads * kAlign);
    if (n1 > n0) {
      const auto M = static_cast<blasint>(m), N = static_cast<blasint>(n1 - n0),
                 K = static_cast<blasint>(in_);
      const float* w = weight_->data() + n0 * in_;
      if (m == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, w, K, x, 1, 0.0f, y + n0, 1);
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, 0.0f, y + n0,
                    static_cast<blasint>(out_));
      }
    }
  }
  add_bias_rows(y, m);
}

void DenseLinear::add_bias_rows(float* y, std::int64_t m) const {
  if (bias_.empty()) return;
  for (std::int64_t i = 0; i < m; ++i) {
    float* row = y + i * out_;
    for (std::int64_t j = 0; j < out_; ++j) row[j] += bias_[static_cast<std::size_t>(j)];
  }
}

std::string DenseLinear::describe() const {
  return fmt::format("dense f32 [{} x {}]{}", out_, in_, bias_.empty() ? "" : " + bias");
}

HalfLinear::HalfLinear(const std::vector<float>& weight, std::int64_t out_features, std::int64_t in_features)
    : out_(out_features), in_(in_features) {
  ATOM_CHECK(out_ > 0 && in_ > 0);
  ATOM_CHECK(static_cast<std::int64_t>(weight.size()) == out_ * in_);
  const std::int64_t n = out_ * in_, n8 = n / 8 * 8;
  weight_.resize(static_cast<std::size_t>(n));
  const float* w = weight.data();
  std::uint16_t* h = weight_.data();
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n8; i += 8) {
    const __m128i v = _mm256_cvtps_ph(_mm256_loadu_ps(w + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i), v);
  }
  for (std::int64_t i = n8; i < n; ++i) {
    h[i] = static_cast<std::uint16_t>(
        _mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(w[i]), _MM_FROUND_TO_NEAREST_INT), 0));
  }
}

namespace {

inline float half_to_float(std::uint16_t h) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))); }

// y rows [r0, r0 + rows) x outputs [n0, n0 + outs) of x W^T, W fp16 [N, K]; kRows >= rows, kOuts >= outs
// (the surplus lanes repeat the last row / output and are not stored). Each output's order of operations is
// the same whatever kRows: 8-lane FMA partial sums over k, hsum8, then the tail in order.
template <std::int64_t kRows, std::int64_t kOuts>
inline void half_tile(const float* x, std::int64_t r0, std::int64_t rows, const std::uint16_t* w,
                      std::int64_t n0, std::int64_t outs, std::int64_t N, std::int64_t K, float* y) {
  const std::int64_t k8 = K / 8 * 8;
  const std::uint16_t* wr[kOuts];
  for (std::int64_t o = 0; o < kOuts; ++o) wr[o] = w + (n0 + std::min(o, outs - 1)) * K;
  const float* xr[kRows];
  for (std::int64_t r = 0; r < kRows; ++r) xr[r] = x + (r0 + std::min(r, rows - 1)) * K;
  __m256 acc[kRows][kOuts];
  for (auto& row : acc)
    for (auto& a : row) a = _mm256_setzero_ps();
  for (std::int64_t k = 0; k < k8; k += 8) {
    __m256 wv[kOuts];
    for (std::int64_t o = 0; o < kOuts; ++o)
      wv[o] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr[o] + k)));
    for (std::int64_t r = 0; r < kRows; ++r) {
      const __m256 xv = _mm256_loadu_ps(xr[r] + k);
      for (std::int64_t o = 0; o < kOuts; ++o) acc[r][o] = _mm256_fmadd_ps(xv, wv[o], acc[r][o]);
    }
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t o = 0; o < outs; ++o) {
      float sum = hsum8(acc[r][o]);
      for (std::int64_t k = k8; k < K; ++k) sum = std::fma(xr[r][k], half_to_float(wr[o][k]), sum);
      y[(r0 + r) * N + n0 + o] = sum;
    }
  }
}

}  // namespace

void HalfLinear::forward(const float* x, std::int64_t m, float* y) const {
  if (m <= 0) return;
  const std::int64_t N = out_, K = in_;
  const std::uint16_t* w = weight_.data();
  constexpr std::int64_t kOuts = 4, kRows = 4;
  // Blocks of 64 rows stay in L2 while every output sweeps them; tiles of up to 4 rows x 4 outputs share
  // loads (one row: a GEMV streaming the fp16 rows). Neither changes an output's order of operations.
  constexpr std::int64_t kRowBlock = 64;
  const std::int64_t tiles = (N + kOuts - 1) / kOuts;
  for (std::int64_t rb = 0; rb < m; rb += kRowBlock) {
    const std::int64_t rb_end = std::min(m, rb + kRowBlock);
#pragma omp parallel for schedule(static) if (m * N * K >= (1 << 16))
    for (std::int64_t tile = 0; tile < tiles; ++tile) {
      const std::int64_t n0 = tile * kOuts, outs = std::min(kOuts, N - n0);
      for (std::int64_t r0 = rb; r0 < rb_end; r0 += kRows) {
        const std::int64_t rows = std::min(kRows, rb_end - r0);
        if (rows == 1) {
          half_tile<1, kOuts>(x, r0, rows, w, n0, outs, N, K, y);
        } else {
          half_tile<kRows, kOuts>(x, r0, rows, w, n0, outs, N, K, y);
        }
      }
    }
  }
}

std::string HalfLinear::describe() const { return fmt::format("dense f16 [{} x {}]", out_, in_); }

}  // namespace atom::cpu
