#include "quant/calibration.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "backend/cpu/kernels.h"
#include "common/error.h"

namespace atom::quant {

namespace {

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

std::vector<std::int64_t> calibration_window_starts(std::int64_t n_tokens, std::int64_t windows,
                                                    std::int64_t length, std::uint64_t seed) {
  if (windows <= 0 || length <= 0)
    fail("calibration: need windows > 0 and length > 0, got {} x {}", windows, length);
  if (n_tokens < length) {
    fail(
        "calibration: the calibration text has {} tokens, fewer than one window of {} (lower --calib-len or "
        "give "
        "a longer text)",
        n_tokens, length);
  }
  const auto range = static_cast<std::uint64_t>(n_tokens - length + 1);
  std::uint64_t state = seed;
  std::vector<std::int64_t> starts(static_cast<std::size_t>(windows));
  // range < 2^63: the modulo bias is at most range / 2^64, far below anything calibration could notice.
  for (auto& s : starts) s = static_cast<std::int64_t>(splitmix64(state) % range);
  return starts;
}

namespace {

void check_window_length(const ModelConfig& config, std::int64_t length) {
  if (length <= 0 || length > config.max_position_embeddings) {
    fail("calibration: window length {} not in [1, {}] (the model's context)", length,
         config.max_position_embeddings);
  }
}

}  // namespace

void embed_window(const ModelConfig& config, std::span<const float> embed_tokens,
                  std::span<const std::int32_t> tokens, std::int64_t w, std::int64_t start, std::int64_t length,
                  float* out) {
  const std::int64_t width = config.hidden_size, vocab = config.vocab_size;
  ATOM_CHECK(static_cast<std::int64_t>(embed_tokens.size()) == vocab * width);
  check_window_length(config, length);
  if (start < 0 || start + length > static_cast<std::int64_t>(tokens.size())) {
    fail("calibration: window {} [{}, {}) is outside the {} calibration tokens", w, start, start + length,
         tokens.size());
  }
  for (std::int64_t i = 0; i < length; ++i) {
    const std::int32_t t = tokens[static_cast<std::size_t>(start + i)];
    if (t < 0 || t >= vocab)
      fail("calibration: token {} is {}, outside the vocabulary [0, {})", start + i, t, vocab);
    std::copy_n(embed_tokens.data() + std::int64_t{t} * width, width, out + i * width);
  }
}

CalibrationWindows::CalibrationWindows(const ModelConfig& config, std::span<const float> embed_tokens,
                                       std::span<const std::int32_t> tokens,
                                       std::span<const std::int64_t> starts, std::int64_t length)
    : config_(config), windows_(static_cast<std::int64_t>(starts.size())), length_(length) {
  check_window_length(config, length);
  hidden_.resize(static_cast<std::size_t>(windows_ * length * config.hidden_size));
  for (std::int64_t w = 0; w < windows_; ++w)
    embed_window(config, embed_tokens, tokens, w, starts[static_cast<std::size_t>(w)], length, hidden(w));
  const std::vector<float> inv_freq = cpu::rope_inv_freq(config);
  std::vector<std::int64_t> positions(static_cast<std::size_t>(length));
  std::iota(positions.begin(), positions.end(), std::int64_t{0});
  cos_.resize(static_cast<std::size_t>(length) * inv_freq.size());
  sin_.resize(cos_.size());
  cpu::rope_cos_sin(inv_freq, positions.data(), length, cos_.data(), sin_.data());
}

void CalibrationWindows::rms_norm(std::int64_t w, std::span<const float> norm_weight, float* out) const {
  ATOM_CHECK(static_cast<std::int64_t>(norm_weight.size()) == config_.hidden_size);
  cpu::rms_norm(hidden(w), length_, config_.hidden_size, norm_weight.data(), config_.rms_norm_eps, {}, out);
}

void CalibrationWindows::attention(const float* normed, const cpu::LinearOp& q_proj,
                                   const cpu::LinearOp& k_proj, const cpu::LinearOp& v_proj,
                                   const cpu::KvRowStoreFactory& kv, float* out,
                                   KvErrorStats* kv_stats, std::span<const float> key_center,
                                   std::span<const float> value_center) const {
  const int heads = config_.num_heads, kv_heads = config_.num_kv_heads, head_dim = config_.head_dim;
  const std::int64_t q_dim = std::int64_t{heads} * head_dim, kv_dim = std::int64_t{kv_heads} * head_dim;
  const std::int64_t n = length_;
  std::vector<float> q(static_cast<std::size_t>(n * q_dim)), k(static_cast<std::size_t>(n * kv_dim)),
      v(k.size());
  q_proj.forward(normed, n, q.data());
  cpu::apply_rope(q.data(), n, q_dim, heads, head_dim, cos_.data(), sin_.data());
  if (qk_transform_) qk_transform_(q.data(), n * heads);
  keys_values(normed, k_proj, v_proj, k.data(), v.data());
  for (auto [rows, center] : {std::pair{&k, key_center}, std::pair{&v, value_center}}) {
    if (center.empty()) continue;
    ATOM_CHECK(static_cast<std::int64_t>(center.size()) == kv_dim);
    for (std::int64_t r = 0; r < n; ++r) {
      float* row = rows->data() + r * kv_dim;
      for (std::int64_t i = 0; i < kv_dim; ++i) row[i] -= center[static_cast<std::size_t>(i)];
    }
  }
  // Through the cache's storage, as LlamaModel::forward does: attention sees what a quantized cache holds.
  for (std::vector<float>* rows : {&k, &v}) {
    std::unique_ptr<cpu::KvRowStore> store = kv(kv_dim, head_dim);
    store->append(rows->data(), n);
    if (store->f32_rows() != nullptr) continue;
    std::vector<float> stored(rows->size());
    store->read(0, n, stored.data());
    if (kv_stats) {
      const bool keys = rows == &k;
      double& sq = keys ? kv_stats->key_sq : kv_stats->value_sq;
      double& err = keys ? kv_stats->key_err_sq : kv_stats->value_err_sq;
      if (keys) kv_stats->key_channel_sq.resize(static_cast<std::size_t>(head_dim), 0.0);
      for (std::size_t i = 0; i < rows->size(); ++i) {
        const double x = (*rows)[i], d = x - stored[i];
        sq += x * x;
        err += d * d;
        if (keys) kv_stats->key_channel_sq[i % static_cast<std::size_t>(head_dim)] += x * x;
      }
    }
    *rows = std::move(stored);
  }
  cpu::AttentionShape shape;
  shape.num_heads = heads;
  shape.num_kv_heads = kv_heads;
  shape.head_dim = head_dim;
  shape.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  shape.sliding_window = config_.sliding_window;
  const cpu::AttentionJob job{q.data(), k.data(), v.data(), out, n, 0};
  cpu::causal_attention(std::span<const cpu::AttentionJob>(&job, 1), shape);
  if (!value_center.empty()) {
    const int group = heads / kv_heads;
    for (std::int64_t r = 0; r < n; ++r) {
      for (int h = 0; h < heads; ++h) {
        float* o = out + r * q_dim + std::int64_t{h} * head_dim;
        const float* c = value_center.data() + std::int64_t{h / group} * head_dim;
        for (int i = 0; i < head_dim; ++i) o[i] += c[i];
      }
    }
  }
}

void CalibrationWindows::keys_values(const float* normed, const cpu::LinearOp& k_proj, const cpu::LinearOp& v_proj,
                                     float* k, float* v) const {
  const int kv_heads = config_.num_kv_heads, head_dim = config_.head_dim;
  const std::int64_t kv_dim = std::int64_t{kv_heads} * head_dim;
  k_proj.forward(normed, length_, k);
  v_proj.forward(normed, length_, v);
  cpu::apply_rope(k, length_, kv_dim, kv_heads, head_dim, cos_.data(), sin_.data());
  if (qk_transform_) qk_transform_(k, length_ * kv_heads);
}

void CalibrationWindows::mlp_hidden(const float* normed, const cpu::LinearOp& gate_proj,
                                    const cpu::LinearOp& up_proj, float* out) const {
  const std::int64_t inter = config_.intermediate_size;
  std::vector<float> up(static_cast<std::size_t>(length_ * inter));
  gate_proj.forward(normed, length_, out);
  up_proj.forward(normed, length_, up.data());
  cpu::silu_mul(out, up.data(), length_ * inter, out);
}

void CalibrationWindows::add_projection(std::int64_t w, const cpu::LinearOp& op, const float* input) {
  const std::int64_t width = config_.hidden_size;
  ATOM_CHECK(op.out_features() == width);
  std::vector<float> y(static_cast<std::size_t>(length_ * width));
  op.forward(input, length_, y.data());
  float* x = hidden(w);
  for (std::int64_t i = 0; i < length_ * width; ++i) x[i] += y[i];
}

}  // namespace atom::quant
