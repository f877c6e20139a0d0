#pragma once
// A tiny random Llama (and Qwen2-style, with q/k/v biases and an untied lm_head) with a few large
// activation channels, and recipes scaled down to it (group 32: the CPU kernels' smallest group).
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "format/recipe.h"
#include "io/model_config.h"
#include "model/weights.h"

namespace atom::quant::test {

// The message of the atom::Error that f throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Input channels of the norms made large: the outliers the quantizer should find.
inline const std::vector<int> kOutlierChannels = {3, 17, 40, 41, 58};

inline ModelConfig tiny_config(bool qwen2 = false) {
  ModelConfig c;
  c.architecture = qwen2 ? "qwen2" : "llama";
  c.vocab_size = 96;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.tie_word_embeddings = !qwen2;
  c.attention_bias = qwen2;
  return c;
}

inline std::vector<float> normal_vector(std::mt19937_64& rng, std::size_t n, float stddev) {
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

inline std::vector<float> norm_weight(std::mt19937_64& rng, std::size_t n, float outlier_gain) {
  std::uniform_real_distribution<float> d(0.7f, 1.3f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  for (int c : kOutlierChannels) v[static_cast<std::size_t>(c)] *= outlier_gain;
  return v;
}

inline LlamaWeights tiny_weights(const ModelConfig& c, std::uint64_t seed, float outlier_gain = 10.0f) {
  std::mt19937_64 rng(seed);
  const std::size_t h = c.hidden_size, inter = c.intermediate_size, v = c.vocab_size;
  const std::size_t qd = std::size_t(c.num_heads) * c.head_dim,
                    kvd = std::size_t(c.num_kv_heads) * c.head_dim;
  const auto mat = [&](std::size_t out, std::size_t in) {
    return normal_vector(rng, out * in, 1.0f / std::sqrt(float(in)));
  };
  LlamaWeights w;
  w.config = c;
  w.embed_tokens = normal_vector(rng, v * h, 1.0f);
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights l;
    l.input_norm = norm_weight(rng, h, outlier_gain);
    l.q_proj = mat(qd, h);
    l.k_proj = mat(kvd, h);
    l.v_proj = mat(kvd, h);
    if (c.attention_bias) {
      l.q_bias = normal_vector(rng, qd, 0.3f);
      l.k_bias = normal_vector(rng, kvd, 0.3f);
      l.v_bias = normal_vector(rng, kvd, 0.3f);
    }
    l.o_proj = mat(h, qd);
    l.post_attention_norm = norm_weight(rng, h, outlier_gain);
    l.gate_proj = mat(inter, h);
    l.up_proj = mat(inter, h);
    l.down_proj = mat(h, inter);
    w.layers.push_back(std::move(l));
  }
  w.final_norm = norm_weight(rng, h, 1.0f);
  if (!c.tie_word_embeddings) w.lm_head = mat(v, h);
  return w;
}

// Token ids in [lo, hi) from a fixed-seed random walk (some repetition, like text).
inline std::vector<std::int32_t> tiny_tokens(std::size_t n, std::int32_t lo, std::int32_t hi,
                                             std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int32_t> t(n);
  std::int32_t cur = lo;
  for (auto& x : t) {
    cur = lo + static_cast<std::int32_t>((cur - lo + 1 + rng() % 7) % static_cast<std::uint64_t>(hi - lo));
    x = cur;
  }
  return t;
}

// A preset scaled to the tiny model: group 32, 4 calibration windows of 48 tokens.
inline QuantRecipe tiny_recipe(const std::string& preset) {
  QuantRecipe r = preset_recipe(preset);
  if (r.group != 0) r.group = 32;
  r.calib_windows = 4;
  r.calib_len = 48;
  r.gptq_block = 16;
  return r;
}

}  // namespace atom::quant::test
