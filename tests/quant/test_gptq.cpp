// GPTQ: identity Hessian == RTN, lower output error than RTN on correlated inputs, error feedback into the
// outlier columns, damping retries, dead channels, permutation plumbing, the Hessian accumulator.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "common/error.h"
#include "quant/gptq.h"

namespace atom::quant {
namespace {

std::vector<std::int32_t> shuffled(std::int64_t k, std::mt19937& rng) {
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  return perm;
}

std::vector<double> identity(std::int64_t k) {
  std::vector<double> h(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t i = 0; i < k; ++i) h[i * k + i] = 1.0;
  return h;
}

void expect_same_weights(const QuantizedLinearWeights& a, const QuantizedLinearWeights& b, const std::string& what) {
  EXPECT_EQ(a.packed, b.packed) << what;
  EXPECT_EQ(a.scales, b.scales) << what;
  EXPECT_EQ(a.outliers, b.outliers) << what;
  EXPECT_EQ(a.outlier_scales, b.outlier_scales) << what;
  EXPECT_EQ(a.perm, b.perm) << what;
}

// Inputs with strongly correlated channels: x = z A, plus a few channels of large magnitude.
std::vector<float> correlated_inputs(std::int64_t m, std::int64_t k, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const std::int64_t latent = k / 4;
  std::vector<float> z(static_cast<std::size_t>(m * latent)), a(static_cast<std::size_t>(latent * k));
  for (auto& v : z) v = dist(rng);
  for (auto& v : a) v = dist(rng);
  std::vector<float> x(static_cast<std::size_t>(m * k), 0.0f);
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t l = 0; l < latent; ++l) {
      for (std::int64_t j = 0; j < k; ++j) x[r * k + j] += z[r * latent + l] * a[l * k + j];
    }
    for (std::int64_t j = 0; j < k; ++j) x[r * k + j] += 0.1f * dist(rng);
    for (std::int64_t j = 0; j < 4; ++j) x[r * k + j * 7] *= 10.0f;
  }
  return x;
}

TEST(Gptq, IdentityHessianEqualsRtn) {
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  struct Case { NumberFormat format; std::int64_t k_normal, n_out, group; float clip; };
  for (const Case c : {Case{NumberFormat::kInt4, 256, 0, 128, 0.85f}, Case{NumberFormat::kInt4, 192, 16, 64, 1.0f},
                       Case{NumberFormat::kFp4, 160, 32, 32, 0.9f}, Case{NumberFormat::kInt3, 96, 8, 32, 1.0f},
                       Case{NumberFormat::kInt8, 300, 0, 300, 1.0f}}) {
    const std::int64_t n = 37, k = c.k_normal + c.n_out;
    std::vector<float> w(static_cast<std::size_t>(n * k));
    for (auto& v : w) v = dist(rng);
    const auto perm = shuffled(k, rng);
    const WeightQuantSpec spec{c.format, c.group, c.n_out, c.clip};
    for (bool static_groups : {false, true}) {
      GptqOptions options;
      options.static_groups = static_groups;
      GptqReport report;
      const auto g = gptq_quantize(w, n, identity(k), perm, spec, options, "w", &report);
      expect_same_weights(g, rtn_quantize(w, n, perm, spec), format_name(c.format));
      EXPECT_EQ(report.retries, 0);
      EXPECT_NEAR(report.damp, 0.01, 1e-12);
    }
  }
}

TEST(Gptq, BeatsRtnOnCorrelatedInputsAndFeedsTheOutliers) {
  std::mt19937 rng(2);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const std::int64_t m = 1024, k = 288, n = 48, n_out = 32;
  const auto x = correlated_inputs(m, k, rng);
  std::vector<float> w(static_cast<std::size_t>(n * k));
  for (auto& v : w) v = dist(rng);
  HessianAccumulator acc(k);
  acc.add(x.data(), m);
  const auto perm = shuffled(k, rng);
  const WeightQuantSpec spec{NumberFormat::kInt4, 64, n_out, 1.0f};
  GptqReport report;
  const auto g = gptq_quantize(w, n, acc.hessian(), perm, spec, GptqOptions{}, "w", &report);
  const auto r = rtn_quantize(w, n, perm, spec);
  const double e_gptq = linear_output_mse(x, m, w, g, nullptr), e_rtn = linear_output_mse(x, m, w, r, nullptr);
  EXPECT_LT(e_gptq, 0.5 * e_rtn) << "gptq " << e_gptq << " rtn " << e_rtn;
  std::printf("output MSE, INT4 g64 + 32 INT8 outliers: RTN %.4g, GPTQ %.4g (%.2fx lower)\n", e_rtn, e_gptq,
              e_rtn / e_gptq);
  EXPECT_GT(report.loss, 0.0);
  // The outlier columns received error feedback: they differ from the plain INT8 rounding of W.
  EXPECT_NE(g.outliers, r.outliers);

  // Without outliers, and with FP4 and group 32 in smaller blocks than a group.
  for (const auto& [s, options] : {std::pair{WeightQuantSpec{NumberFormat::kInt4, 96, 0, 1.0f}, GptqOptions{0.01, 64}},
                                   std::pair{WeightQuantSpec{NumberFormat::kFp4, 32, 32, 0.9f}, GptqOptions{}}}) {
    const auto g2 = gptq_quantize(w, n, acc.hessian(), perm, s, options, "w");
    const auto r2 = rtn_quantize(w, n, perm, s);
    EXPECT_LT(linear_output_mse(x, m, w, g2, nullptr), 0.7 * linear_output_mse(x, m, w, r2, nullptr))
        << format_name(s.format) << " g" << s.group;
  }
}

