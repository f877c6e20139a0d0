#include "quant/gptq.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"

// LAPACK (shipped inside OpenBLAS): Cholesky factorization and inverse from it, column-major.
extern "C" {
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info);
void dpotri_(const char* uplo, const int* n, double* a, const int* lda, int* info);
}

namespace atom::quant {

namespace {

constexpr std::int64_t kHessianChunkRows = 256;  // rows multiplied in fp32 before joining the fp64 sum

// Upper Cholesky factor U of H^-1 (H^-1 = U^T U), row-major fp32, for H + damp*I; false if not
// positive definite.
bool inverse_cholesky_upper(const std::vector<double>& h, std::int64_t k, double damp, std::vector<float>& u) {
  std::vector<double> a(h);
  for (std::int64_t i = 0; i < k; ++i) a[i * k + i] += damp;
  const int n = static_cast<int>(k);
  int info = 0;
  dpotrf_("L", &n, a.data(), &n, &info);
  if (info != 0) return false;
  dpotri_("L", &n, a.data(), &n, &info);
  if (info != 0) return false;
  for (std::int64_t j = 0; j < k; ++j) {  // mirror the lower triangle (column-major) to the upper
    for (std::int64_t i = j + 1; i < k; ++i) a[j + i * k] = a[i + j * k];
  }
  dpotrf_("U", &n, a.data(), &n, &info);
  if (info != 0) return false;
  u.assign(static_cast<std::size_t>(k * k), 0.0f);
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t j = i; j < k; ++j) u[i * k + j] = static_cast<float>(a[i + j * k]);  // U(i, j), column-major
  }
  return true;
}

std::int8_t quantize_code(float w, float scale, NumberFormat format, float qmax, float& dequantized) {
  if (format == NumberFormat::kFp4) {
    const std::uint8_t code = quantize_fp4_value(w, scale);
    dequantized = fp4_decode(code) * scale;
    return static_cast<std::int8_t>(code);
  }
  const std::int8_t code = quantize_symmetric_value(w, scale, qmax);
  dequantized = static_cast<float>(code) * scale;
  return code;
}

void check_spec(const WeightQuantSpec& spec, std::int64_t k, const char* what) {
  validate_layout(k - spec.n_outliers, spec.n_outliers, spec.group, spec.format, what);
  if (!(spec.clip > 0.0f && spec.clip <= 1.0f)) fail("{}: weight clip ratio {} not in (0, 1]", what, spec.clip);
}

// Dequantized weights of q in the original channel order, [n, K].
std::vector<float> dequantize_original_order(const QuantizedLinearWeights& q) {
  const std::vector<float> reordered = dequantize(q);
  const std::int64_t k = q.k();
  std::vector<float> out(reordered.size());
  for (std::int64_t r = 0; r < q.n; ++r) {
    for (std::int64_t j = 0; j < k; ++j) out[r * k + q.perm[j]] = reordered[r * k + j];
  }
  return out;
}

}  // namespace

// ---- HessianAccumulator

HessianAccumulator::HessianAccumulator(std::int64_t k) : k_(k), sum_(static_cast<std::size_t>(k * k), 0.0) {
  if (k <= 0) fail("HessianAccumulator: bad width {}", k);
}

void HessianAccumulator::add(const float* x, std::int64_t m) {
  std::vector<float> chunk(static_cast<std::size_t>(k_ * k_));
  for (std::int64_t r0 = 0; r0 < m; r0 += kHessianChunkRows) {
    const std::int64_t rows = std::min(kHessianChunkRows, m - r0);
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, static_cast<blasint>(k_), static_cast<blasint>(rows), 1.0f,
                x + r0 * k_, static_cast<blasint>(k_), 0.0f, chunk.data(), static_cast<blasint>(k_));
    for (std::int64_t i = 0; i < k_; ++i) {
      for (std::int64_t j = i; j < k_; ++j) sum_[i * k_ + j] += chunk[i * k_ + j];
    }
  }
  samples_ += m;
}

std::vector<double> HessianAccumulator::hessian() const {
  std::vector<double> h(sum_.size(), 0.0);
  if (samples_ == 0) return h;
  const double f = 2.0 / static_cast<double>(samples_);
  for (std::int64_t i = 0; i < k_; ++i) {
    for (std::int64_t j = i; j < k_; ++j) h[i * k_ + j] = h[j * k_ + i] = f * sum_[i * k_ + j];
  }
  return h;
}

std::vector<double> HessianAccumulator::diagonal_sum_of_squares() const {
  std::vector<double> d(static_cast<std::size_t>(k_));
  for (std::int64_t i = 0; i < k_; ++i) d[i] = sum_[i * k_ + i];
  return d;
}

// ---- GPTQ

