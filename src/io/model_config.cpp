// ModelConfig::validate lives in the io library, not in model/: the readers that build a ModelConfig
// (config.json, GGUF metadata) are in io, which links below model, and they validate what they read.
#include <cmath>

#include "common/error.h"
#include "io/model_config.h"

namespace atom {

void ModelConfig::validate(const std::string& source) const {
  if (architecture != "llama" && architecture != "mistral" && architecture != "qwen2")
    fail("{}: architecture '{}' is not supported (supported: llama, mistral, qwen2)", source, architecture);
  const std::pair<const char*, int> sizes[] = {{"vocab_size", vocab_size},
                                               {"hidden_size", hidden_size},
                                               {"intermediate_size", intermediate_size},
                                               {"num_layers", num_layers},
                                               {"num_heads", num_heads},
                                               {"num_kv_heads", num_kv_heads},
                                               {"max_position_embeddings", max_position_embeddings}};
  for (const auto& [field, value] : sizes)
    if (value <= 0) fail("{}: {} must be positive, found {}", source, field, value);
  if (head_dim <= 0) {
    if (hidden_size % num_heads != 0)
      fail("{}: hidden_size {} is not divisible by num_heads {} and head_dim is not set", source, hidden_size,
           num_heads);
    fail("{}: head_dim must be positive, found {} (hidden_size / num_heads = {})", source, head_dim,
         hidden_size / num_heads);
  }
  if (head_dim % 2 != 0) fail("{}: head_dim must be even for rotary embeddings, found {}", source, head_dim);
  if (num_heads % num_kv_heads != 0)
    fail("{}: num_kv_heads {} does not divide num_heads {}", source, num_kv_heads, num_heads);
  if (!(std::isfinite(rms_norm_eps) && rms_norm_eps > 0))
    fail("{}: rms_norm_eps must be positive, found {}", source, rms_norm_eps);
  if (!(std::isfinite(rope_theta) && rope_theta > 0))
    fail("{}: rope_theta must be positive, found {}", source, rope_theta);

  if (rope_scaling.type == "llama3") {
    const auto& r = rope_scaling;
    if (!(std::isfinite(r.factor) && r.factor >= 1))
      fail("{}: rope_scaling.factor must be >= 1, found {}", source, r.factor);
    if (!(std::isfinite(r.low_freq_factor) && r.low_freq_factor > 0))
      fail("{}: rope_scaling.low_freq_factor must be positive, found {}", source, r.low_freq_factor);
    if (!(std::isfinite(r.high_freq_factor) && r.high_freq_factor > r.low_freq_factor))
      fail("{}: rope_scaling.high_freq_factor must exceed low_freq_factor {}, found {}", source,
           r.low_freq_factor, r.high_freq_factor);
    if (r.original_max_position_embeddings <= 0)
      fail("{}: rope_scaling.original_max_position_embeddings must be positive, found {}", source,
           r.original_max_position_embeddings);
  } else if (!rope_scaling.type.empty()) {
    fail("{}: rope_scaling type '{}' is not supported (supported: none, llama3)", source, rope_scaling.type);
  }

  if (sliding_window < 0) fail("{}: sliding_window must be >= 0, found {}", source, sliding_window);
  if (sliding_window > 0 && architecture != "mistral")
    fail("{}: sliding_window {} is set, but only mistral uses a sliding window (architecture '{}')", source,
         sliding_window, architecture);
  if (architecture == "qwen2" && !attention_bias)
    fail("{}: qwen2 has q/k/v biases, but attention_bias is false", source);
  if (architecture == "mistral" && attention_bias)
    fail("{}: mistral has no attention biases, but attention_bias is true", source);
}

std::string layer_tensor_name(int layer, const std::string& suffix) {
  return fmt::format("model.layers.{}.{}", layer, suffix);
}

}  // namespace atom
