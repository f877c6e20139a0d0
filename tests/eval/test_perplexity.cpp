// Sliding-window perplexity: the window plan, the scoring against brute force with synthetic models, and
// SmolLM2 against transformers (scripts/dev/make_model_goldens.py).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_runner.h"
#include "common/error.h"
#include "eval/perplexity.h"
#include "io/checkpoint.h"
#include "model/weights.h"

namespace atom {
namespace {

PerplexityOptions options(std::int64_t context, std::int64_t stride, std::int64_t max_windows = 0) {
  PerplexityOptions o;
  o.context = context;
  o.stride = stride;
  o.max_windows = max_windows;
  o.show_progress = false;
  return o;
}

TEST(PerplexityWindows, FollowTheHuggingFaceRecipe) {
  auto w = perplexity_windows(10, options(4, 4));
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ((std::vector<std::int64_t>{w[0].begin, w[0].end, w[0].first_scored}), (std::vector<std::int64_t>{0, 4, 1}));
  EXPECT_EQ((std::vector<std::int64_t>{w[1].begin, w[1].end, w[1].first_scored}), (std::vector<std::int64_t>{4, 8, 5}));
  EXPECT_EQ((std::vector<std::int64_t>{w[2].begin, w[2].end, w[2].first_scored}), (std::vector<std::int64_t>{8, 10, 9}));
  w = perplexity_windows(10, options(4, 2));
  ASSERT_EQ(w.size(), 4u);  // [0,4) [2,6) [4,8) [6,10): the last window reaches the end
  EXPECT_EQ(w[1].first_scored, 4);
  EXPECT_EQ(w[3].end, 10);
  EXPECT_EQ(w[3].first_scored, 8);
  EXPECT_EQ(perplexity_windows(10, options(4, 2, 2)).size(), 2u);
  EXPECT_EQ(perplexity_windows(3, options(2048, 2048)).size(), 1u);

  // Random plans: scored ranges are disjoint, inside their window, after the window's first token; with
  // overlapping windows every token but the first is scored.
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    const std::int64_t n = 2 + rng() % 300, ctx = 2 + rng() % 40, stride = 1 + rng() % ctx;
    std::set<std::int64_t> scored;
    const auto plan = perplexity_windows(n, options(ctx, stride));
    for (const auto& win : plan) {
      ASSERT_LT(win.begin, win.first_scored);
      ASSERT_LE(win.end - win.begin, ctx);
      for (std::int64_t t = win.first_scored; t < win.end; ++t) ASSERT_TRUE(scored.insert(t).second) << t;
    }
    // The last token is scored unless the last window holds only it (it then scores nothing).
    if (plan.back().end - plan.back().begin > 1) ASSERT_EQ(*scored.rbegin(), n - 1);
    if (stride < ctx) ASSERT_EQ(std::int64_t(scored.size()), n - 1);
  }
}

TEST(PerplexityWindows, RejectBadOptions) {
  EXPECT_THROW(perplexity_windows(10, options(1, 1)), Error);
  EXPECT_THROW(perplexity_windows(10, options(4, 5)), Error);
  EXPECT_THROW(perplexity_windows(10, options(4, 0)), Error);
  EXPECT_THROW(perplexity_windows(10, options(4, 4, -1)), Error);
  EXPECT_THROW(perplexity_windows(1, options(4, 4)), Error);
}

// A synthetic model whose logits depend on the current token and on the position inside the window, so
// that a misaligned row or window shows up.
constexpr std::int64_t kVocab = 7;
float synthetic_logit(std::int32_t current, std::int64_t row, std::int64_t next) {
  return std::sin(1.3f * float(current) + 0.7f * float(next) + 0.1f * float(row)) * 3.0f;
}

void synthetic_window(std::span<const std::int32_t> window, const cpu::LogitsSink& sink) {
  // Hands rows over in chunks of 3, as the CPU model does in larger chunks.
  const auto n = std::int64_t(window.size());
  for (std::int64_t first = 0; first < n; first += 3) {
    const std::int64_t rows = std::min<std::int64_t>(3, n - first);
    std::vector<float> logits(rows * kVocab);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t v = 0; v < kVocab; ++v) logits[r * kVocab + v] = synthetic_logit(window[first + r], first + r, v);
    sink(first, rows, logits.data());
  }
}

