// Reorder permutation, outlier-count rule, SmoothQuant scales, clip grid search.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "common/error.h"
#include "quant/channels.h"
#include "quant/gptq.h"

namespace atom::quant {
namespace {

TEST(Reorder, SortsBySumOfSquaresWithOutliersLast) {
  const std::vector<double> ss = {5.0, 1.0, 100.0, 1.0, 0.0, 50.0};
  EXPECT_EQ(reorder_by_sum_of_squares(ss), (std::vector<std::int32_t>{4, 1, 3, 0, 5, 2}));  // tie 1 before 3
  const std::vector<double> bad = {1.0, std::nan("")};
  EXPECT_THROW(reorder_by_sum_of_squares(bad), Error);
}

TEST(OutlierCount, PaperSettingAndSmallModelRule) {
  EXPECT_EQ(default_outlier_count(4096, 128), 128);
  EXPECT_EQ(default_outlier_count(11008, 128), 128);
  EXPECT_EQ(default_outlier_count(14336, 128), 128);
  EXPECT_EQ(default_outlier_count(576, 128), 64);    // SmolLM2-135M hidden: 512 normal channels
  EXPECT_EQ(default_outlier_count(1536, 128), 128);  // SmolLM2-135M intermediate
  EXPECT_EQ(default_outlier_count(960, 128), 64);
  EXPECT_EQ(default_outlier_count(576, 64), 64);
  EXPECT_THROW(default_outlier_count(100, 128), Error);
  EXPECT_THROW(default_outlier_count(4160, 128), Error);  // 4160 - 128 is not a multiple of 128
  EXPECT_NO_THROW(check_outlier_count(576, 128, 192, "--outliers"));
  EXPECT_THROW(check_outlier_count(576, 128, 100, "--outliers"), Error);
  EXPECT_THROW(check_outlier_count(576, 128, 576, "--outliers"), Error);
}

TEST(SmoothQuant, ScalesFollowTheFormulaAndPreserveTheProduct) {
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const std::int64_t m = 6, n = 5, k = 16;
  std::vector<float> x(static_cast<std::size_t>(m * k)), w(static_cast<std::size_t>(n * k));
  for (auto& v : x) v = dist(rng);
  for (auto& v : w) v = dist(rng);
  for (std::int64_t r = 0; r < m; ++r) x[r * k + 3] *= 50.0f;
  std::vector<float> act_max(static_cast<std::size_t>(k), 0.0f), w_max;
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t j = 0; j < k; ++j) act_max[j] = std::max(act_max[j], std::fabs(x[r * k + j]));
  }
  accumulate_weight_absmax(w, n, k, w_max);
  act_max[7] = 0.0f;  // a channel never active: s = 1
  const auto s = smoothquant_scales(act_max, w_max, 0.5f);
  for (std::int64_t j = 0; j < k; ++j) {
    if (j == 7) {
      EXPECT_EQ(s[j], 1.0f);
    } else {
      EXPECT_NEAR(s[j], std::sqrt(double(act_max[j]) / w_max[j]), 1e-5 * s[j]) << j;
    }
  }
  // (x / s) (w * s)^T = x w^T; the smoothed activation maxima are flatter.
  auto ws = w;
  apply_smoothing(s, ws, n);
  std::vector<float> norm(static_cast<std::size_t>(k), 1.0f);
  fold_smoothing_into_norm(s, norm);
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t c = 0; c < n; ++c) {
      double ref = 0, smoothed = 0;
      for (std::int64_t j = 0; j < k; ++j) {
        ref += double(x[r * k + j]) * w[c * k + j];
        smoothed += double(x[r * k + j] * norm[j]) * ws[c * k + j];
      }
      EXPECT_NEAR(smoothed, ref, 1e-4 * (std::fabs(ref) + 1.0));
    }
  }
  EXPECT_THROW(smoothquant_scales(act_max, std::vector<float>(3), 0.5f), Error);
  EXPECT_THROW(smoothquant_scales(act_max, w_max, 1.5f), Error);
}

TEST(ClipSearch, KeepsTheSmallestError) {
  const auto grid = default_clip_grid();
  ASSERT_EQ(grid.size(), 7u);
  EXPECT_FLOAT_EQ(grid.front(), 1.0f);
  EXPECT_FLOAT_EQ(grid.back(), 0.7f);
  const auto r = search_clip(grid, [](float c) { return (c - 0.85) * (c - 0.85); });
  EXPECT_FLOAT_EQ(r.best_clip, 0.85f);
  EXPECT_EQ(r.errors.size(), grid.size());
  EXPECT_THROW(search_clip(std::vector<float>{}, [](float) { return 0.0; }), Error);
  EXPECT_THROW(search_clip(std::vector<float>{1.2f}, [](float) { return 0.0; }), Error);
}

TEST(ClipSearch, HeavyTailedWeightsPreferClippingAtInt4) {
  // Laplace-distributed weights: the MSE-optimal INT4 range is below the maximum.
  std::mt19937 rng(2);
  std::exponential_distribution<float> expo(1.0f);
  std::bernoulli_distribution sign(0.5);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const std::int64_t m = 128, n = 64, k = 256;
  std::vector<float> w(static_cast<std::size_t>(n * k)), x(static_cast<std::size_t>(m * k));
  for (auto& v : w) v = expo(rng) * (sign(rng) ? 1.0f : -1.0f);
  for (auto& v : x) v = dist(rng);
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  const auto result = search_clip(default_clip_grid(), [&](float c) {
    return linear_output_mse(x, m, w, rtn_quantize(w, n, perm, {NumberFormat::kInt4, 128, 0, c}), nullptr);
  });
  EXPECT_LT(result.best_clip, 1.0f);
  EXPECT_LT(result.best_error, 0.95 * result.errors.front());
}

}  // namespace
}  // namespace atom::quant
