// Calibration windows (deterministic, inside the calibration text) and the split decoder forward the
// quantizer runs layer by layer, against cpu::LlamaModel::forward.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <set>

#include "backend/cpu/kernels.h"
#include "backend/cpu/llama_model.h"
#include "backend/cpu/quant_kv_cache.h"
#include "common/error.h"
#include "quant/calibration.h"
#include "test_quantizer_tiny_model.h"

namespace atom::quant {
namespace {

TEST(CalibrationWindows, StartsAreDeterministicAndInRange) {
  const auto a = calibration_window_starts(1000, 64, 100, 7);
  const auto b = calibration_window_starts(1000, 64, 100, 7);
  const auto c = calibration_window_starts(1000, 64, 100, 8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  ASSERT_EQ(a.size(), 64u);
  std::set<std::int64_t> distinct(a.begin(), a.end());
  EXPECT_GT(distinct.size(), 48u);  // random, not a fixed stride
  for (std::int64_t s : a) {
    EXPECT_GE(s, 0);
    EXPECT_LE(s + 100, 1000);
  }
  // Every start is possible, including the last one.
  const auto exact = calibration_window_starts(100, 5, 100, 3);
  for (std::int64_t s : exact) EXPECT_EQ(s, 0);
}

TEST(CalibrationWindows, RefusesTextShorterThanOneWindow) {
  try {
    calibration_window_starts(99, 4, 100, 0);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fewer than one window"), std::string::npos) << e.what();
  }
  EXPECT_THROW(calibration_window_starts(100, 0, 10, 0), Error);
}

TEST(CalibrationWindows, RefusesTokensOutsideVocabularyAndWindowsOutsideText) {
  const ModelConfig c = test::tiny_config();
  const LlamaWeights w = test::tiny_weights(c, 1);
  std::vector<std::int32_t> tokens = test::tiny_tokens(100, 0, 96, 2);
  const std::vector<std::int64_t> starts = {0, 50};
  EXPECT_NO_THROW(CalibrationWindows(c, w.embed_tokens, tokens, starts, 50));
  const std::vector<std::int64_t> past_end = {51};
  EXPECT_THROW(CalibrationWindows(c, w.embed_tokens, tokens, past_end, 50), Error);
  tokens[60] = 96;
  EXPECT_THROW(CalibrationWindows(c, w.embed_tokens, tokens, starts, 50), Error);
}

// Runs every layer with the split forward and compares the logits with LlamaModel::forward on each window.
void expect_split_forward_matches(const ModelConfig& c, int kv_bits) {
  LlamaWeights weights = test::tiny_weights(c, 5);
  const std::vector<std::int32_t> tokens = test::tiny_tokens(300, 0, c.vocab_size, 6);
  const std::vector<std::int64_t> starts = {0, 17, 200};
  const std::int64_t length = 40;
  CalibrationWindows windows(c, weights.embed_tokens, tokens, starts, length);
  const cpu::KvRowStoreFactory kv = kv_bits == 4 ? cpu::KvRowStoreFactory(cpu::make_u4_kv_row_store)
                                                 : cpu::KvRowStoreFactory(cpu::make_f32_kv_row_store);
  cpu::LlamaModel model(weights);  // copies the weights
  const std::int64_t hidden = c.hidden_size, q_dim = std::int64_t{c.num_heads} * c.head_dim;
  for (int li = 0; li < c.num_layers; ++li) {
    const cpu::DecoderLayer& l = model.layer(li);
    for (std::int64_t w = 0; w < windows.windows(); ++w) {
      std::vector<float> normed(static_cast<std::size_t>(length * hidden)),
          attn(static_cast<std::size_t>(length * q_dim));
      windows.rms_norm(w, l.input_norm, normed.data());
      windows.attention(normed.data(), *l.q_proj, *l.k_proj, *l.v_proj, kv, attn.data());
      windows.add_projection(w, *l.o_proj, attn.data());
      std::vector<float> h(static_cast<std::size_t>(length * c.intermediate_size));
      windows.rms_norm(w, l.post_attention_norm, normed.data());
      windows.mlp_hidden(normed.data(), *l.gate_proj, *l.up_proj, h.data());
      windows.add_projection(w, *l.down_proj, h.data());
    }
  }
  for (std::int64_t w = 0; w < windows.windows(); ++w) {
    std::vector<float> normed(static_cast<std::size_t>(length * hidden)),
        logits(static_cast<std::size_t>(length * c.vocab_size));
    cpu::rms_norm(windows.hidden(w), length, hidden, model.final_norm().data(), c.rms_norm_eps, {},
                  normed.data());
    model.lm_head().forward(normed.data(), length, logits.data());
    cpu::KvCache cache = model.new_cache(kv);
    const std::span<const std::int32_t> window(tokens.data() + starts[static_cast<std::size_t>(w)], length);
    const std::vector<float> expected = model.forward(window, cache, /*all_logits=*/true);
    ASSERT_EQ(expected.size(), logits.size());
    double max_diff = 0.0, max_abs = 0.0;
    for (std::size_t i = 0; i < logits.size(); ++i) {
      max_diff = std::max(max_diff, std::fabs(double(logits[i]) - expected[i]));
      max_abs = std::max(max_abs, std::fabs(double(expected[i])));
    }
    EXPECT_LE(max_diff, 1e-5 * max_abs + 1e-6) << "window " << w << " kv_bits " << kv_bits;
  }
}

TEST(CalibrationWindows, SplitForwardMatchesModelForward) {
  expect_split_forward_matches(test::tiny_config(), 16);
}
TEST(CalibrationWindows, SplitForwardMatchesModelForwardWithBiasesAndUntiedHead) {
  expect_split_forward_matches(test::tiny_config(/*qwen2=*/true), 16);
}
TEST(CalibrationWindows, SplitForwardMatchesModelForwardThroughInt4KvCache) {
  expect_split_forward_matches(test::tiny_config(), 4);
}

}  // namespace
}  // namespace atom::quant
