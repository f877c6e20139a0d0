// HalfLinear (fp16 weight, fp32 accumulation; the integer path's lm_head) against an fp64 reference.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/linear.h"
#include "common/half.h"
#include "reference_llama.h"

namespace atom::cpu {
namespace {

using test::random_vector;

TEST(HalfLinear, StoresRoundToNearestFp16AndMatchesFp64Reference) {
  std::mt19937_64 rng(7);
  // K: multiples of 8 and a tail; N: multiples of the 4-output tile and not; m: 1 (GEMV), a 4-row tile
  // and a ragged one, a second 64-row block.
  for (auto [N, K] : {std::pair<std::int64_t, std::int64_t>{1, 1}, {7, 37}, {64, 576}, {13, 200}}) {
    const std::vector<float> w = random_vector(rng, static_cast<std::size_t>(N * K), 0.05f);
    const HalfLinear op(w, N, K);
    ASSERT_EQ(op.in_features(), K);
    ASSERT_EQ(op.out_features(), N);
    for (std::size_t i = 0; i < w.size(); ++i) ASSERT_EQ(op.weight()[i], fp32_to_fp16(w[i])) << i;
    for (std::int64_t m : {1, 4, 6, 70}) {
      const std::vector<float> x = random_vector(rng, static_cast<std::size_t>(m * K), 1.0f);
      std::vector<float> y(static_cast<std::size_t>(m * N));
      op.forward(x.data(), m, y.data());
      for (std::int64_t r = 0; r < m; ++r) {
        for (std::int64_t n = 0; n < N; ++n) {
          double exact = 0, magnitude = 0, original = 0;  // with the fp16 weights; with the fp32 ones
          for (std::int64_t k = 0; k < K; ++k) {
            const double xv = x[static_cast<std::size_t>(r * K + k)];
            const double wh = fp16_to_fp32(op.weight()[static_cast<std::size_t>(n * K + k)]);
            exact += xv * wh;
            magnitude += std::fabs(xv * wh);
            original += xv * w[static_cast<std::size_t>(n * K + k)];
          }
          const double got = y[static_cast<std::size_t>(r * N + n)];
          // fp32 accumulation: chains of K/8 FMAs, a 3-step horizontal sum, up to 7 tail FMAs (each rounding
          // at most 2^-24 relative); fp16 weight rounding (2^-11 relative per weight) on top.
          const double fp32_bound = static_cast<double>(K / 8 + 10) * std::ldexp(1.0, -24) * magnitude;
          EXPECT_LE(std::fabs(got - exact), fp32_bound) << N << "x" << K << " m=" << m;
          EXPECT_LE(std::fabs(got - original), fp32_bound + std::ldexp(1.0, -10) * magnitude);
        }
      }
    }
  }
}

TEST(HalfLinear, RowsDoNotDependOnTheBatch) {
  std::mt19937_64 rng(8);
  const std::int64_t N = 50, K = 100, m = 9;
  const HalfLinear op(random_vector(rng, N * K, 0.1f), N, K);
  const std::vector<float> x = random_vector(rng, m * K, 1.0f);
  std::vector<float> all(m * N), one(N);
  op.forward(x.data(), m, all.data());
  for (std::int64_t r = 0; r < m; ++r) {
    op.forward(x.data() + r * K, 1, one.data());
    for (std::int64_t n = 0; n < N; ++n) ASSERT_EQ(all[r * N + n], one[n]) << r << "," << n;
  }
}

}  // namespace
}  // namespace atom::cpu
