#pragma once
// What to quantize and how: the full configuration of one quantization run (Atom W4A4 and its variants,
// and the baselines the same tool produces). Saved in an Atom checkpoint's metadata, so a checkpoint
// says exactly how it was made.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "format/format.h"

namespace atom::quant {

// Precision of the outlier channels. INT8 is Atom's format; FP16 (outliers kept unquantized, rounded to
// fp16) exists for the ablation ladder only: it has no integer kernel and no checkpoint form.
enum class OutlierPrecision : std::uint8_t { kInt8, kFp16 };
const char* outlier_precision_name(OutlierPrecision p);  // "int8" | "fp16"

struct QuantRecipe {
  std::string preset = "custom";  // the preset it started from, for messages and the checkpoint metadata

  NumberFormat weight_format = NumberFormat::kInt4;
  bool quantize_activations = true;  // false: weight-only (W4A16), activations stay fp32
  NumberFormat act_format = NumberFormat::kInt4;
  // Group size along K of weights and activations; 0: one group per row (the normal part of a row:
  // per-channel weight scales, per-token activation scales).
  std::int64_t group = 128;
  // Outlier channels per linear input: -1 the default rule (quant::default_outlier_count with the group size,
  // or with outlier_rule_group when group is 0), 0 none (channel order then stays the identity), n exactly n.
  std::int64_t outliers = -1;
  // The group size the default outlier rule assumes for per-row recipes (group 0): the ablation's per-row
  // rows keep the same outlier channels as its grouped rows.
  std::int64_t outlier_rule_group = 128;
  OutlierPrecision outlier_precision = OutlierPrecision::kInt8;
  float a_clip = 0.9f;       // activation clip ratio (normal part)
  float w_clip = 0.85f;      // weight clip ratio (normal part); the starting point when search_clip is set
  bool search_clip = false;  // per linear layer: grid-search w_clip on the calibration output error
  bool gptq = true;          // false: round to nearest
  double percdamp = 0.01;
  std::int64_t gptq_block = 128;
  int kv_bits = 4;            // KV cache: 4 or 8 (asymmetric per token) or 16 (unquantized fp32)
  // Channels per (fp16 scale, fp16 minimum) pair of a quantized KV row, along head_dim: 0 = head_dim (one pair
  // per token per KV head), else a positive multiple of 16 that divides head_dim (32: +0.5 bit per value at
  // 4 bits). Which values divide is known only with the model: kv_group_for checks it.
  std::int64_t kv_group_size = 0;
  // KV centering (quantized KV only): a calibrated per-layer vector (mean over the calibration tokens, per KV
  // head and channel) is subtracted from every key / value before the cache stores it (docs/FORMAT.md).
  // Keys: every score of a query shifts by the same q.c, which softmax ignores. Values: the attention output
  // gets c back (softmax weights sum to 1). Both exact in real arithmetic; the cache's range shrinks.
  bool kv_center_keys = false;
  bool kv_center_values = false;
  bool smoothquant = false;   // migrate activation scale into the weights before quantizing (W8A8 baseline)
  float smooth_alpha = 0.5f;  // SmoothQuant migration strength

  // Rotations (QuaRot / SpinQuant-style, quant/rotation.h). The offline ones only change the weights the
  // quantizer starts from; the online ones (qk_hadamard, down_hadamard) are applied at run time by every
  // runtime of the checkpoint, which records them here (docs/FORMAT.md).
  bool fold_norms = false;       // RMSNorm weights folded into the following linears (norms become 1)
  bool rotate_residual = false;  // R1: random orthogonal Hadamard on the residual stream (needs fold_norms)
  bool rotate_values = false;    // R2: random orthogonal Hadamard per head on V's output and O's input
  std::uint64_t rotation_seed = 0;  // sign seeds: R1 rotation_seed, R2 rotation_seed + 1
  bool qk_hadamard = false;    // online: Hadamard of head_dim on Q and K after RoPE (before the KV cache)
  bool down_hadamard = false;  // R4, online: Hadamard on down_proj's input, its inverse folded into W_down

  // Tensor-parallel degree the checkpoint is laid out for (docs/FORMAT.md, "Tensor-parallel checkpoints"):
  // > 1 quantizes o_proj and down_proj per shard of their input channels (each shard its own channel order,
  // outliers and whole groups), so that each of N ranks holds whole groups and its own INT8 outliers.
  int tensor_parallel = 1;