void check_gptq_arguments(std::span<const float> w, std::int64_t n, std::int64_t hessian_size,
                          std::span<const std::int32_t> perm, const WeightQuantSpec& spec, const GptqOptions& options,
                          const char* what) {
  const auto K = static_cast<std::int64_t>(perm.size());
  check_spec(spec, K, what);
  validate_perm(perm, K, what);
  if (n <= 0 || static_cast<std::int64_t>(w.size()) != n * K) fail("{}: {} weights for [{}, {}]", what, w.size(), n, K);
  if (hessian_size != K * K) fail("{}: Hessian has {} entries, expected {} x {}", what, hessian_size, K, K);
  if (options.block <= 0 || !(options.percdamp > 0.0)) {
    fail("{}: bad GPTQ options (block {}, percdamp {})", what, options.block, options.percdamp);
  }
}

void fail_not_positive_definite(const char* what, double damp, const GptqOptions& options, int retries) {
  fail("{}: Hessian is not positive definite even with damping {:.3g} (percdamp {} x 10^{}); the calibration "
       "inputs of this layer are degenerate",
       what, damp, options.percdamp, retries);
}

void set_outlier_codes(const float* columns, QuantizedLinearWeights& q) {
  const std::int64_t n = q.n, n_out = q.n_outliers;
  if (n_out == 0) return;
  std::vector<float> rows(static_cast<std::size_t>(n * n_out));
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t o = 0; o < n_out; ++o) rows[r * n_out + o] = columns[o * n + r];
  }
  SymmetricGroups oq = quantize_symmetric_groups(rows, n, n_out, n_out, NumberFormat::kInt8, 1.0f);
  q.outliers = std::move(oq.codes);
  q.outlier_scales = std::move(oq.scales);
}

QuantizedLinearWeights gptq_quantize(std::span<const float> w, std::int64_t n, std::span<const double> hessian,
                                     std::span<const std::int32_t> perm, const WeightQuantSpec& spec,
                                     const GptqOptions& options, const char* what, GptqReport* report) {
  const auto K = static_cast<std::int64_t>(perm.size());
  check_gptq_arguments(w, n, static_cast<std::int64_t>(hessian.size()), perm, spec, options, what);
  const std::int64_t Kn = K - spec.n_outliers, G = spec.group, groups = Kn / G, B = options.block;
  const float qmax = format_qmax(spec.format);
  GptqReport rep;

  // Columns in the reordered order, transposed: wt[j, r] is row r's weight on reordered channel j.
  std::vector<float> wt(static_cast<std::size_t>(K * n));
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t j = 0; j < K; ++j) wt[j * n + r] = w[r * K + perm[j]];
  }
  std::vector<double> h(static_cast<std::size_t>(K * K));
  for (std::int64_t i = 0; i < K; ++i) {
    for (std::int64_t j = 0; j < K; ++j) h[i * K + j] = hessian[static_cast<std::size_t>(perm[i]) * K + perm[j]];
  }
  double diag_sum = 0.0;
  for (std::int64_t i = 0; i < K; ++i) {
    if (!std::isfinite(h[i * K + i])) fail("{}: Hessian diagonal entry {} is not finite", what, perm[i]);
    if (h[i * K + i] == 0.0) {  // channel never active: any weight works; zero it as the reference does
      h[i * K + i] = 1.0;
      std::fill(wt.begin() + i * n, wt.begin() + (i + 1) * n, 0.0f);
      ++rep.dead_columns;
    }
    diag_sum += h[i * K + i];
  }
  std::vector<float> u;
  double damp = options.percdamp * diag_sum / static_cast<double>(K);
  for (;;) {
    if (inverse_cholesky_upper(h, K, damp, u)) break;
    if (rep.retries == options.damp_retries) fail_not_positive_definite(what, damp, options, rep.retries);
    ++rep.retries;
    damp *= 10.0;
  }
  rep.damp = damp;

  std::vector<std::int8_t> codes(static_cast<std::size_t>(n * Kn));
  std::vector<std::uint16_t> scales(static_cast<std::size_t>(n * groups));
  const auto group_scales = [&](std::int64_t g, std::int64_t r_begin, std::int64_t r_end) {
    for (std::int64_t r = r_begin; r < r_end; ++r) {
      float max_abs = 0.0f;
      for (std::int64_t j = g * G; j < (g + 1) * G; ++j) max_abs = std::fmax(std::fabs(wt[j * n + r]), max_abs);
      scales[r * groups + g] = fp32_to_fp16(spec.clip * max_abs / qmax);
    }
  };
  if (options.static_groups) {
    for (std::int64_t g = 0; g < groups; ++g) group_scales(g, 0, n);
  }

  constexpr std::int64_t kRowChunk = 64;  // rows are independent given H: threads take row ranges
  const std::int64_t row_chunks = (n + kRowChunk - 1) / kRowChunk;
  std::vector<float> err(static_cast<std::size_t>(B * n));
  double loss = 0.0;
  for (std::int64_t i1 = 0; i1 < Kn; i1 += B) {
    const std::int64_t i2 = std::min(i1 + B, Kn);
#pragma omp parallel for schedule(static) reduction(+ : loss)
    for (std::int64_t c = 0; c < row_chunks; ++c) {
      const std::int64_t r0 = c * kRowChunk, r1 = std::min(n, r0 + kRowChunk);
      for (std::int64_t i = i1; i < i2; ++i) {
        if (!options.static_groups && i % G == 0) group_scales(i / G, r0, r1);
        const float d = u[i * K + i];
        float* col = wt.data() + i * n;
        float* e = err.data() + (i - i1) * n;
        for (std::int64_t r = r0; r < r1; ++r) {
          const float scale = fp16_to_fp32(scales[r * groups + i / G]);
          float dq = 0.0f;
          codes[r * Kn + i] = quantize_code(col[r], scale, spec.format, qmax, dq);
          const float diff = col[r] - dq;
          loss += static_cast<double>(diff) * diff / (static_cast<double>(d) * d) / 2.0;
          e[r] = diff / d;
        }
        for (std::int64_t j = i + 1; j < i2; ++j) {
          const float hij = u[i * K + j];
          float* dst = wt.data() + j * n;
          for (std::int64_t r = r0; r < r1; ++r) dst[r] -= e[r] * hij;
        }
      }
    }
    if (i2 < K) {  // lazy update of every later column, outliers included: wt[i2:, :] -= U[i1:i2, i2:]^T err
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<blasint>(K - i2), static_cast<blasint>(n),
                  static_cast<blasint>(i2 - i1), -1.0f, u.data() + i1 * K + i2, static_cast<blasint>(K), err.data(),
                  static_cast<blasint>(n), 1.0f, wt.data() + i2 * n, static_cast<blasint>(n));
    }
  }
  rep.loss = loss;

  QuantizedLinearWeights q;
  q.n = n;
  q.k_normal = Kn;
  q.n_outliers = spec.n_outliers;
  q.group = G;
  q.format = spec.format;
  q.packed = format_is_packed(spec.format) ? pack_nibbles(codes) : std::vector<std::uint8_t>(codes.begin(), codes.end());
  q.scales = std::move(scales);
  set_outlier_codes(wt.data() + Kn * n, q);
  q.perm.assign(perm.begin(), perm.end());
  if (report) *report = rep;
  return q;
}

