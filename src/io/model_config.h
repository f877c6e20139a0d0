#pragma once
// Architecture hyper-parameters of a Llama-family decoder, read from config.json or GGUF metadata.
#include <cstdint>
#include <string>

namespace atom {

struct RopeScaling {
  std::string type;  // "" (none) or "llama3"; others are refused at load time
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // "llama" | "mistral" | "qwen2"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // hidden_size / num_heads unless config.json says otherwise
  int max_position_embeddings = 2048;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v bias (Qwen2)
  int sliding_window = 0;       // 0: none (Mistral's, if set, is honoured only up to the context we run)

  // Throws atom::Error naming the field when inconsistent (heads not dividing, zero sizes, ...).
  void validate(const std::string& source) const;
};

// HF name of a tensor of decoder layer `layer`, e.g. layer_tensor_name(3, "self_attn.q_proj.weight").
std::string layer_tensor_name(int layer, const std::string& suffix);

}  // namespace atom