  std::int64_t calib_windows = 128;  // random windows of the calibration text
  std::int64_t calib_len = 2048;     // tokens per window (capped by the model's context)
  std::uint64_t calib_seed = 0;

  // Throws atom::Error naming the field when values are out of range or contradict each other.
  void validate() const;
  bool has_offline_rotation() const {
    return fold_norms || rotate_residual || rotate_values || down_hadamard;
  }
  bool has_online_transform() const { return qk_hadamard || down_hadamard; }
  bool has_rotation() const { return has_offline_rotation() || qk_hadamard; }
  // Whether quantizing needs calibration activations at all (RTN without outliers, smoothing or clip search
  // does not).
  bool needs_calibration() const { return gptq || outliers != 0 || smoothquant || search_clip || has_kv_centering(); }
  bool has_kv_centering() const { return kv_center_keys || kv_center_values; }
  // What KV centering centers: "keys", "values", "keys and values" or "nothing".
  const char* kv_centering_name() const {
    return kv_center_keys ? (kv_center_values ? "keys and values" : "keys") : kv_center_values ? "values" : "nothing";
  }
  // The KV cache's group for a model with this head_dim (resolves 0); throws atom::Error naming kv_group_size
  // when it does not divide head_dim.
  std::int64_t kv_group_for(std::int64_t head_dim) const;
  // Outlier channels of a linear input of width k (resolves -1); throws when the count leaves no whole
  // groups.
  std::int64_t outlier_count(std::int64_t k) const;
  // Group size used for a linear input with k_normal normal channels (resolves 0).
  std::int64_t group_for(std::int64_t k_normal) const { return group == 0 ? k_normal : group; }
  // Whether the result can be stored in a checkpoint and run by the integer kernels.
  bool has_integer_form() const { return outlier_precision == OutlierPrecision::kInt8 || outliers == 0; }
  // e.g. "W4A4 int4 g128, 128 int8 outliers, a_clip 0.9, w_clip 0.85, GPTQ, KV4".
  std::string describe() const;

  nlohmann::json to_json() const;
  // Strict: every field must be present with the right type (`what` names the source in errors).
  static QuantRecipe from_json(const nlohmann::json& j, const std::string& what);
};

// Presets: atom-w4a4, atom-w3a3, atom-fp4, w8a8-smoothquant, w4a16, rtn-w4a4, and the rotated ones:
// quarot-w4a4 (per-channel INT4 GPTQ weights, per-token INT4 activations, all rotations, KV4 with the Q/K
// Hadamard), atom-rot-w4a4 (Atom's groups and INT8 outliers on the rotated model, KV4 with the Q/K Hadamard).
const std::vector<std::string>& preset_names();
// Throws atom::Error listing the presets when `name` is not one.
QuantRecipe preset_recipe(std::string_view name);

// Bits stored per weight of one row of a linear layer with K = k_normal + n_outliers inputs: codes, INT8
// outliers and the fp16 scales ((K_n b + 8 n_out + 16 K_n/G + 16 [n_out > 0]) / K). Llama-7B Atom: 4.25.
double effective_bits_per_weight(std::int64_t k_normal, std::int64_t n_outliers, std::int64_t group,
                                 NumberFormat format);

// Default outlier count of a linear input of width k with group size `group`:
//  - k >= 4096 (Llama-7B class): 128, the paper's setting (k - 128 must be a multiple of the group);
//  - smaller inputs: the smallest positive count that leaves whole groups, k % group, or `group` when k is
//    already a multiple (SmolLM2-135M: k = 576, group 128 -> 64 outliers, 512 normal channels;
//    k = 1536 -> 128 outliers).
// Throws atom::Error when no valid count exists (group does not divide k - 128 for k >= 4096, or k <= group).
std::int64_t default_outlier_count(std::int64_t k, std::int64_t group);
// Checks a requested count (e.g. from the command line): 0 <= n < k and (k - n) % group == 0.
void check_outlier_count(std::int64_t k, std::int64_t group, std::int64_t n_outliers, const char* what);

}  // namespace atom::quant