TEST(Gptq, PermutationIsAppliedToWeightsAndHessian) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const std::int64_t m = 256, k = 128, n = 9;
  const auto x = correlated_inputs(m, k, rng);
  std::vector<float> w(static_cast<std::size_t>(n * k));
  for (auto& v : w) v = dist(rng);
  HessianAccumulator acc(k);
  acc.add(x.data(), m);
  const auto h = acc.hessian();
  const auto perm = shuffled(k, rng);
  const WeightQuantSpec spec{NumberFormat::kInt4, 32, 32, 1.0f};
  const auto with_perm = gptq_quantize(w, n, h, perm, spec, GptqOptions{}, "w");
  // The same problem permuted by hand, identity perm.
  std::vector<float> wp(w.size());
  std::vector<double> hp(h.size());
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t r = 0; r < n; ++r) wp[r * k + i] = w[r * k + perm[i]];
    for (std::int64_t j = 0; j < k; ++j) hp[i * k + j] = h[perm[i] * k + perm[j]];
  }
  std::vector<std::int32_t> ident(static_cast<std::size_t>(k));
  std::iota(ident.begin(), ident.end(), 0);
  auto by_hand = gptq_quantize(wp, n, hp, ident, spec, GptqOptions{}, "w");
  by_hand.perm = perm;
  expect_same_weights(with_perm, by_hand, "permuted by hand");
}

TEST(Gptq, DeadChannelsAreZeroed) {
  std::mt19937 rng(4);
  const std::int64_t m = 200, k = 64, n = 5;
  auto x = correlated_inputs(m, k, rng);
  for (std::int64_t r = 0; r < m; ++r) x[r * k + 10] = 0.0f;
  std::vector<float> w(static_cast<std::size_t>(n * k), 0.5f);
  HessianAccumulator acc(k);
  acc.add(x.data(), m);
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  GptqReport report;
  const auto q = gptq_quantize(w, n, acc.hessian(), perm, {NumberFormat::kInt4, 32, 0, 1.0f}, GptqOptions{}, "w", &report);
  EXPECT_EQ(report.dead_columns, 1);
  const auto d = dequantize(q);
  for (std::int64_t r = 0; r < n; ++r) EXPECT_EQ(d[r * k + 10], 0.0f);
}

// H = Q diag(lambda) Q^T with a random orthogonal Q (Gram-Schmidt).
std::vector<double> with_eigenvalues(const std::vector<double>& lambda, std::mt19937& rng) {
  const auto k = static_cast<std::int64_t>(lambda.size());
  std::normal_distribution<double> dist(0.0, 1.0);
  std::vector<double> q(static_cast<std::size_t>(k * k));
  for (auto& v : q) v = dist(rng);
  for (std::int64_t i = 0; i < k; ++i) {  // rows of q orthonormal
    for (std::int64_t j = 0; j < i; ++j) {
      double dot = 0;
      for (std::int64_t t = 0; t < k; ++t) dot += q[i * k + t] * q[j * k + t];
      for (std::int64_t t = 0; t < k; ++t) q[i * k + t] -= dot * q[j * k + t];
    }
    double norm = 0;
    for (std::int64_t t = 0; t < k; ++t) norm += q[i * k + t] * q[i * k + t];
    for (std::int64_t t = 0; t < k; ++t) q[i * k + t] /= std::sqrt(norm);
  }
  std::vector<double> h(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t a = 0; a < k; ++a) {
    for (std::int64_t b = 0; b < k; ++b) {
      for (std::int64_t i = 0; i < k; ++i) h[a * k + b] += q[i * k + a] * lambda[i] * q[i * k + b];
    }
  }
  return h;
}

