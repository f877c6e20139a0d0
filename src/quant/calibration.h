#pragma once
// Calibration data of the quantizer: random windows of the calibration text, their hidden states between
// decoder layers, and the decoder-layer forward split at the linear inputs the quantizer needs (GPTQ's
// sequential recipe runs it one layer at a time, on the windows, with the layer already quantized).
//
// The split forward is the same computation as cpu::LlamaModel::forward with each window a sequence of its
// own starting at position 0 (tests check the logits agree); it exists because the quantizer must stop at
// every linear input of a layer, quantize that linear, and go on with the quantized one.
#include <cstdint>
#include <span>
#include <vector>

#include "backend/cpu/kv_cache.h"
#include "backend/cpu/linear.h"
#include "backend/cpu/llama_model.h"
#include "io/model_config.h"

namespace atom::quant {

// Start offsets of `windows` windows of `length` tokens in a text of n_tokens tokens: uniform random over
// [0, n_tokens - length], from a fixed seed (splitmix64; the same on every platform). Windows may overlap.
// Throws atom::Error when the text is shorter than one window.
std::vector<std::int64_t> calibration_window_starts(std::int64_t n_tokens, std::int64_t windows,
                                                    std::int64_t length, std::uint64_t seed);

// Window w = tokens[start, start + length) embedded: out [length, hidden]. Throws atom::Error for a length
// outside [1, the model's context], a window outside the tokens or a token outside the vocabulary.
void embed_window(const ModelConfig& config, std::span<const float> embed_tokens,
                  std::span<const std::int32_t> tokens, std::int64_t w, std::int64_t start, std::int64_t length,
                  float* out);

// What the KV store did to one layer's keys and values: sums over the calibration tokens.
struct KvErrorStats {
  double key_sq = 0, key_err_sq = 0;      // sum k^2, sum (k - stored k)^2
  double value_sq = 0, value_err_sq = 0;  // the same for v
  std::vector<double> key_channel_sq;     // [head_dim]: sum of k^2 per channel, over heads and tokens
};

// Hidden states of every window, [windows, length, hidden], and the pieces of one decoder layer's forward
// on one window.
class CalibrationWindows {
 public:
  // Embeds tokens[start, start + length) for each start.
  CalibrationWindows(const ModelConfig& config, std::span<const float> embed_tokens,
                     std::span<const std::int32_t> tokens, std::span<const std::int64_t> starts,
                     std::int64_t length);

  std::int64_t windows() const { return windows_; }
  std::int64_t length() const { return length_; }
  std::int64_t hidden_size() const { return config_.hidden_size; }
  float* hidden(std::int64_t w) { return hidden_.data() + w * length_ * config_.hidden_size; }
  const float* hidden(std::int64_t w) const { return hidden_.data() + w * length_ * config_.hidden_size; }

  // RMSNorm of window w's hidden states with `norm_weight`, original channel order: out [length, hidden].
  void rms_norm(std::int64_t w, std::span<const float> norm_weight, float* out) const;
  // Self-attention of one window whose normed input is `normed` [length, hidden]: q/k/v projections, RoPE, K
  // and V through a fresh KV store from `kv` (quantized there when it is a quantized store), causal
  // attention. out [length, heads * head_dim] is the input of o_proj. kv_stats (optional) accumulates the
  // store's error. key_center / value_center (empty: none): KV centering as LlamaModel applies it (the store
  // holds k - c_k, v - c_v; out gets c_v back); kv_stats then measures the centered rows.
  void attention(const float* normed, const cpu::LinearOp& q_proj, const cpu::LinearOp& k_proj,
                 const cpu::LinearOp& v_proj, const cpu::KvRowStoreFactory& kv, float* out,
                 KvErrorStats* kv_stats = nullptr, std::span<const float> key_center = {},
                 std::span<const float> value_center = {}) const;
  // The K and V rows attention() would hand the KV store, before centering: k [length, kv_dim] after RoPE and
  // the Q/K transform, v [length, kv_dim].
  void keys_values(const float* normed, const cpu::LinearOp& k_proj, const cpu::LinearOp& v_proj, float* k,
                   float* v) const;
  // The online Q/K rotation attention() applies after RoPE (as LlamaModel::set_qk_transform); empty: none.
  void set_qk_transform(cpu::HeadTransform transform) { qk_transform_ = std::move(transform); }
  // SiLU(gate(normed)) * up(normed): out [length, intermediate] is the input of down_proj.
  void mlp_hidden(const float* normed, const cpu::LinearOp& gate_proj, const cpu::LinearOp& up_proj,
                  float* out) const;
  // hidden(w) += op(input) (a residual branch's output projection).
  void add_projection(std::int64_t w, const cpu::LinearOp& op, const float* input);

 private:
  ModelConfig config_;
  std::int64_t windows_, length_;
  std::vector<float> hidden_;
  std::vector<float> cos_, sin_;  // RoPE tables of positions 0 .. length-1
  cpu::HeadTransform qk_transform_;
};

}  // namespace atom::quant
