#pragma once
// A quantized Llama-family model in memory: every linear layer's codes, scales, outliers and input
// permutation as an Atom checkpoint stores them (docs/FORMAT.md), with the norms, embeddings and lm_head
// in fp32. The quantizer (quant/quantizer.h) produces it, the Atom checkpoint reader and writer
// (format/atom_checkpoint.h) load and save it, and the CPU and CUDA backends build runnable models from it.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "format/checkpoint.h"
#include "format/recipe.h"
#include "io/dtype.h"
#include "io/model_config.h"

namespace atom::quant {

struct QuantizedLinear {
  // Codes and scales as stored (FORMAT.md); weights.perm is the channel order of this linear's input.
  QuantizedLinearWeights weights;
  // Outlier precision FP16 only (ablation; no checkpoint form): the outlier weight columns rounded to fp16,
  // [n, n_outliers]; they replace weights.outliers in the fake-quantized product.
  std::vector<float> fp16_outlier_columns;
  std::vector<float> bias;  // [n] or empty
};

struct QuantizedLayer {
  std::vector<float> input_norm, post_attention_norm;  // original channel order (SmoothQuant: divided by s)
  QuantizedLinear q_proj, k_proj, v_proj, o_proj;
  QuantizedLinear gate_proj, up_proj, down_proj;
  // KV centering (recipe.kv_center_keys / kv_center_values): the vector subtracted from every key (value) row
  // before the KV cache stores it, [num_kv_heads * head_dim] fp32 (keys after RoPE and the Q/K transform);
  // empty when off.
  std::vector<float> key_center, value_center;
  // A tensor-parallel layout (recipe.tensor_parallel = N > 1, docs/FORMAT.md): o_proj and down_proj quantized
  // per shard of their input channels, shard r reading channels [r K/N, (r + 1) K/N) as a whole Atom linear of
  // K/N inputs (its perm within the shard, its own outliers and groups). o_proj and down_proj then hold no
  // weights; o_proj keeps the layer's bias, added once to the sum of the shards.
  std::vector<QuantizedLinear> o_proj_shards, down_proj_shards;
  bool sharded() const { return !o_proj_shards.empty(); }
};

// The channel order of a sharded input as one permutation of all K channels: shard r's perm shifted by its
// first channel, the shards in order (each shard's outliers at the end of its own range).
std::vector<std::int32_t> sharded_input_order(std::span<const QuantizedLinear> shards);

struct QuantizedModel {
  ModelConfig config;
  QuantRecipe recipe;
  std::shared_ptr<const std::vector<float>> embed_tokens;  // [vocab, hidden]
  DType embed_dtype = DType::F32;                          // dtype a checkpoint stores it in
  std::vector<float> final_norm;
  std::shared_ptr<const std::vector<float>> lm_head;  // [vocab, hidden]; null when tied to embed_tokens
  DType lm_head_dtype = DType::F32;
  std::vector<QuantizedLayer> layers;
};

// Names used in reports and checkpoints: "model.layers.<i>.self_attn.q_proj", "...mlp.down_proj".
std::string linear_name(int layer, const char* linear);

// What a quantized model stores, in bytes, against the same model at 16 bits per parameter.
struct StorageSummary {
  std::int64_t linear_weights = 0;  // sum of N x K over the quantized linear layers
  std::int64_t code_bytes = 0;      // qweight: packed INT4/INT3/FP4 nibbles or INT8 normal parts
  std::int64_t scale_bytes = 0;     // fp16 group scales
  std::int64_t outlier_bytes = 0;   // INT8 outlier columns and their fp16 per-row scales
  std::int64_t perm_bytes = 0;      // int32 input permutations (one per linear, as stored)
  std::int64_t bias_bytes = 0;      // fp32 biases of the linears (not counted in bits per weight)
  std::int64_t parameters = 0;      // every parameter of the model (embeddings, norms, lm_head, linears)
  std::int64_t linear_bytes() const { return code_bytes + scale_bytes + outlier_bytes + perm_bytes; }
  // Bits per linear weight: codes + scales + outliers + permutations over the linear weights.
  double bits_per_weight() const {
    return linear_weights > 0
               ? 8.0 * static_cast<double>(linear_bytes()) / static_cast<double>(linear_weights)
               : 0.0;
  }
  std::int64_t fp16_model_bytes() const { return 2 * parameters; }
  std::int64_t fp16_linear_bytes() const { return 2 * linear_weights; }
};
StorageSummary storage_summary(const QuantizedModel& model);
nlohmann::json to_json(const StorageSummary& summary);

// Output rows [first, first + n) of a quantized linear's weights (codes, scales, outliers; perm unchanged).
QuantizedLinearWeights output_rows(const QuantizedLinearWeights& q, std::int64_t first, std::int64_t n);

// Reorders the output rows of a quantized linear: new row r = old row order[r] (codes, scales, outliers,
// bias).
void permute_output_rows(QuantizedLinear& linear, std::span<const std::int32_t> order);

}  // namespace atom::quant