TEST(Gptq, DampingRetriesThenAClearError) {
  std::mt19937 rng(5);
  const std::int64_t k = 32, n = 4;
  std::vector<float> w(static_cast<std::size_t>(n * k), 0.25f);
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  const WeightQuantSpec spec{NumberFormat::kInt4, 32, 0, 1.0f};
  // Slightly indefinite (mean eigenvalue ~1, one at -0.05): 1% damping fails, 10% works.
  std::vector<double> lambda(static_cast<std::size_t>(k), 1.0);
  lambda[3] = -0.05;
  GptqReport report;
  EXPECT_NO_THROW(gptq_quantize(w, n, with_eigenvalues(lambda, rng), perm, spec, GptqOptions{}, "w", &report));
  EXPECT_EQ(report.retries, 1);
  // Far from positive definite: the retries run out.
  lambda[3] = -30.0;
  try {
    gptq_quantize(w, n, with_eigenvalues(lambda, rng), perm, spec, GptqOptions{}, "model.layers.2.mlp.down_proj");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.2.mlp.down_proj: Hessian is not positive definite"),
              std::string::npos)
        << e.what();
  }
}

TEST(Gptq, RejectsBadInput) {
  std::vector<float> w(4 * 64, 1.0f);
  std::vector<std::int32_t> perm(64);
  std::iota(perm.begin(), perm.end(), 0);
  const auto h = identity(64);
  EXPECT_THROW(gptq_quantize(w, 4, h, perm, {NumberFormat::kInt4, 48, 0, 1.0f}, {}, "w"), Error);  // 64 % 48
  EXPECT_THROW(gptq_quantize(w, 4, identity(32), perm, {NumberFormat::kInt4, 32, 0, 1.0f}, {}, "w"), Error);
  EXPECT_THROW(gptq_quantize(w, 5, h, perm, {NumberFormat::kInt4, 32, 0, 1.0f}, {}, "w"), Error);
  EXPECT_THROW(gptq_quantize(w, 4, h, perm, {NumberFormat::kInt4, 32, 0, 1.3f}, {}, "w"), Error);
}

TEST(HessianAccumulator, MatchesNaiveFp64) {
  std::mt19937 rng(6);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const std::int64_t k = 40;
  HessianAccumulator acc(k);
  std::vector<double> naive(static_cast<std::size_t>(k * k), 0.0);
  std::int64_t total = 0;
  for (std::int64_t m : {1, 300, 17}) {  // 300 crosses the fp32 chunk of 256 rows
    std::vector<float> x(static_cast<std::size_t>(m * k));
    for (auto& v : x) v = dist(rng);
    acc.add(x.data(), m);
    for (std::int64_t r = 0; r < m; ++r) {
      for (std::int64_t i = 0; i < k; ++i) {
        for (std::int64_t j = 0; j < k; ++j) naive[i * k + j] += double(x[r * k + i]) * x[r * k + j];
      }
    }
    total += m;
  }
  EXPECT_EQ(acc.samples(), total);
  const auto h = acc.hessian();
  const auto d = acc.diagonal_sum_of_squares();
  for (std::int64_t i = 0; i < k; ++i) {
    EXPECT_NEAR(d[i], naive[i * k + i], 1e-5 * naive[i * k + i]);
    for (std::int64_t j = 0; j < k; ++j) {
      EXPECT_NEAR(h[i * k + j], 2.0 * naive[i * k + j] / double(total), 1e-5) << i << "," << j;
      EXPECT_EQ(h[i * k + j], h[j * k + i]);
    }
  }
}

TEST(FakeQuantizeActivations, EqualsDequantizedActivationsInOriginalOrder) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const std::int64_t m = 3, k = 96;
  std::vector<float> x(static_cast<std::size_t>(m * k));
  for (auto& v : x) v = dist(rng);
  const auto perm = shuffled(k, rng);
  const ActQuantSpec spec{NumberFormat::kInt4, 32, 32, 0.9f};
  const auto fq = fake_quantize_activations(x, m, perm, spec);
  const auto d = dequantize(quantize_activations(x, m, perm, 32, 32, NumberFormat::kInt4, 0.9f));
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t j = 0; j < k; ++j) EXPECT_EQ(fq[r * k + perm[j]], d[r * k + j]);
  }
  // Fake quantization changes the values, but not by much more than half an INT4 step of the largest value.
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); ++i) worst = std::max(worst, double(std::fabs(fq[i] - x[i])));
  EXPECT_GT(worst, 0.0);
  EXPECT_LT(worst, 0.6);
}

}  // namespace
}  // namespace atom::quant
