// Loading LlamaWeights from a TensorStore: names, shapes, tied embeddings, biases, and the errors.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "common/error.h"
#include "model/weights.h"

namespace atom {
namespace {

// fp32 tensors held in memory under HF names.
class MemoryStore final : public TensorStore {
 public:
  void add(const std::string& name, std::vector<std::int64_t> shape, std::uint64_t seed) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    std::mt19937_64 rng(seed);
    std::vector<float> data(static_cast<std::size_t>(n));
    for (auto& x : data) x = float(rng() % 1000) / 1000.0f;
    data_[name] = std::move(data);
    TensorView v;
    v.name = name;
    v.dtype = DType::F32;
    v.shape = std::move(shape);
    v.data = reinterpret_cast<const std::uint8_t*>(data_[name].data());
    v.nbytes = data_[name].size() * sizeof(float);
    v.file = "memory";
    views_[name] = v;
  }
  void remove(const std::string& name) {
    views_.erase(name);
    data_.erase(name);
  }
  const std::vector<float>& data(const std::string& name) const { return data_.at(name); }
  const TensorView* find(std::string_view name) const override {
    auto it = views_.find(std::string(name));
    return it == views_.end() ? nullptr : &it->second;
  }
  std::vector<std::string> names() const override {
    std::vector<std::string> n;
    for (const auto& [k, v] : views_) n.push_back(k);
    return n;
  }

 protected:
  std::string describe() const override { return "in-memory store"; }

 private:
  std::map<std::string, std::vector<float>> data_;
  std::map<std::string, TensorView> views_;
};

ModelConfig config(bool tied, bool bias) {
  ModelConfig c;
  c.architecture = bias ? "qwen2" : "llama";
  c.vocab_size = 11;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 2;
  c.tie_word_embeddings = tied;
  c.attention_bias = bias;
  return c;
}

MemoryStore make_store(const ModelConfig& c) {
  MemoryStore s;
  std::uint64_t seed = 1;
  const std::int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.num_heads * c.head_dim,
                     KV = c.num_kv_heads * c.head_dim;
  s.add("model.embed_tokens.weight", {c.vocab_size, H}, seed++);
  for (int l = 0; l < c.num_layers; ++l) {
    auto n = [l](const char* suffix) { return layer_tensor_name(l, suffix); };
    s.add(n("input_layernorm.weight"), {H}, seed++);
    s.add(n("self_attn.q_proj.weight"), {Q, H}, seed++);
    s.add(n("self_attn.k_proj.weight"), {KV, H}, seed++);
    s.add(n("self_attn.v_proj.weight"), {KV, H}, seed++);
    if (c.attention_bias) {
      s.add(n("self_attn.q_proj.bias"), {Q}, seed++);
      s.add(n("self_attn.k_proj.bias"), {KV}, seed++);
      s.add(n("self_attn.v_proj.bias"), {KV}, seed++);
    }
    s.add(n("self_attn.o_proj.weight"), {H, Q}, seed++);
    s.add(n("post_attention_layernorm.weight"), {H}, seed++);
    s.add(n("mlp.gate_proj.weight"), {I, H}, seed++);
    s.add(n("mlp.up_proj.weight"), {I, H}, seed++);
    s.add(n("mlp.down_proj.weight"), {H, I}, seed++);
  }
  s.add("model.norm.weight", {H}, seed++);
  if (!c.tie_word_embeddings) s.add("lm_head.weight", {c.vocab_size, H}, seed++);
  return s;
}

TEST(LoadLlamaWeights, LoadsEveryTensorByItsHfName) {
  const ModelConfig c = config(false, false);
  const MemoryStore s = make_store(c);
  const LlamaWeights w = load_llama_weights(c, s);
  EXPECT_EQ(w.embed_tokens, s.data("model.embed_tokens.weight"));
  ASSERT_EQ(w.layers.size(), 2u);
  EXPECT_EQ(w.layers[1].q_proj, s.data("model.layers.1.self_attn.q_proj.weight"));
  EXPECT_EQ(w.layers[0].down_proj, s.data("model.layers.0.mlp.down_proj.weight"));
  EXPECT_EQ(w.layers[1].post_attention_norm, s.data("model.layers.1.post_attention_layernorm.weight"));
  EXPECT_TRUE(w.layers[0].q_bias.empty());
  EXPECT_TRUE(w.layers[0].o_bias.empty());
  EXPECT_EQ(w.final_norm, s.data("model.norm.weight"));
  EXPECT_EQ(w.lm_head, s.data("lm_head.weight"));
  EXPECT_EQ(&w.output_weight(), &w.lm_head);
}

TEST(LoadLlamaWeights, TiedEmbeddingsAndBiases) {
  const ModelConfig c = config(true, true);
  MemoryStore s = make_store(c);
  s.add("model.layers.0.self_attn.o_proj.bias", {c.hidden_size}, 99);  // Llama attention_bias layout
  s.add("model.layers.1.self_attn.rotary_emb.inv_freq", {1}, 98);       // old checkpoints: ignored
  const LlamaWeights w = load_llama_weights(c, s);
  EXPECT_TRUE(w.lm_head.empty());
  EXPECT_EQ(&w.output_weight(), &w.embed_tokens);
  EXPECT_EQ(w.layers[1].k_bias, s.data("model.layers.1.self_attn.k_proj.bias"));
  EXPECT_EQ(w.layers[0].o_bias, s.data("model.layers.0.self_attn.o_proj.bias"));
  EXPECT_TRUE(w.layers[1].o_bias.empty());
}

TEST(LoadLlamaWeights, ErrorsNameTheTensor) {
  const ModelConfig c = config(false, true);
  auto expect_error = [&](MemoryStore& s, const std::string& needle) {
    try {
      load_llama_weights(c, s);
      ADD_FAILURE() << "no error; expected one naming " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  {
    MemoryStore s = make_store(c);
    s.remove("model.layers.1.mlp.up_proj.weight");
    expect_error(s, "model.layers.1.mlp.up_proj.weight");
  }
  {
    MemoryStore s = make_store(c);
    s.add("model.layers.0.self_attn.k_proj.weight", {c.num_kv_heads * c.head_dim + 1, c.hidden_size}, 5);
    expect_error(s, "model.layers.0.self_attn.k_proj.weight");
  }
  {
    MemoryStore s = make_store(c);
    s.remove("lm_head.weight");
    expect_error(s, "lm_head.weight");
  }
  {
    MemoryStore s = make_store(c);
    s.add("model.layers.1.mlp.gate_proj.bias", {c.intermediate_size}, 6);  // MLP biases are refused, never dropped
    expect_error(s, "model.layers.1.mlp.gate_proj.bias");
  }
  {
    MemoryStore s = make_store(c);
    s.remove("model.layers.0.self_attn.v_proj.bias");
    expect_error(s, "model.layers.0.self_attn.v_proj.bias");
  }
  {
    const ModelConfig no_bias = config(false, false);
    MemoryStore s = make_store(c);  // has q/k/v biases the config does not declare
    try {
      load_llama_weights(no_bias, s);
      ADD_FAILURE() << "biases silently ignored";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("attention_bias"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace atom
