// Sampling: vLLM semantics (penalties, temperature, top-k, top-p, min-p) against an independent fp64
// reference, statistics of the draws, Philox's known answers, seed determinism, logprobs, validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "common/error.h"
#include "model/philox.h"
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

// ---- An independent fp64 reference: every step written out from the definitions, with a full sort.

struct Reference {
  std::vector<std::int32_t> prompt, output;
};

std::vector<double> reference_distribution(const std::vector<float>& logits, const SamplingParams& p,
                                           const Reference& history) {
  const std::size_t n = logits.size();
  std::vector<double> x(logits.begin(), logits.end());
  std::vector<int> generated(n, 0);
  std::vector<bool> seen(n, false);
  for (std::int32_t t : history.prompt) seen[t] = true;
  for (std::int32_t t : history.output) {
    seen[t] = true;
    ++generated[t];
  }
  for (std::size_t t = 0; t < n; ++t) {
    if (seen[t]) x[t] = x[t] > 0 ? x[t] / p.repetition_penalty : x[t] * p.repetition_penalty;
    x[t] -= p.frequency_penalty * generated[t];
    if (generated[t] > 0) x[t] -= p.presence_penalty;
  }
  std::vector<double> probs(n, 0.0);
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return x[a] > x[b]; });
  if (p.temperature == 0.0f) {
    probs[order[0]] = 1.0;
    return probs;
  }
  for (double& v : x) v /= p.temperature;
  std::vector<bool> kept(n, true);
  if (p.top_k > 0 && static_cast<std::size_t>(p.top_k) < n) {
    const double kth = x[order[p.top_k - 1]];
    for (std::size_t t = 0; t < n; ++t) kept[t] = x[t] >= kth;
  }
  auto normalized = [&] {
    std::vector<double> q(n, 0.0);
    double sum = 0;
    for (std::size_t t = 0; t < n; ++t)
      if (kept[t]) sum += (q[t] = std::exp(x[t] - x[order[0]]));
    for (double& v : q) v /= sum;
    return q;
  };
  if (p.top_p < 1.0f) {
    // The nucleus: most likely first, a token stays while the mass before it is below top_p.
    const std::vector<double> q = normalized();
    double before = 0;
    for (std::size_t r = 0; r < n; ++r) {
      const std::size_t t = order[r];
      if (!kept[t]) continue;
      if (before >= p.top_p) kept[t] = false;
      before += q[t];
    }
  }
  if (p.min_p > 0.0f) {
    const std::vector<double> q = normalized();
    for (std::size_t t = 0; t < n; ++t)
      if (kept[t] && q[t] < p.min_p * q[order[0]]) kept[t] = false;
  }
  return normalized();
}

TokenCounts counts_of(const Reference& history) {
  TokenCounts counts(history.prompt);
  for (std::int32_t t : history.output) counts.add_generated(t);
  return counts;
}

TEST(Sampler, DistributionMatchesAnFp64ReferenceForEveryParameter) {
  std::mt19937_64 rng(77);
  const int vocab = 300;
  Reference history;
  for (int i = 0; i < 40; ++i) history.prompt.push_back(static_cast<std::int32_t>(rng() % vocab));
  for (int i = 0; i < 60; ++i) history.output.push_back(static_cast<std::int32_t>(rng() % 50));  // repeats
  const TokenCounts counts = counts_of(history);
  int cases = 0;
  for (float temperature : {0.0f, 0.3f, 1.0f, 1.7f})
    for (int top_k : {0, 1, 7, 120})
      for (float top_p : {1.0f, 0.95f, 0.4f})
        for (float min_p : {0.0f, 0.05f, 0.5f})
          for (float repetition : {1.0f, 1.3f, 0.7f})
            for (float presence : {0.0f, 0.8f, -0.5f})
              for (float frequency : {0.0f, 0.3f}) {
                SamplingParams p;
                p.temperature = temperature;
                p.top_k = top_k;
                p.top_p = top_p;
                p.min_p = min_p;
                p.repetition_penalty = repetition;
                p.presence_penalty = presence;
                p.frequency_penalty = frequency;
                const auto logits = random_logits(1000 + cases, vocab, 2.0f);
                const auto got = sampling_distribution(logits, p, &counts);
                const auto want = reference_distribution(logits, p, history);
                for (int t = 0; t < vocab; ++t) {
                  ASSERT_NEAR(got[t], want[t], 1e-6)
                      << "token " << t << " T " << temperature << " k " << top_k << " p " << top_p
                      << " min_p " << min_p << " rep " << repetition << " presence " << presence
                      << " frequency " << frequency;
                }
                ++cases;
              }
  EXPECT_EQ(cases, 4 * 4 * 3 * 3 * 3 * 3 * 2);
}

