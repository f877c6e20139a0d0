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

#include "format/format.h"
#include "format/quantized_model.h"
#include "format/recipe.h"
#include "io/checkpoint.h"
#include "io/dtype.h"
#include "io/model_config.h"
#include "model/model_source.h"
#include "model/weights.h"
#include "quant/quantizer_backend.h"

namespace atom::quant {

// The quantizer reads its model through a ModelSource (model/model_source.h).
using ::atom::model_source;
using ::atom::ModelSource;

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
  std::string backend_status;  // the backend's last word, e.g. "GPU peak 18.20 GiB" (empty on the CPU)
  double effective_bits = 0.0;  // stored bits per weight over all quantized linear layers
  std::int64_t quantized_weights = 0;
};

// The report as JSON (for --report files and the ablation's evidence).
nlohmann::json to_json(const QuantizeReport& report);

struct QuantizeOptions {
  bool show_progress = true;
  // The o_proj and down_proj inputs of all windows are kept between passes when they fit in this many bytes
  // (host memory on the CPU, GPU memory on a GPU), recomputed from the layer's input otherwise.
  std::int64_t activation_budget_bytes = std::int64_t{2} << 30;
  // Where the work runs (quantizer_backend.h); empty: the CPU.
  QuantizerBackendFactory backend;
};

// Throws atom::Error naming the value when `config` cannot be laid out for recipe.tensor_parallel ranks: the
// split of dist/tensor_parallel_plan.h, and shards of o_proj's and down_proj's inputs that leave whole groups
// after the recipe's outliers.
void check_tensor_parallel_layout(const ModelConfig& config, const QuantRecipe& recipe);

// Quantizes every decoder layer (recipe.tensor_parallel > 1: o_proj and down_proj per input shard, docs/FORMAT.md).
// calib_tokens: the tokenized calibration text (windows come from it only).
// Throws atom::Error for a bad recipe, a text shorter than one window, or a layer GPTQ cannot factor.
QuantizedModel quantize_model(ModelSource source, std::span<const std::int32_t> calib_tokens,
                              const QuantRecipe& recipe, const QuantizeOptions& options = {},
                              QuantizeReport* report = nullptr);

}  // namespace atom::quant
