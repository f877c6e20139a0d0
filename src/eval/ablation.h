#pragma once
// The accuracy evidence of the quantizer: perplexity of one model under the Atom paper's ablation ladder
// (FP; W4A4 RTN; + outliers kept in FP16; + outliers INT8; + group 128; + clipping; + GPTQ; + KV4) and
// the other recipes of the same tool (Atom W3A3 and FP4, W8A8 SmoothQuant, W4A16 GPTQ and RTN), the rotated
// recipes (QuaRot-style, Atom on the rotated model) and KV-cache-only rows (INT4 KV with and without the Q/K
// Hadamard and KV centering on the fp model), each with
// its quantization time and stored bits per weight. Every row quantizes from the same fp weights with the
// same calibration windows (from the calibration text only) and is scored on the same evaluation text.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/cpu/llama_model.h"
#include "backend/cpu/quantizer_ops.h"
#include "eval/perplexity.h"
#include "format/recipe.h"
#include "quant/quantizer.h"

namespace atom {

struct AblationRow {
  std::string id;                            // short, for --rows: "fp", "w4a4-rtn", "outliers-fp16", ...
  std::string name;                          // as printed: "+ outliers INT8"
  std::optional<quant::QuantRecipe> recipe;  // nullopt: the unquantized model
  // KV-cache-only row: the fp32 model with only the recipe's KV store (kv_bits), online Q/K Hadamard and KV
  // centering (vectors measured on the fp model over the recipe's calibration windows).
  bool kv_only = false;
};

// The ladder and the baselines. From `settings`: the calibration windows, length and seed of every recipe,
// and the group size of the grouped ones (128 in the paper). The weight-only rows have no outlier channels,
// so their group must divide every input width: they take the largest multiple of 32 up to that size that
// does (SmolLM2-135M, widths 576 and 1536: 96).
std::vector<AblationRow> default_ablation_rows(const quant::QuantRecipe& settings, const ModelConfig& config);

// How the quantized rows run: fake quantization (quantize-dequantize, fp64-summed products: any recipe), or the
// integer kernels where the recipe has them (kAuto: integer where possible, fake quant otherwise).
enum class AblationExecution { kFakeQuant, kInteger, kAuto };

struct AblationOptions {
  PerplexityOptions eval;  // context, stride, max_windows of the evaluation
  AblationExecution execution = AblationExecution::kFakeQuant;
  bool show_progress = true;
  std::int64_t activation_budget_bytes = std::int64_t{2} << 30;
};

struct AblationResult {
  AblationRow row;
  std::string execution;    // "fp32" | "fake-quant" | "integer"
  std::string description;  // the recipe, in words
  PerplexityResult ppl;
  double delta_percent = 0.0;  // vs the first row (the FP baseline when present)
  double quantize_seconds = 0.0;
  double effective_bits = 32.0;  // stored bits per weight of the quantized linear layers
  quant::QuantizeReport report;  // empty for the FP row
};

// The model under study: fresh fp weights for each quantization, and the fp32 model itself.
struct AblationModel {
  std::function<quant::ModelSource()> source;
  std::function<std::unique_ptr<cpu::LlamaModel>()> fp_model;
};

// Runs the rows in order; `on_row` (optional) sees each result as soon as it exists. Throws atom::Error for
// bad options or a row that fails (naming it).
std::vector<AblationResult> run_ablation(const AblationModel& model,
                                         std::span<const std::int32_t> calib_tokens,
                                         std::span<const std::int32_t> eval_tokens,
                                         std::span<const AblationRow> rows, const AblationOptions& options,
                                         const std::function<void(const AblationResult&)>& on_row = {});

// Where a recipe's error comes from: the model quantized once, then evaluated with quantization switched on
// in some places only (fp32 elsewhere): everything but the KV cache; the weights only; the activations only;
// the activations of one kind of linear input only (attn_in = q/k/v, o_proj_in, mlp_in = gate/up,
// down_proj_in); the KV cache only. Rows carry delta_percent against the fp model (the first row). Not for
// SmoothQuant recipes (their fp model is the smoothed one). A rotated recipe's partial rows run the rotated
// fp model (the same function as the fp model) with its online transforms.
std::vector<AblationResult> attribute_error(const AblationModel& model,
                                            std::span<const std::int32_t> calib_tokens,
                                            std::span<const std::int32_t> eval_tokens,
                                            const quant::QuantRecipe& recipe, const AblationOptions& options,
                                            const std::function<void(const AblationResult&)>& on_row = {});

// A fixed-width text table (and the same as markdown) of the results.
std::string ablation_table(std::span<const AblationResult> results, bool markdown);
// Per layer and linear input of one result: max/median channel RMS and the outlier channels' share of the
// activation energy - the data behind what outlier channels can and cannot do on this model.
std::string outlier_table(const AblationResult& result, bool markdown);
nlohmann::json to_json(const AblationResult& result);

}  // namespace atom
