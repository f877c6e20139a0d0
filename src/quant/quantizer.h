#pragma once
// The Atom quantizer: a Llama-family model + calibration text + recipe -> a quantized model (the tensors of
// an Atom checkpoint, docs/FORMAT.md). GPTQ's sequential recipe, one decoder layer at a time, so memory
// stays near one fp32 layer plus the calibration activations:
//   embed the calibration windows; then for each layer, for each linear input in execution order
//   (q/k/v, o_proj, gate/up, down_proj): run the windows up to that input through the layer as quantized so
//   far, collect per-channel sums of squares (outlier choice, reorder), absolute maxima (SmoothQuant) and the
//   Hessian of the input as the activation quantizer leaves it; quantize the linear(s) reading it (GPTQ or
//   RTN); go on with the quantized linear. The next layer starts from the outputs of the quantized layer.
//
// Channel order (FORMAT.md, reference notes): q/k/v share one permutation, fused into input_layernorm;
// gate/up share one, fused into post_attention_layernorm; o_proj's input is reordered at run time. Every
// linear keeps its output rows in the original order here and in checkpoints; the model builder
// (quantizer_ops.h) permutes gate/up rows by down_proj's input permutation, so that SiLU(gate) * up comes
// out already in down_proj's order.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "io/dtype.h"
#include "model/config.h"
#include "model/weights.h"
#include "quant/format.h"
#include "quant/recipe.h"

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
};

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

// The fp32 weights of a model, a decoder layer at a time.
struct ModelSource {
  ModelConfig config;
  std::shared_ptr<const std::vector<float>> embed_tokens;
  DType embed_dtype = DType::F32;
  std::vector<float> final_norm;
  std::shared_ptr<const std::vector<float>> lm_head;  // null when tied
  DType lm_head_dtype = DType::F32;
  std::function<LayerWeights(int layer)>
      layer;  // loads (or hands over) layer i's weights; called once per layer
};
// Reads layers from the checkpoint on demand (the checkpoint must outlive the source). Throws atom::Error for
// missing or mis-shaped tensors and for decoder-layer tensors the architecture does not use.
ModelSource model_source(const Checkpoint& checkpoint);
// From weights already in memory (each layer is handed over once).
ModelSource model_source(LlamaWeights weights);

// What happened to one linear input (shared by q/k/v and by gate/up): the evidence behind outlier channels.
struct InputReport {
  int layer = 0;
  std::string input;  // "attn_in" (q/k/v), "o_proj_in", "mlp_in" (gate/up), "down_proj_in"
  std::int64_t k = 0, n_outliers = 0;
  double max_rms = 0, median_rms = 0;  // per-channel RMS over the calibration tokens (after smoothing)
  double outlier_energy = 0;           // share of the sum of squares held by the outlier channels
};

// What the quantized KV cache does to one layer's keys and values on the calibration tokens (kv_bits 4 or 8).
struct KvReport {
  int layer = 0;
  double key_rel_error = 0, value_rel_error = 0;  // ||x - stored x|| / ||x|| over all tokens and heads
  double key_channel_max_over_median = 0;  // RMS of the largest key channel / the median one (head dims)
};

struct LinearReport {
  std::string name;
  std::int64_t n = 0, k = 0, n_outliers = 0, group = 0;
  // q/k/v (and gate/up) are quantized as one stacked matrix: they share these two.
  float w_clip = 0.0f;     // the clip ratio used (searched or given)
  double gptq_loss = 0.0;  // GPTQ's proxy loss of the (stacked) call (0 for RTN)
  std::int64_t dead_columns = 0;
};

struct QuantizeReport {
  std::vector<std::int64_t>
      window_starts;  // token offsets of the calibration windows (empty: no calibration)
  std::int64_t window_length = 0;
  std::vector<InputReport> inputs;
  std::vector<LinearReport> linears;
  std::vector<KvReport> kv;  // empty unless the KV cache is quantized
  double seconds = 0.0;
  double effective_bits = 0.0;  // stored bits per weight over all quantized linear layers
  std::int64_t quantized_weights = 0;
};

// The report as JSON (for --report files and the ablation's evidence).
nlohmann::json to_json(const QuantizeReport& report);

struct QuantizeOptions {
  bool show_progress = true;
  // The o_proj and down_proj inputs of all windows are kept between passes when they fit in this many bytes,
  // recomputed from the layer's input otherwise.
  std::int64_t activation_budget_bytes = std::int64_t{2} << 30;
};

// Quantizes every decoder layer. calib_tokens: the tokenized calibration text (windows come from it only).
// Throws atom::Error for a bad recipe, a text shorter than one window, or a layer GPTQ cannot factor.
QuantizedModel quantize_model(ModelSource source, std::span<const std::int32_t> calib_tokens,
                              const QuantRecipe& recipe, const QuantizeOptions& options = {},
                              QuantizeReport* report = nullptr);

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
    return linear_weights > 0 ? 8.0 * static_cast<double>(linear_bytes()) / static_cast<double>(linear_weights)
                              : 0.0;
  }
  std::int64_t fp16_model_bytes() const { return 2 * parameters; }
  std::int64_t fp16_linear_bytes() const { return 2 * linear_weights; }
};
StorageSummary storage_summary(const QuantizedModel& model);
nlohmann::json to_json(const StorageSummary& summary);

// Reorders the output rows of a quantized linear: new row r = old row order[r] (codes, scales, outliers,
// bias).
void permute_output_rows(QuantizedLinear& linear, std::span<const std::int32_t> order);

}  // namespace atom::quant