TEST(Sampler, PenaltiesFollowVllmAndOpenAI) {
  // Token 0 in the prompt, token 1 generated twice, token 3 once, token 2 never seen.
  const std::vector<float> logits = {2.0f, -1.0f, 0.5f, 3.0f};
  TokenCounts history(std::vector<std::int32_t>{0});
  for (std::int32_t t : {1, 3, 1}) history.add_generated(t);
  EXPECT_EQ(history.num_generated(), 3);
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  std::vector<float> x = logits;
  apply_penalties(x, p, history);
  EXPECT_FLOAT_EQ(x[0], 1.0f);                          // prompt only: 2 / 2
  EXPECT_FLOAT_EQ(x[1], -1.0f * 2 - 0.5f * 2 - 0.25f);  // negative: times 2; twice: -1; present: -0.25
  EXPECT_FLOAT_EQ(x[2], 0.5f);                          // never seen
  EXPECT_FLOAT_EQ(x[3], 3.0f / 2 - 0.5f - 0.25f);
  // Presence and frequency look at generated tokens only.
  SamplingParams q;
  q.presence_penalty = 1.0f;
  q.frequency_penalty = 1.0f;
  std::vector<float> y = logits;
  apply_penalties(y, q, history);
  EXPECT_FLOAT_EQ(y[0], 2.0f);
  // Greedy takes the argmax of the penalized logits: token 3 (3.0) loses to token 0 (1.0 vs 0.75).
  p.temperature = 0.0f;
  EXPECT_EQ(sample_token(logits, p, &history, 0).token, 0);
  EXPECT_EQ(sampling_distribution(logits, p, &history)[0], 1.0);
  // Without penalties greedy is the plain argmax.
  EXPECT_EQ(sample_token(logits, SamplingParams{0.0f, 0, 1.0f, 0}, nullptr, 0).token, 3);
  // A negative presence penalty encourages repeats.
  SamplingParams encourage;
  encourage.temperature = 0.0f;
  encourage.presence_penalty = -2.0f;
  const std::vector<float> flat = {1.0f, 0.0f, 0.0f, 0.0f};
  EXPECT_EQ(sample_token(flat, encourage, &history, 0).token, 1);  // 0 + 2 > 1, and before token 3
  EXPECT_THROW(sampling_distribution(logits, p, nullptr), Error);  // penalties need the history
}

TEST(TokenCounts, CountsPromptAndGeneratedTokensOrOnlyTheDrawsWhenNotTracking) {
  const std::vector<std::int32_t> prompt = {4, 4, 9};
  TokenCounts tracked(prompt);
  tracked.add_generated(9);
  tracked.add_generated(2);
  tracked.add_generated(2);
  EXPECT_EQ(tracked.num_generated(), 3);
  ASSERT_EQ(tracked.entries().size(), 3u);
  EXPECT_TRUE(tracked.entries().at(4).in_prompt);
  EXPECT_EQ(tracked.entries().at(4).generated, 0);
  EXPECT_TRUE(tracked.entries().at(9).in_prompt);
  EXPECT_EQ(tracked.entries().at(9).generated, 1);
  EXPECT_FALSE(tracked.entries().at(2).in_prompt);
  EXPECT_EQ(tracked.entries().at(2).generated, 2);
  TokenCounts untracked(prompt, /*track_tokens=*/false);
  untracked.add_generated(9);
  EXPECT_EQ(untracked.num_generated(), 1);
  EXPECT_TRUE(untracked.entries().empty());
}