TEST(Perplexity, MatchesBruteForceOnASyntheticModel) {
  std::mt19937_64 rng(2);
  std::vector<std::int32_t> tokens(101);
  for (auto& t : tokens) t = std::int32_t(rng() % kVocab);
  for (auto [ctx, stride, max_windows] : {std::tuple{16, 16, 0}, {16, 5, 0}, {200, 200, 0}, {10, 7, 3}}) {
    const auto o = options(ctx, stride, max_windows);
    double nll = 0;
    std::int64_t count = 0;
    for (const auto& w : perplexity_windows(std::int64_t(tokens.size()), o)) {
      for (std::int64_t t = w.first_scored; t < w.end; ++t) {
        const std::int64_t row = t - 1 - w.begin;
        double z = 0;
        for (std::int64_t v = 0; v < kVocab; ++v) z += std::exp(double(synthetic_logit(tokens[t - 1], row, v)));
        nll += std::log(z) - synthetic_logit(tokens[t - 1], row, tokens[t]);
        ++count;
      }
    }
    const PerplexityResult r = perplexity(synthetic_window, kVocab, tokens, o);
    EXPECT_EQ(r.tokens_scored, count);
    // fp32 exponentials summed in fp64 against an all-fp64 reference.
    EXPECT_NEAR(r.nll_sum, nll, 1e-6 * nll);
    EXPECT_NEAR(r.perplexity, std::exp(nll / count), 1e-6 * r.perplexity);
    EXPECT_EQ(r.windows, std::int64_t(perplexity_windows(std::int64_t(tokens.size()), o).size()));
    EXPECT_GE(r.seconds, 0.0);
  }
}

TEST(Perplexity, UniformModelHasPerplexityEqualToVocabulary) {
  const std::vector<std::int32_t> tokens = {1, 2, 3, 4, 5, 6, 0, 1, 2};
  const auto uniform = [](std::span<const std::int32_t> w, const cpu::LogitsSink& sink) {
    std::vector<float> logits(w.size() * kVocab, 0.25f);
    sink(0, std::int64_t(w.size()), logits.data());
  };
  const auto r = perplexity(uniform, kVocab, tokens, options(4, 3));
  EXPECT_NEAR(r.perplexity, double(kVocab), 1e-12);
}

TEST(Perplexity, RejectsBadTokensAndMisbehavingModels) {
  const std::vector<std::int32_t> bad = {1, 2, kVocab};
  EXPECT_THROW(perplexity(synthetic_window, kVocab, bad, options(4, 4)), Error);
  const std::vector<std::int32_t> tokens = {1, 2, 3, 4};
  const auto short_rows = [](std::span<const std::int32_t> w, const cpu::LogitsSink& sink) {
    std::vector<float> logits(kVocab, 0.0f);
    sink(0, 1, logits.data());
  };
  EXPECT_THROW(perplexity(short_rows, kVocab, tokens, options(4, 4)), Error);
  const auto out_of_order = [](std::span<const std::int32_t> w, const cpu::LogitsSink& sink) {
    std::vector<float> logits(kVocab, 0.0f);
    sink(1, 1, logits.data());
  };
  EXPECT_THROW(perplexity(out_of_order, kVocab, tokens, options(4, 4)), Error);
}

// The CPU decoder's perplexity on one window equals the mean NLL of a single all-logits forward.
TEST(Perplexity, CpuModelOverloadScoresItsOwnLogits) {
  const std::string dir = std::string(ATOM_TEST_DATA_DIR) + "/model/tiny_llama_gqa";
  const Checkpoint ckpt = open_checkpoint(dir);
  const cpu::LlamaModel model(load_llama_weights(ckpt.config, *ckpt.tensors));
  std::mt19937_64 rng(3);
  std::vector<std::int32_t> tokens(40);
  for (auto& t : tokens) t = std::int32_t(rng() % std::uint64_t(model.vocab_size()));
  cpu::KvCache cache = model.new_cache();
  const auto logits = model.forward(tokens, cache, true);
  const std::int64_t V = model.vocab_size();
  double nll = 0;
  for (std::size_t t = 1; t < tokens.size(); ++t) {
    double z = 0;
    for (std::int64_t v = 0; v < V; ++v) z += std::exp(double(logits[(t - 1) * V + v]));
    nll += std::log(z) - logits[(t - 1) * V + tokens[t]];
  }
  const auto r = perplexity(model, tokens, options(64, 64));
  EXPECT_EQ(r.windows, 1);
  EXPECT_EQ(r.tokens_scored, 39);
  EXPECT_NEAR(r.nll_sum, nll, 1e-6 * nll);
  // Several windows: each is run on a fresh cache, so the result equals the synthetic recipe over them.
  const auto windowed = perplexity(model, tokens, options(16, 12));
  EXPECT_EQ(windowed.windows, 3);
  EXPECT_EQ(windowed.tokens_scored, 39);
  EXPECT_GT(windowed.nll_sum, 0.0);
}

