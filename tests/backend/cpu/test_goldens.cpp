// The fp32 decoder against transformers' logits (scripts/dev/make_model_goldens.py): tiny random models of
// every supported variant, loaded from their HF directories, and SmolLM2-135M from its GGUF.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>

#include "backend/cpu/llama_model.h"
#include "goldens.h"
#include "io/checkpoint.h"
#include "model/sampler.h"
#include "model/weights.h"

namespace atom::cpu {
namespace {

constexpr double kTolerance = 1e-4;

LlamaModel load_model(const std::string& path) { return load_llama_model(path); }

class TinyGoldens : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyGoldens, PrefillAndDecodeMatchTransformers) {
  const std::string dir = test::model_data_dir() + "/tiny_" + GetParam();
  const auto golden = test::read_json(dir + "/golden.json");
  const LlamaModel model = load_model(dir);
  const std::size_t vocab = golden["vocab_size"];
  ASSERT_EQ(model.vocab_size(), int(vocab));
  const auto prompt = golden["prompt"].get<std::vector<std::int32_t>>();
  const auto decode = golden["decode_tokens"].get<std::vector<std::int32_t>>();
  const auto prefill_ref = test::read_f32(dir + "/prefill_logits.f32", prompt.size() * vocab);
  const auto decode_ref = test::read_f32(dir + "/decode_logits.f32", decode.size() * vocab);

  KvCache cache = model.new_cache();
  const auto prefill = model.forward(prompt, cache, /*all_logits=*/true);
  test::LogitsError worst;
  for (std::size_t p = 0; p < prompt.size(); ++p) {
    const auto e = test::expect_logits_near(&prefill[p * vocab], &prefill_ref[p * vocab], vocab, kTolerance,
                                            "prefill position " + std::to_string(p));
    worst.relative_l2 = std::max(worst.relative_l2, e.relative_l2);
    worst.relative_max = std::max(worst.relative_max, e.relative_max);
  }
  for (std::size_t s = 0; s < decode.size(); ++s) {
    const auto logits = model.forward(std::span<const std::int32_t>(&decode[s], 1), cache);
    const auto e = test::expect_logits_near(logits.data(), &decode_ref[s * vocab], vocab, kTolerance,
                                            "decode step " + std::to_string(s));
    worst.relative_l2 = std::max(worst.relative_l2, e.relative_l2);
    worst.relative_max = std::max(worst.relative_max, e.relative_max);
  }
  std::printf("  %s: worst relative L2 %.2e, worst max-abs/max-ref %.2e\n", GetParam().c_str(), worst.relative_l2,
              worst.relative_max);
}

INSTANTIATE_TEST_SUITE_P(Variants, TinyGoldens,
                         ::testing::Values("llama_gqa", "llama_tied", "llama3_rope", "qwen2", "mistral"));

// The goldens exercise each variant's distinguishing feature: dropping it breaks the match.
TEST(TinyGoldens, DetectADroppedFeature) {
  struct Case {
    const char* variant;
    void (*drop)(LlamaWeights&);
  };
  const Case cases[] = {
      {"mistral", [](LlamaWeights& w) { w.config.sliding_window = 0; }},
      {"llama3_rope", [](LlamaWeights& w) { w.config.rope_scaling = {}; }},
      {"qwen2", [](LlamaWeights& w) { for (auto& l : w.layers) std::fill(l.k_bias.begin(), l.k_bias.end(), 0.0f); }},
  };
  for (const Case& c : cases) {
    const std::string dir = test::model_data_dir() + "/tiny_" + c.variant;
    const auto golden = test::read_json(dir + "/golden.json");
    const Checkpoint ckpt = open_checkpoint(dir);
    LlamaWeights weights = load_llama_weights(ckpt.config, *ckpt.tensors);
    c.drop(weights);
    const LlamaModel model(std::move(weights));
    const auto prompt = golden["prompt"].get<std::vector<std::int32_t>>();
    const std::size_t vocab = golden["vocab_size"];
    const auto ref = test::read_f32(dir + "/prefill_logits.f32", prompt.size() * vocab);
    KvCache cache = model.new_cache();
    const auto logits = model.forward(prompt, cache, true);
    const std::size_t last = prompt.size() - 1;
    EXPECT_GT(test::logits_error(&logits[last * vocab], &ref[last * vocab], vocab).relative_l2, 100 * kTolerance)
        << c.variant;
  }
}

TEST(SmolLM2Goldens, LogitsAndGreedyDecodeMatchTransformers) {
  if (test::smollm2_unavailable()) GTEST_SKIP() << "ATOM_SKIP_MODEL_TESTS=1";
  const std::string dir = test::model_data_dir() + "/smollm2";
  const auto golden = test::read_json(dir + "/golden.json");
  const LlamaModel model = load_model(test::smollm2_gguf_path());
  const std::size_t vocab = golden["vocab_size"];
  ASSERT_EQ(model.vocab_size(), int(vocab));
  for (const auto& prompt : golden["prompts"]) {
    const std::string name = prompt["name"];
    const auto tokens = prompt["tokens"].get<std::vector<std::int32_t>>();
    const auto positions = prompt["positions"].get<std::vector<std::size_t>>();
    const auto ref = test::read_f32(dir + "/" + prompt["file"].get<std::string>(), positions.size() * vocab);
    KvCache cache = model.new_cache();
    const auto logits = model.forward(tokens, cache, /*all_logits=*/true);
    for (std::size_t i = 0; i < positions.size(); ++i) {
      const auto e = test::expect_logits_near(&logits[positions[i] * vocab], &ref[i * vocab], vocab, kTolerance,
                                              name + " position " + std::to_string(positions[i]));
      std::printf("  %s position %zu: relative L2 %.2e, max-abs/max-ref %.2e\n", name.c_str(), positions[i],
                  e.relative_l2, e.relative_max);
    }
    if (!prompt.contains("greedy_decode_tokens")) continue;
    const auto decoded = prompt["greedy_decode_tokens"].get<std::vector<std::int32_t>>();
    const auto decode_ref = test::read_f32(dir + "/" + prompt["decode_file"].get<std::string>(), decoded.size() * vocab);
    // Greedy decoding through the cache reproduces transformers' tokens and logits.
    std::int32_t next = argmax(std::span<const float>(&logits[(tokens.size() - 1) * vocab], vocab));
    for (std::size_t s = 0; s < decoded.size(); ++s) {
      ASSERT_EQ(next, decoded[s]) << name << " greedy step " << s;
      const auto step = model.forward(std::span<const std::int32_t>(&next, 1), cache);
      test::expect_logits_near(step.data(), &decode_ref[s * vocab], vocab, kTolerance,
                               name + " decode step " + std::to_string(s));
      next = argmax(step);
    }
    EXPECT_EQ(next, prompt["greedy_next_after_decode"].get<std::int32_t>());
  }
}

}  // namespace
}  // namespace atom::cpu