TEST(Philox, KnownAnswersOfRandom123) {
  // Random123's kat_vectors for philox4x32_10.
  const Philox4x32 zero = philox4x32_10({{0, 0, 0, 0}}, 0, 0);
  EXPECT_EQ(zero.v[0], 0x6627e8d5u);
  EXPECT_EQ(zero.v[1], 0xe169c58du);
  EXPECT_EQ(zero.v[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.v[3], 0x9b00dbd8u);
  const Philox4x32 ones = philox4x32_10({{~0u, ~0u, ~0u, ~0u}}, ~0u, ~0u);
  EXPECT_EQ(ones.v[0], 0x408f276du);
  EXPECT_EQ(ones.v[1], 0x41c83b0eu);
  EXPECT_EQ(ones.v[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.v[3], 0x6d5451fdu);
  // Uniforms in [0, 1), mean 1/2.
  double sum = 0;
  for (std::uint64_t i = 0; i < 100000; ++i) {
    const double u = philox_uniform(9, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.005);
}

TEST(Sampler, DrawNOfASeedDependsOnlyOnSeedAndStep) {
  const auto l = random_logits(8, 500, 1.0f);
  SamplingParams p{0.9f, 50, 0.95f, 1234};
  std::vector<std::int32_t> direct;
  for (std::uint64_t step = 0; step < 32; ++step) direct.push_back(sample_token(l, p, nullptr, step).token);
  // The same draws in reverse order, and through a Sampler: the counter decides, not what ran before.
  for (std::uint64_t step = 32; step-- > 0;) EXPECT_EQ(sample_token(l, p, nullptr, step).token, direct[step]);
  Sampler sampler(p);
  for (std::int32_t expected : direct) EXPECT_EQ(sampler.sample(l), expected);
  // Each draw is the inverse CDF of the distribution at Philox's uniform.
  const auto probs = sampling_distribution(l, p);
  for (std::uint64_t step = 0; step < 32; ++step) {
    const double u = philox_uniform(p.seed, step);
    double below = 0;
    for (std::int32_t t = 0; t < direct[step]; ++t) below += probs[t];
    EXPECT_LE(below, u + 1e-12);
    EXPECT_GT(below + probs[direct[step]], u - 1e-12);
  }
}

TEST(Sampler, LogprobsAreTheModelsLogSoftmax) {
  const auto l = random_logits(9, 400, 2.0f);
  const auto ref = softmax(l, 1.0);
  for (int n : {0, 1, 5, 20}) {
    SamplingParams p{0.7f, 10, 0.9f, 5};
    p.logprobs = n;
    p.repetition_penalty = 1.5f;  // neither penalties nor temperature change the model's logprobs
    const TokenCounts history(std::vector<std::int32_t>{1, 2, 3});
    const SampledToken s = sample_token(l, p, &history, 3);
    EXPECT_NEAR(s.logprob, std::log(ref[s.token]), 1e-5);
    ASSERT_EQ(s.top_logprobs.size(), static_cast<std::size_t>(n));
    std::vector<std::int32_t> order(l.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(s.top_logprobs[i].token, order[i]);
      EXPECT_NEAR(s.top_logprobs[i].logprob, std::log(ref[order[i]]), 1e-5);
    }
  }
  SamplingParams none;
  EXPECT_TRUE(sample_token(l, none, nullptr, 0).top_logprobs.empty());
  const auto lp = log_softmax(l);
  double total = 0;
  for (double v : lp) total += std::exp(v);
  EXPECT_NEAR(total, 1.0, 1e-12);
}

TEST(Sampler, RejectsBadParameters) {
  auto message = [](auto&& mutate) {
    SamplingParams p;
    mutate(p);
    try {
      p.validate();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([](SamplingParams& p) { p.min_p = 1.5f; }).find("min_p must be in [0, 1], got 1.5"),
            std::string::npos);
  EXPECT_NE(message([](SamplingParams& p) { p.repetition_penalty = 0.0f; }).find("repetition_penalty"),
            std::string::npos);
  EXPECT_NE(message([](SamplingParams& p) {
              p.presence_penalty = 2.5f;
            }).find("presence_penalty must be in [-2, 2]"),
            std::string::npos);
  EXPECT_NE(message([](SamplingParams& p) { p.frequency_penalty = -3.0f; }).find("frequency_penalty"),
            std::string::npos);
  EXPECT_NE(message([](SamplingParams& p) { p.logprobs = 21; }).find("logprobs must be in [0, 20]"),
            std::string::npos);
  EXPECT_EQ(message([](SamplingParams& p) { p.logprobs = 20; }), "no error");
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
