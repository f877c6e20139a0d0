#pragma once
// fp32 weights of a Llama-family decoder (llama, mistral, qwen2), loaded by Hugging Face tensor names from
// any TensorStore (safetensors directory or GGUF). Matrices are row-major in HF order: [out, in].
#include <cstdint>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "io/tensor_store.h"

namespace atom {

struct LayerWeights {
  std::vector<float> input_norm;              // [hidden]                   input_layernorm.weight
  std::vector<float> q_proj;                  // [heads * head_dim, hidden]
  std::vector<float> k_proj;                  // [kv_heads * head_dim, hidden]
  std::vector<float> v_proj;                  // [kv_heads * head_dim, hidden]
  std::vector<float> q_bias, k_bias, v_bias;  // empty unless config.attention_bias
  std::vector<float> o_proj;                  // [hidden, heads * head_dim]
  std::vector<float> o_bias;  // empty unless the checkpoint has o_proj.bias (Llama attention_bias)
  std::vector<float> post_attention_norm;  // [hidden]                   post_attention_layernorm.weight
  std::vector<float> gate_proj;            // [intermediate, hidden]
  std::vector<float> up_proj;              // [intermediate, hidden]
  std::vector<float> down_proj;            // [hidden, intermediate]
};

struct LlamaWeights {
  ModelConfig config;
  std::vector<float> embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [hidden]  model.norm.weight
  // [vocab, hidden]; empty when config.tie_word_embeddings (the output projection is embed_tokens).
  std::vector<float> lm_head;

  const std::vector<float>& output_weight() const {
    return config.tie_word_embeddings ? embed_tokens : lm_head;
  }
};

// Loads and shape-checks every tensor the config calls for (TensorStore::load_f32 converts any dtype).
// Throws atom::Error naming the tensor when one is missing or mis-shaped, and when the checkpoint holds
// decoder-layer tensors this implementation would silently ignore (e.g. MLP biases, q/k norms).
LlamaWeights load_llama_weights(const ModelConfig& config, const TensorStore& store);

}  // namespace atom