// Through a runner (decode steps over the paged KV cache, windows side by side): the same perplexity as the
// decoder's window forwards, up to fp32 summation order, for any number of windows in flight.
TEST(Perplexity, RunnerDecodeStepsMatchTheWindowForward) {
  const std::string dir = std::string(ATOM_TEST_DATA_DIR) + "/model/tiny_llama_gqa";
  const Checkpoint ckpt = open_checkpoint(dir);
  const auto model = std::make_shared<const cpu::LlamaModel>(load_llama_weights(ckpt.config, *ckpt.tensors));
  std::mt19937_64 rng(std::random_device{}());
  std::vector<std::int32_t> tokens(150);
  for (auto& t : tokens) t = std::int32_t(rng() % std::uint64_t(model->vocab_size()));
  for (const PerplexityOptions& o : {options(40, 40), options(48, 20), options(33, 33, 2)}) {
    const PerplexityResult want = perplexity(*model, tokens, o);
    for (int parallel : {1, 3, 16}) {
      SCOPED_TRACE(fmt::format("context {} stride {} parallel {}", o.context, o.stride, parallel));
      CpuModelRunner runner(model, KvCacheDType::f32);
      const PerplexityResult got = perplexity(runner, tokens, o, parallel);
      EXPECT_EQ(got.windows, want.windows);
      EXPECT_EQ(got.tokens_scored, want.tokens_scored);
      EXPECT_NEAR(got.nll_sum, want.nll_sum, 1e-5 * want.nll_sum);
    }
  }
  CpuModelRunner runner(model, KvCacheDType::f32);
  EXPECT_THROW(perplexity(runner, tokens, options(40, 40), 0), Error);
  EXPECT_THROW(perplexity(runner, tokens, options(model->config().max_position_embeddings + 1, 8), 1), Error);
}

TEST(Perplexity, SmolLM2MatchesTransformers) {
  const std::string gguf = std::string(ATOM_SOURCE_DIR) + "/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  const char* skip = std::getenv("ATOM_SKIP_MODEL_TESTS");
  if (skip != nullptr && std::string(skip) == "1") GTEST_SKIP() << "ATOM_SKIP_MODEL_TESTS=1";
  ASSERT_TRUE(std::ifstream(gguf).good()) << "SmolLM2 GGUF not found at " << gguf << ": run scripts/fetch_model.sh";
  std::ifstream in(std::string(ATOM_TEST_DATA_DIR) + "/model/smollm2/golden.json");
  ASSERT_TRUE(in.good());
  const auto golden = nlohmann::json::parse(in)["perplexity"];
  const Checkpoint ckpt = open_checkpoint(gguf);
  const cpu::LlamaModel model(load_llama_weights(ckpt.config, *ckpt.tensors));
  const auto tokens = golden["tokens"].get<std::vector<std::int32_t>>();
  const auto r = perplexity(model, tokens, options(golden["ctx"], golden["stride"]));
  EXPECT_EQ(r.windows, golden["windows"].get<std::int64_t>());
  EXPECT_EQ(r.tokens_scored, golden["tokens_scored"].get<std::int64_t>());
  const double ref = golden["nll_sum"];
  EXPECT_NEAR(r.nll_sum, ref, 1e-5 * ref);
  EXPECT_NEAR(r.perplexity, golden["ppl"].get<double>(), 1e-5 * r.perplexity);
}

}  // namespace
}  // namespace atom
