// Hadamard transforms: the Paley matrices are Hadamard (exactly), every transform the test models and the
// Llama shapes use is orthogonal to fp64 rounding, the Kronecker layout is the one documented in hadamard.h,
// and the fp32 transform agrees with the fp64 one.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/error.h"
#include "backend/cpu/hadamard.h"

namespace atom::quant {
namespace {

TEST(Hadamard, PaleyMatricesAreHadamard) {
  // The orders QuaRot lists that Paley I / II reach (40 = 2 x 20, 156 and 172 need other constructions; here
  // 312 and 344 = 8 x 43 take their place), and the bases of the sizes below.
  for (std::int64_t k : {2, 12, 20, 28, 36, 44, 52, 60, 108, 140, 312, 344}) {
    const std::vector<std::int8_t> h = paley_hadamard(k);
    ASSERT_EQ(static_cast<std::int64_t>(h.size()), k * k);
    for (std::int64_t i = 0; i < k; ++i) {
      for (std::int64_t j = 0; j < k; ++j) {
        std::int64_t dot = 0;
        for (std::int64_t t = 0; t < k; ++t) dot += h[i * k + t] * h[j * k + t];
        ASSERT_EQ(dot, i == j ? k : 0) << "order " << k << " rows " << i << ", " << j;
      }
    }
  }
  EXPECT_THROW(paley_hadamard(172), Error);
  EXPECT_THROW(paley_hadamard(10), Error);
}

TEST(Hadamard, Decompositions) {
  EXPECT_EQ(hadamard_base_size(64), 1);
  EXPECT_EQ(hadamard_base_size(128), 1);
  EXPECT_EQ(hadamard_base_size(4096), 1);
  EXPECT_EQ(hadamard_base_size(576), 36);     // SmolLM2 hidden: 36 x 16
  EXPECT_EQ(hadamard_base_size(1536), 12);    // SmolLM2 intermediate: 12 x 128
  EXPECT_EQ(hadamard_base_size(11008), 344);  // Llama-2-7B intermediate: 344 x 32 (Paley I over GF(7^3))
  EXPECT_EQ(hadamard_base_size(14336), 28);   // Llama-3-8B intermediate: 28 x 512 (Paley I over GF(27))
  EXPECT_EQ(hadamard_base_size(96), 12);      // tiny models' intermediate
  EXPECT_EQ(hadamard_base_size(24), 12);      // tiny Mistral's head_dim
  EXPECT_EQ(hadamard_base_size(40), 20);
  EXPECT_EQ(hadamard_base_size(6), 0);
  EXPECT_EQ(hadamard_base_size(172), 0);
  EXPECT_FALSE(has_hadamard(7));
  EXPECT_THROW(HadamardTransform(7), Error);
}

double max_abs_gram_error(const HadamardTransform& t, std::int64_t columns, std::uint64_t seed) {
  // Columns j of M for `columns` distinct j (all when columns >= n): their Gram matrix must be I.
  const std::int64_t n = t.size();
  std::vector<std::int64_t> idx;
  if (columns >= n) {
    for (std::int64_t j = 0; j < n; ++j) idx.push_back(j);
  } else {
    std::mt19937_64 rng(seed);
    for (std::int64_t c = 0; c < columns; ++c) idx.push_back(static_cast<std::int64_t>(rng() % n));
    idx.push_back(0);
    idx.push_back(n - 1);
  }
  const auto m = static_cast<std::int64_t>(idx.size());
  std::vector<double> cols(static_cast<std::size_t>(m * n), 0.0);
  for (std::int64_t c = 0; c < m; ++c) cols[c * n + idx[c]] = 1.0;
  t.apply(cols.data(), m);
  double err = 0.0;
  for (std::int64_t a = 0; a < m; ++a) {
    for (std::int64_t b = 0; b < m; ++b) {
      double dot = 0.0;
      for (std::int64_t i = 0; i < n; ++i) dot += cols[a * n + i] * cols[b * n + i];
      err = std::max(err, std::fabs(dot - (idx[a] == idx[b] ? 1.0 : 0.0)));
    }
  }
  return err;
}

// Every size the test models (tiny_*: 64, 96, 16, 24), SmolLM2 (576, 1536, 64) and Llama (4096, 11008, 14336,
// 128) rotate: orthogonal to fp64 rounding, plain and randomized; exact round trip through the transpose.
TEST(Hadamard, OrthogonalForModelSizes) {
  for (std::int64_t n : {16, 24, 64, 96, 128, 576, 1536, 4096, 11008, 14336}) {
    for (bool randomized : {false, true}) {
      const HadamardTransform t(n, randomized, 42);
      const std::int64_t columns = n <= 576 ? n : 48;  // all columns of the small ones, a sample of the large
      // fp64 rounding of sums of n products: O(n eps).
      EXPECT_LT(max_abs_gram_error(t, columns, 7), 1e-14 + 1e-16 * double(n))
          << n << (randomized ? " randomized" : "");
      std::mt19937_64 rng(3);
      std::normal_distribution<double> d;
      std::vector<double> x(static_cast<std::size_t>(n)), y;
      for (auto& v : x) v = d(rng);
      y = x;
      t.apply(y.data(), 1);
      double nx = 0, ny = 0;
      for (std::int64_t i = 0; i < n; ++i) nx += x[i] * x[i], ny += y[i] * y[i];
      EXPECT_NEAR(std::sqrt(ny / nx), 1.0, 1e-14) << n;
      t.apply_transpose(y.data(), 1);
      double err = 0;
      for (std::int64_t i = 0; i < n; ++i) err = std::max(err, std::fabs(y[i] - x[i]));
      EXPECT_LT(err, 1e-13) << n;
    }
  }
}

// The documented layout: M[a P + b][a' P + b'] = H_K[a][a'] (-1)^popcount(b & b') d[a' P + b'] / sqrt(n).
TEST(Hadamard, KroneckerLayoutAndSigns) {
  for (std::int64_t n : {16, 24, 96}) {
    const HadamardTransform t(n, true, 5);
    const std::int64_t k = t.base_size(), p = n / k;
    const std::vector<std::int8_t> h = paley_hadamard(k), d = random_signs(n, 5);
    const std::vector<double> m = t.matrix();
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < n; ++j) {
        const std::int64_t a = i / p, b = i % p, a2 = j / p, b2 = j % p;
        const double walsh =
            (__builtin_popcountll(static_cast<unsigned long long>(b & b2)) % 2) != 0 ? -1.0 : 1.0;
        const double want = h[a * k + a2] * walsh * d[j] / std::sqrt(static_cast<double>(n));
        ASSERT_NEAR(m[i * n + j], want, 1e-15) << n << " " << i << " " << j;
      }
    }
  }
  const std::vector<std::int8_t> s = random_signs(64, 1);
  EXPECT_EQ(s, random_signs(64, 1));
  EXPECT_NE(s, random_signs(64, 2));
  int negative = 0;
  for (auto v : s) negative += v < 0;
  EXPECT_GT(negative, 16);
  EXPECT_LT(negative, 48);
}

TEST(Hadamard, Fp32AgreesWithFp64) {
  for (std::int64_t n : {64, 576, 1536}) {
    const HadamardTransform t(n, true, 9);
    std::mt19937_64 rng(1);
    std::normal_distribution<float> d;
    std::vector<float> x(static_cast<std::size_t>(3 * n));
    for (auto& v : x) v = d(rng);
    std::vector<double> xd(x.begin(), x.end());
    t.apply(x.data(), 3);
    t.apply(xd.data(), 3);
    double err = 0, norm = 0;
    for (std::size_t i = 0; i < x.size(); ++i) err += (x[i] - xd[i]) * (x[i] - xd[i]), norm += xd[i] * xd[i];
    EXPECT_LT(std::sqrt(err / norm), 1e-6) << n;
  }
}

}  // namespace
}  // namespace atom::quant
