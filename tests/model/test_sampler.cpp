// Sampling: HF semantics (temperature, then top-k, then top-p), statistics of the draws, seed determinism.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "common/error.h"
#include "model/sampler.h"

namespace atom {
namespace {

std::vector<float> random_logits(std::uint64_t seed, int n, float scale = 3.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<double> softmax(const std::vector<float>& l, double temperature) {
  std::vector<double> p(l.size());
  const double m = *std::max_element(l.begin(), l.end());
  double s = 0;
  for (std::size_t i = 0; i < l.size(); ++i) s += (p[i] = std::exp((l[i] - m) / temperature));
  for (auto& x : p) x /= s;
  return p;
}

TEST(Sampler, GreedyIsArgmaxWithFirstIndexOnTies) {
  const std::vector<float> l = {0.5f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(argmax(l), 1);
  Sampler s({0.0f, 0, 1.0f, 7});
  for (int i = 0; i < 10; ++i) EXPECT_EQ(s.sample(l), 1);
  EXPECT_THROW(argmax(std::span<const float>()), Error);
}

TEST(Sampler, DistributionWithoutFiltersIsTemperatureSoftmax) {
  const auto l = random_logits(1, 50);
  for (float t : {0.5f, 1.0f, 2.0f}) {
    const auto p = sampling_distribution(l, {t, 0, 1.0f, 0});
    const auto ref = softmax(l, t);
    for (std::size_t i = 0; i < l.size(); ++i) EXPECT_NEAR(p[i], ref[i], 1e-6 * ref[i] + 1e-15);
  }
}

TEST(Sampler, TopKKeepsExactlyTheKBest) {
  const auto l = random_logits(2, 100);
  std::vector<float> sorted = l;
  std::sort(sorted.rbegin(), sorted.rend());
  for (int k : {1, 5, 40, 100, 1000}) {
    const auto p = sampling_distribution(l, {1.0f, k, 1.0f, 0});
    int kept = 0;
    for (std::size_t i = 0; i < l.size(); ++i) {
      const bool in_top = l[i] >= sorted[std::min<std::size_t>(k, l.size()) - 1];
      EXPECT_EQ(p[i] > 0, in_top) << "k " << k << " token " << i;
      kept += p[i] > 0;
    }
    EXPECT_EQ(kept, std::min(k, 100));
    EXPECT_NEAR(std::accumulate(p.begin(), p.end(), 0.0), 1.0, 1e-12);
  }
  // HF keeps ties with the k-th value.
  const std::vector<float> ties = {1.0f, 3.0f, 3.0f, 0.0f};
  const auto p = sampling_distribution(ties, {1.0f, 1, 1.0f, 0});
  EXPECT_GT(p[1], 0.0);
  EXPECT_GT(p[2], 0.0);
  EXPECT_EQ(p[0], 0.0);
}

TEST(Sampler, TopPKeepsTheSmallestNucleusReachingP) {
  const auto l = random_logits(3, 200);
  for (float top_p : {0.05f, 0.5f, 0.9f, 0.99f}) {
    const auto p = sampling_distribution(l, {1.0f, 0, top_p, 0});
    const auto full = softmax(l, 1.0);
    // Kept tokens are the most likely ones; their full-softmax mass reaches top_p, and without the least
    // likely kept token it would not.
    double kept_mass = 0, min_kept = 1, max_dropped = 0;
    for (std::size_t i = 0; i < l.size(); ++i) {
      if (p[i] > 0) {
        kept_mass += full[i];
        min_kept = std::min(min_kept, full[i]);
      } else {
        max_dropped = std::max(max_dropped, full[i]);
      }
    }
    EXPECT_GE(kept_mass, top_p - 1e-6);
    EXPECT_LT(kept_mass - min_kept, top_p + 1e-6);
    EXPECT_LE(max_dropped, min_kept);
    // Renormalized over the nucleus.
    for (std::size_t i = 0; i < l.size(); ++i)
      if (p[i] > 0) EXPECT_NEAR(p[i], full[i] / kept_mass, 1e-9);
  }
  // The most likely token always survives.
  const auto p = sampling_distribution(l, {1.0f, 0, 1e-6f, 0});
  EXPECT_EQ(std::count_if(p.begin(), p.end(), [](double x) { return x > 0; }), 1);
  EXPECT_EQ(p[std::size_t(argmax(l))], 1.0);
}

TEST(Sampler, TopKIsAppliedBeforeTopP) {
  // Top-p over the renormalized top-k distribution (HF order), not over the full softmax.
  const std::vector<float> l = {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  // Top-2 renormalized: 0.571, 0.429. top_p 0.5 keeps only the first (0.571 >= 0.5); on the full softmax
  // top-p 0.5 would keep two tokens (0.4 < 0.5).
  const auto p = sampling_distribution(l, {1.0f, 2, 0.5f, 0});
  EXPECT_NEAR(p[0], 1.0, 1e-12);
  const auto full = sampling_distribution(l, {1.0f, 0, 0.5f, 0});
  EXPECT_GT(full[1], 0.0);
}

TEST(Sampler, DrawsFollowTheDistributionAndNeverLeaveTheFilter) {
  const auto l = random_logits(4, 30, 1.0f);
  const SamplingParams params{0.8f, 10, 0.9f, 12345};
  const auto p = sampling_distribution(l, params);
  Sampler s(params);
  const int draws = 40000;
  std::vector<int> counts(l.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[std::size_t(s.sample(l))];
  double chi2 = 0;
  int bins = 0;
  for (std::size_t i = 0; i < l.size(); ++i) {
    if (p[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " is filtered out";
      continue;
    }
    const double expected = p[i] * draws;
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
    ++bins;
  }
  // Chi-square with bins - 1 degrees of freedom (<= 9): 99.99th percentile is below 35.
  EXPECT_LT(chi2, 35.0) << bins << " bins";
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  const auto l = random_logits(5, 1000, 1.0f);
  auto run = [&](std::uint64_t seed) {
    Sampler s({1.0f, 0, 1.0f, seed});
    std::vector<std::int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.sample(l));
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(Sampler, RejectsBadParameters) {
  EXPECT_THROW(Sampler({-1.0f, 0, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({std::nanf(""), 0, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, -2, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 1.5f, 0}), Error);
  Sampler ok({1.0f, 0, 1.0f, 0});
  EXPECT_THROW(ok.sample(std::span<const float>()), Error);
}

}  // namespace
}  // namespace atom
