// GPU sampling (sampling/sample_rows.h) against the CPU sampler (model/sampler.h): the distribution of many
// draws of rows with different parameters in one launch (chi-square against sampling_distribution()), the
// same token as sample_token() for the same (seed, step) but for rounding at token edges, greedy exactly the
// argmax of the penalized logits, penalties from the token-count buffer (and the sampled token counted),
// logprobs equal to fp64 log-softmax within 1e-4, reproducibility per seed, vocabularies of real models.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../common/device_array.cuh"
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/sampling/sample_rows.h"
#include "common/error.h"
#include "model/sampler.h"

namespace atom::cuda {
namespace {

using testing::DeviceArray;

std::vector<float> random_logits(std::uint64_t seed, int n, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// One parameter set of the tests, with its history (penalties).
struct Case {
  std::string name;
  SamplingParams params;
  TokenCounts history;
};

std::vector<Case> parameter_cases(int vocab) {
  std::mt19937_64 rng(5);
  std::vector<std::int32_t> prompt;
  for (int i = 0; i < 30; ++i) prompt.push_back(static_cast<std::int32_t>(rng() % vocab));
  TokenCounts history(prompt);
  for (int i = 0; i < 40; ++i) history.add_generated(static_cast<std::int32_t>(rng() % 25));  // repeats
  auto make = [&](std::string name, auto&& set) {
    Case c{std::move(name), {}, history};
    set(c.params);
    c.params.validate();
    return c;
  };
  return {
      make("plain", [](SamplingParams& p) { p.temperature = 1.0f; }),
      make("cold top_k",
           [](SamplingParams& p) {
             p.temperature = 0.7f;
             p.top_k = 20;
           }),
      make("hot top_p",
           [](SamplingParams& p) {
             p.temperature = 1.3f;
             p.top_p = 0.8f;
           }),
      make("min_p", [](SamplingParams& p) { p.min_p = 0.05f; }),
      make("all filters",
           [](SamplingParams& p) {
             p.temperature = 0.9f;
             p.top_k = 50;
             p.top_p = 0.9f;
             p.min_p = 0.02f;
           }),
      make("penalties",
           [](SamplingParams& p) {
             p.repetition_penalty = 1.3f;
             p.presence_penalty = 0.5f;
             p.frequency_penalty = 0.4f;
             p.top_p = 0.95f;
           }),
      make("negative penalties",
           [](SamplingParams& p) {
             p.presence_penalty = -1.0f;
             p.repetition_penalty = 0.8f;
           }),
  };
}

// A launch of sample_rows over `logits` (rows of `vocab`), each row reading logit row `logit_row[r]` with
// case `which[r]`'s parameters and step steps[r]. Slots: case c's history in slot c.
struct Launch {
  std::vector<std::int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<std::int32_t> top_tokens;
  std::vector<float> top_logprobs;
  std::vector<std::int32_t> counts_after;  // the token-count buffer after the launch
};

Launch launch(const std::vector<float>& logits, int vocab, const std::vector<Case>& cases,
              const std::vector<int>& which, const std::vector<int>& logit_row,
              const std::vector<std::uint64_t>& steps, bool count_sampled = false) {
  const int rows = static_cast<int>(which.size());
  const int slots = static_cast<int>(cases.size());
  DeviceArray<float> logits_dev(logits);
  DeviceArray<std::int32_t> counts(static_cast<std::size_t>(slots) * vocab);
  DeviceArray<std::uint8_t> mask(static_cast<std::size_t>(slots) * vocab);
  std::vector<TokenCountEntry> entries;
  std::vector<std::int32_t> clear;
  for (int c = 0; c < slots; ++c) {
    clear.push_back(c);
    for (const auto& [token, entry] : cases[c].history.entries()) {
      entries.push_back({c, token, entry.generated, entry.in_prompt ? 1 : 0});
    }
  }
  DeviceArray<TokenCountEntry> entries_dev(entries);
  LoadTokenCountsParams load;
  load.output_counts = counts.get();
  load.prompt_mask = mask.get();
  load.vocab = vocab;
  load.num_slots = slots;
  load.clear_slots = clear;
  load.entries = entries_dev.get();
  load.num_entries = static_cast<int>(entries.size());
  load_token_counts(load, nullptr);

  std::vector<SampleRow> host_rows(rows);
  for (int r = 0; r < rows; ++r) {
    const SamplingParams& p = cases[which[r]].params;
    host_rows[r] = sample_row_of(p, logit_row[r], p.has_penalties() ? which[r] : -1, steps[r]);
  }
  DeviceArray<SampleRow> rows_dev(host_rows);
  DeviceArray<std::int32_t> tokens(rows), top_tokens(static_cast<std::size_t>(rows) * kMaxTopLogprobs);
  DeviceArray<float> logprobs(rows), top_logprobs(static_cast<std::size_t>(rows) * kMaxTopLogprobs);
  SampleRowsParams sp;
  sp.logits = logits_dev.get();
  sp.logits_stride = vocab;
  sp.vocab = vocab;
  sp.rows = rows_dev.get();
  sp.num_rows = rows;
  sp.output_counts = counts.get();
  sp.prompt_mask = mask.get();
  sp.num_slots = slots;
  sp.count_sampled = count_sampled;
  sp.tokens = tokens.get();
  sp.logprobs = logprobs.get();
  sp.top_tokens = top_tokens.get();
  sp.top_logprobs = top_logprobs.get();
  sample_rows(sp, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  return {tokens.download(), logprobs.download(), top_tokens.download(), top_logprobs.download(),
          counts.download()};
}

// Chi-square of counts against probabilities, bins with an expected count below 5 merged (largest first).
double chi_square(const std::vector<int>& counts, const std::vector<double>& probs, int draws, int* dof) {
  std::vector<std::size_t> order(probs.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return probs[a] > probs[b]; });
  double chi2 = 0, pooled_expected = 0, pooled_count = 0;
  int bins = 0;
  for (std::size_t t : order) {
    const double expected = probs[t] * draws;
    if (expected >= 5) {
      chi2 += (counts[t] - expected) * (counts[t] - expected) / expected;
      ++bins;
    } else {
      pooled_expected += expected;
      pooled_count += counts[t];
    }
  }
  if (pooled_expected >= 5) {
    chi2 += (pooled_count - pooled_expected) * (pooled_count - pooled_expected) / pooled_expected;
    ++bins;
  }
  *dof = std::max(bins - 1, 1);
  return chi2;
}

TEST(SampleRows, DrawsFollowTheCpuDistributionForRowsWithDifferentParametersInOneLaunch) {
  const int vocab = 1000, draws = 20000;
  const std::vector<Case> cases = parameter_cases(vocab);
  const int num_cases = static_cast<int>(cases.size());
  std::vector<float> logits;
  for (int c = 0; c < num_cases; ++c) {
    const auto row = random_logits(100 + c, vocab, 2.0f);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  // Every case's draws interleaved in one launch: row r is case r % cases, step r / cases.
  std::vector<int> which, logit_row;
  std::vector<std::uint64_t> steps;
  for (int r = 0; r < draws * num_cases; ++r) {
    which.push_back(r % num_cases);
    logit_row.push_back(r % num_cases);
    steps.push_back(static_cast<std::uint64_t>(r / num_cases));
  }
  const Launch out = launch(logits, vocab, cases, which, logit_row, steps);
  for (int c = 0; c < num_cases; ++c) {
    const std::span<const float> row(logits.data() + static_cast<std::size_t>(c) * vocab, vocab);
    const std::vector<double> probs = sampling_distribution(row, cases[c].params, &cases[c].history);
    std::vector<int> counts(vocab, 0);
    int same_as_cpu = 0;
    for (int d = 0; d < draws; ++d) {
      const int r = d * num_cases + c;
      const std::int32_t token = out.tokens[r];
      ASSERT_GE(token, 0);
      ASSERT_LT(token, vocab);
      ++counts[token];
      same_as_cpu += token == sample_token(row, cases[c].params, &cases[c].history, steps[r]).token;
    }
    for (int t = 0; t < vocab; ++t) {
      if (probs[t] == 0.0) EXPECT_EQ(counts[t], 0) << cases[c].name << ": token " << t << " is filtered out";
    }
    int dof = 0;
    const double chi2 = chi_square(counts, probs, draws, &dof);
    // Far beyond the 99.99th percentile of chi-square(dof): about dof + 5.4 sqrt(2 dof) + 10.
    EXPECT_LT(chi2, dof + 5.4 * std::sqrt(2.0 * dof) + 10) << cases[c].name << " (" << dof << " dof)";
    // The same uniform as the host: the same token but where it falls within rounding of a token's edge.
    EXPECT_GE(same_as_cpu, draws - draws / 1000) << cases[c].name;
  }
}

TEST(SampleRows, GreedyIsExactlyTheArgmaxOfThePenalizedLogits) {
  const int vocab = 777;
  std::vector<Case> cases = parameter_cases(vocab);
  for (Case& c : cases) c.params.temperature = 0.0f;
  std::vector<float> logits;
  for (std::size_t c = 0; c < cases.size(); ++c) {
    auto row = random_logits(200 + c, vocab, 1.0f);
    // Ties: the first of equal maxima wins, as torch.argmax.
    row[40] = row[90] = row[500] = 9.0f;
    logits.insert(logits.end(), row.begin(), row.end());
  }
  std::vector<int> which, logit_row;
  std::vector<std::uint64_t> steps;
  for (int c = 0; c < static_cast<int>(cases.size()); ++c) {
    which.push_back(c);
    logit_row.push_back(c);
    steps.push_back(3);
  }
  const Launch out = launch(logits, vocab, cases, which, logit_row, steps);
  for (std::size_t c = 0; c < cases.size(); ++c) {
    const std::span<const float> row(logits.data() + c * vocab, vocab);
    EXPECT_EQ(out.tokens[c], sample_token(row, cases[c].params, &cases[c].history, 3).token) << cases[c].name;
  }
  EXPECT_EQ(out.tokens[0], 40);  // no penalties: the first of the tied maxima
}

TEST(SampleRows, PenaltiesComeFromTheTokenCountsAndTheSampledTokenIsCounted) {
  const int vocab = 64;
  // Token 5 would win; it was generated 3 times, so the frequency penalty sinks it below token 9.
  std::vector<float> logits(vocab, 0.0f);
  logits[5] = 3.0f;
  logits[9] = 2.0f;
  Case c{"penalized", {}, TokenCounts(std::vector<std::int32_t>{9})};
  for (int i = 0; i < 3; ++i) c.history.add_generated(5);
  c.params.temperature = 0.0f;
  c.params.frequency_penalty = 0.5f;  // 3 - 1.5 = 1.5 < 2
  const Launch out = launch(logits, vocab, {c}, {0}, {0}, {3}, /*count_sampled=*/true);
  EXPECT_EQ(out.tokens[0], 9);
  EXPECT_EQ(out.tokens[0], sample_token(logits, c.params, &c.history, 3).token);
  EXPECT_EQ(out.counts_after[5], 3);
  EXPECT_EQ(out.counts_after[9], 1);  // counted: the next step needs no upload
  // The repetition penalty reaches prompt tokens too: 9 is in the prompt, 2 / 4 = 0.5 < 1.5.
  c.params.frequency_penalty = 0.0f;
  c.params.repetition_penalty = 4.0f;
  EXPECT_EQ(launch(logits, vocab, {c}, {0}, {0}, {3}).tokens[0],
            sample_token(logits, c.params, &c.history, 3).token);
}

TEST(SampleRows, LogprobsAreTheFp64LogSoftmaxOfTheRawLogits) {
  for (int vocab : {50, 4096, 49152}) {
    std::vector<Case> cases = parameter_cases(vocab);
    cases[0].params.logprobs = 20;
    cases[1].params.logprobs = 0;
    cases[5].params.logprobs = 5;  // with penalties: logprobs stay the model's
    cases[6].params.temperature = 0.0f;
    cases[6].params.logprobs = 3;
    std::vector<float> logits;
    for (std::size_t c = 0; c < cases.size(); ++c) {
      const auto row = random_logits(300 + c, vocab, 3.0f);
      logits.insert(logits.end(), row.begin(), row.end());
    }
    std::vector<int> which, logit_row;
    std::vector<std::uint64_t> steps;
    for (int c = 0; c < static_cast<int>(cases.size()); ++c) {
      which.push_back(c);
      logit_row.push_back(c);
      steps.push_back(11);
    }
    const Launch out = launch(logits, vocab, cases, which, logit_row, steps);
    for (std::size_t c = 0; c < cases.size(); ++c) {
      if (cases[c].params.logprobs < 0) continue;
      const std::span<const float> row(logits.data() + c * vocab, vocab);
      const std::vector<double> lp = log_softmax(row);
      EXPECT_NEAR(out.logprobs[c], lp[out.tokens[c]], 1e-4) << cases[c].name << " vocab " << vocab;
      const SampledToken cpu = sample_token(row, cases[c].params, &cases[c].history, 11);
      const int n = std::min(cases[c].params.logprobs, vocab);
      for (int j = 0; j < n; ++j) {
        EXPECT_EQ(out.top_tokens[c * kMaxTopLogprobs + j], cpu.top_logprobs[j].token)
            << cases[c].name << " " << j;
        EXPECT_NEAR(out.top_logprobs[c * kMaxTopLogprobs + j], cpu.top_logprobs[j].logprob, 1e-4);
      }
    }
  }
}

TEST(SampleRows, SameSeedAndStepSameTokenOnEveryRun) {
  const int vocab = 5000;
  std::vector<Case> cases = parameter_cases(vocab);
  std::vector<float> logits = random_logits(9, vocab, 1.5f);
  std::vector<int> which, logit_row;
  std::vector<std::uint64_t> steps;
  for (int r = 0; r < 512; ++r) {
    which.push_back(r % static_cast<int>(cases.size()));
    logit_row.push_back(0);
    steps.push_back(static_cast<std::uint64_t>(r));
  }
  const Launch a = launch(logits, vocab, cases, which, logit_row, steps);
  const Launch b = launch(logits, vocab, cases, which, logit_row, steps);
  EXPECT_EQ(a.tokens, b.tokens);
  for (Case& c : cases) c.params.seed = 12345;
  const Launch other = launch(logits, vocab, cases, which, logit_row, steps);
  EXPECT_NE(a.tokens, other.tokens);
}

TEST(SampleRows, RealVocabulariesMatchTheHostSampler) {
  // Llama-2 (32000), SmolLM2 (49152) and Llama-3 (128256) vocabularies: many tiles, all four radix digits.
  for (int vocab : {32000, 49152, 128256}) {
    const std::vector<Case> cases = parameter_cases(vocab);
    const std::vector<float> logits = random_logits(vocab, vocab, 2.5f);
    std::vector<int> which, logit_row;
    std::vector<std::uint64_t> steps;
    const int per_case = 64;
    for (int r = 0; r < per_case * static_cast<int>(cases.size()); ++r) {
      which.push_back(r % static_cast<int>(cases.size()));
      logit_row.push_back(0);
      steps.push_back(static_cast<std::uint64_t>(r));
    }
    const Launch out = launch(logits, vocab, cases, which, logit_row, steps);
    int same = 0;
    for (std::size_t r = 0; r < which.size(); ++r) {
      const Case& c = cases[which[r]];
      same += out.tokens[r] == sample_token(logits, c.params, &c.history, steps[r]).token;
    }
    // A mismatch needs the uniform within fp32 rounding of a token's edge: far below 1 in 100 draws.
    EXPECT_GE(same, static_cast<int>(which.size()) * 99 / 100) << "vocab " << vocab;
  }
}

TEST(SampleRows, BadArgumentsNameTheField) {
  SampleRowsParams p;
  p.num_rows = 1;
  p.vocab = 10;
  p.logits_stride = 5;
  try {
    sample_rows(p, nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("logits_stride 5 is below vocab 10"), std::string::npos) << e.what();
  }
  LoadTokenCountsParams load;
  load.vocab = 10;
  load.num_slots = 2;
  std::int32_t dummy_counts = 0;
  std::uint8_t dummy_mask = 0;
  load.output_counts = &dummy_counts;
  load.prompt_mask = &dummy_mask;
  const std::vector<std::int32_t> clear = {2};
  load.clear_slots = clear;
  EXPECT_THROW(load_token_counts(load, nullptr), Error);
}

}  // namespace
}  // namespace atom::cuda