QuantizedLinearWeights rtn_quantize(std::span<const float> w, std::int64_t n, std::span<const std::int32_t> perm,
                                    const WeightQuantSpec& spec) {
  check_spec(spec, static_cast<std::int64_t>(perm.size()), "rtn_quantize");
  return quantize_weights_rtn(w, n, perm, spec.n_outliers, spec.group, spec.format, spec.clip);
}

std::vector<float> fake_quantize_activations(std::span<const float> x, std::int64_t m,
                                             std::span<const std::int32_t> perm, const ActQuantSpec& spec) {
  const QuantizedActivations a = quantize_activations(x, m, perm, spec.n_outliers, spec.group, spec.format, spec.clip);
  const std::vector<float> reordered = dequantize(a);
  const auto k = static_cast<std::int64_t>(perm.size());
  std::vector<float> out(reordered.size());
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t j = 0; j < k; ++j) out[r * k + perm[j]] = reordered[r * k + j];
  }
  return out;
}

double linear_output_mse(std::span<const float> x, std::int64_t m, std::span<const float> w,
                         const QuantizedLinearWeights& q, const ActQuantSpec* act) {
  validate(q, "linear_output_mse");
  const std::int64_t k = q.k(), n = q.n;
  if (static_cast<std::int64_t>(x.size()) != m * k || static_cast<std::int64_t>(w.size()) != n * k) {
    fail("linear_output_mse: {} inputs / {} weights do not fit [{}, {}] x [{}, {}]", x.size(), w.size(), m, k, n, k);
  }
  if (m == 0) return 0.0;
  const std::vector<float> wq = dequantize_original_order(q);
  std::vector<float> xq;
  if (act) xq = fake_quantize_activations(x, m, q.perm, *act);
  const float* xq_data = act ? xq.data() : x.data();
  std::vector<float> y(static_cast<std::size_t>(m * n)), yq(y.size());
  const auto M = static_cast<blasint>(m), N = static_cast<blasint>(n), Kb = static_cast<blasint>(k);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, Kb, 1.0f, x.data(), Kb, w.data(), Kb, 0.0f, y.data(), N);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, Kb, 1.0f, xq_data, Kb, wq.data(), Kb, 0.0f, yq.data(), N);
  double sum = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    const double d = static_cast<double>(y[i]) - yq[i];
    sum += d * d;
  }
  return sum / static_cast<double>(y.size());
}

}  // namespace atom::quant
