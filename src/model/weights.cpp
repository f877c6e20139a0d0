#include "model/weights.h"

#include <set>
#include <string_view>

#include "common/error.h"

namespace atom {

namespace {

// Loads tensors by name and remembers which ones were consumed.
class Loader {
 public:
  explicit Loader(const TensorStore& store) : store_(store) {}

  std::vector<float> load(const std::string& name, std::vector<std::int64_t> shape) {
    used_.insert(name);
    return store_.load_f32(name, shape);
  }
  std::vector<float> load_if_present(const std::string& name, std::vector<std::int64_t> shape) {
    if (!store_.contains(name)) return {};
    return load(name, std::move(shape));
  }
  bool used(const std::string& name) const { return used_.count(name) != 0; }

 private:
  const TensorStore& store_;
  std::set<std::string> used_;
};

}  // namespace

LlamaWeights load_llama_weights(const ModelConfig& config, const TensorStore& store) {
  config.validate("model config");
  const std::int64_t hidden = config.hidden_size;
  const std::int64_t inter = config.intermediate_size;
  const std::int64_t q_dim = std::int64_t{config.num_heads} * config.head_dim;
  const std::int64_t kv_dim = std::int64_t{config.num_kv_heads} * config.head_dim;
  const std::int64_t vocab = config.vocab_size;

  Loader loader(store);
  LlamaWeights w;
  w.config = config;
  w.embed_tokens = loader.load("model.embed_tokens.weight", {vocab, hidden});
  w.layers.resize(static_cast<std::size_t>(config.num_layers));
  for (int i = 0; i < config.num_layers; ++i) {
    LayerWeights& l = w.layers[static_cast<std::size_t>(i)];
    auto name = [i](const char* suffix) { return layer_tensor_name(i, suffix); };
    l.input_norm = loader.load(name("input_layernorm.weight"), {hidden});
    l.q_proj = loader.load(name("self_attn.q_proj.weight"), {q_dim, hidden});
    l.k_proj = loader.load(name("self_attn.k_proj.weight"), {kv_dim, hidden});
    l.v_proj = loader.load(name("self_attn.v_proj.weight"), {kv_dim, hidden});
    if (config.attention_bias) {
      l.q_bias = loader.load(name("self_attn.q_proj.bias"), {q_dim});
      l.k_bias = loader.load(name("self_attn.k_proj.bias"), {kv_dim});
      l.v_bias = loader.load(name("self_attn.v_proj.bias"), {kv_dim});
    }
    l.o_proj = loader.load(name("self_attn.o_proj.weight"), {hidden, q_dim});
    l.o_bias = loader.load_if_present(name("self_attn.o_proj.bias"), {hidden});
    l.post_attention_norm = loader.load(name("post_attention_layernorm.weight"), {hidden});
    l.gate_proj = loader.load(name("mlp.gate_proj.weight"), {inter, hidden});
    l.up_proj = loader.load(name("mlp.up_proj.weight"), {inter, hidden});
    l.down_proj = loader.load(name("mlp.down_proj.weight"), {hidden, inter});
  }
  w.final_norm = loader.load("model.norm.weight", {hidden});
  if (!config.tie_word_embeddings) w.lm_head = loader.load("lm_head.weight", {vocab, hidden});

  // A decoder-layer tensor we did not read means an architecture feature we would silently drop.
  for (const std::string& n : store.names()) {
    if (n.rfind("model.layers.", 0) != 0 || loader.used(n)) continue;
    if (std::string_view(n).ends_with("rotary_emb.inv_freq")) continue;  // recomputed from the config
    if (!config.attention_bias &&
        (n.ends_with("q_proj.bias") || n.ends_with("k_proj.bias") || n.ends_with("v_proj.bias"))) {
      fail("tensor '{}' is present but the config says attention_bias = false", n);
    }
    fail("tensor '{}' is not part of the {} architecture as implemented (unsupported feature)", n,
         config.architecture);
  }
  return w;
}

}  // namespace atom
