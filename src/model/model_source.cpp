#include "model/model_source.h"

#include <set>
#include <string>

#include "common/error.h"

namespace atom {

namespace {

DType stored_float_dtype(const TensorStore& store, const std::string& name) {
  const DType d = store.get(name).dtype;
  return d == DType::F16 || d == DType::BF16 ? d : DType::F32;
}

LayerWeights load_layer(const ModelConfig& c, const TensorStore& store, int i) {
  const std::int64_t hidden = c.hidden_size, inter = c.intermediate_size;
  const std::int64_t q_dim = std::int64_t{c.num_heads} * c.head_dim,
                     kv_dim = std::int64_t{c.num_kv_heads} * c.head_dim;
  const auto name = [i](const char* suffix) { return layer_tensor_name(i, suffix); };
  LayerWeights l;
  l.input_norm = store.load_f32(name("input_layernorm.weight"), {hidden});
  l.q_proj = store.load_f32(name("self_attn.q_proj.weight"), {q_dim, hidden});
  l.k_proj = store.load_f32(name("self_attn.k_proj.weight"), {kv_dim, hidden});
  l.v_proj = store.load_f32(name("self_attn.v_proj.weight"), {kv_dim, hidden});
  if (c.attention_bias) {
    l.q_bias = store.load_f32(name("self_attn.q_proj.bias"), {q_dim});
    l.k_bias = store.load_f32(name("self_attn.k_proj.bias"), {kv_dim});
    l.v_bias = store.load_f32(name("self_attn.v_proj.bias"), {kv_dim});
  }
  l.o_proj = store.load_f32(name("self_attn.o_proj.weight"), {hidden, q_dim});
  if (store.contains(name("self_attn.o_proj.bias")))
    l.o_bias = store.load_f32(name("self_attn.o_proj.bias"), {hidden});
  l.post_attention_norm = store.load_f32(name("post_attention_layernorm.weight"), {hidden});
  l.gate_proj = store.load_f32(name("mlp.gate_proj.weight"), {inter, hidden});
  l.up_proj = store.load_f32(name("mlp.up_proj.weight"), {inter, hidden});
  l.down_proj = store.load_f32(name("mlp.down_proj.weight"), {hidden, inter});
  return l;
}

// The decoder-layer tensors load_layer reads; any other one is a feature we would silently drop.
void check_layer_tensors(const ModelConfig& c, const TensorStore& store) {
  std::set<std::string> known;
  for (int i = 0; i < c.num_layers; ++i) {
    for (const char* s : {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                          "self_attn.v_proj.weight", "self_attn.o_proj.weight", "self_attn.o_proj.bias",
                          "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                          "mlp.down_proj.weight"}) {
      known.insert(layer_tensor_name(i, s));
    }
    if (c.attention_bias) {
      for (const char* s : {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}) {
        known.insert(layer_tensor_name(i, s));
      }
    }
  }
  for (const std::string& n : store.names()) {
    if (n.rfind("model.layers.", 0) != 0 || known.count(n) != 0 || n.ends_with("rotary_emb.inv_freq"))
      continue;
    fail("tensor '{}' is not part of the {} architecture as implemented (unsupported feature)", n,
         c.architecture);
  }
}

}  // namespace

ModelSource model_source(const Checkpoint& checkpoint) {
  const ModelConfig& c = checkpoint.config;
  c.validate("model config");
  const TensorStore& store = *checkpoint.tensors;
  check_layer_tensors(c, store);
  const std::int64_t hidden = c.hidden_size, vocab = c.vocab_size;
  ModelSource s;
  s.config = c;
  s.embed_tokens = std::make_shared<const std::vector<float>>(
      store.load_f32("model.embed_tokens.weight", {vocab, hidden}));
  s.embed_dtype = stored_float_dtype(store, "model.embed_tokens.weight");
  s.final_norm = store.load_f32("model.norm.weight", {hidden});
  if (!c.tie_word_embeddings) {
    s.lm_head = std::make_shared<const std::vector<float>>(store.load_f32("lm_head.weight", {vocab, hidden}));
    s.lm_head_dtype = stored_float_dtype(store, "lm_head.weight");
  }
  s.layer = [&store, c](int i) { return load_layer(c, store, i); };
  return s;
}

ModelSource model_source(LlamaWeights weights) {
  ModelSource s;
  s.config = weights.config;
  s.embed_tokens = std::make_shared<const std::vector<float>>(std::move(weights.embed_tokens));
  s.final_norm = std::move(weights.final_norm);
  if (!weights.config.tie_word_embeddings) {
    s.lm_head = std::make_shared<const std::vector<float>>(std::move(weights.lm_head));
  }
  auto layers = std::make_shared<std::vector<LayerWeights>>(std::move(weights.layers));
  s.layer = [layers](int i) { return std::move(layers->at(static_cast<std::size_t>(i))); };
  return s;
}

}  // namespace atom
