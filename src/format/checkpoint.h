#pragma once
// The Atom checkpoint (docs/FORMAT.md, "Checkpoint"): a Hugging Face-style directory with config.json
// (its "quantization_config" says how the model was quantized) and model.safetensors holding every
// quantized linear as <name>.qweight / .scales / .qweight_outlier / .scales_outlier / .perm, and the
// remaining tensors (embeddings, norms, lm_head) as plain floats.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "format/format.h"
#include "io/dtype.h"
#include "io/hf_config.h"
#include "io/model_config.h"
#include "io/tensor_store.h"

namespace atom::quant {

inline constexpr int kAtomCheckpointVersion = 1;

struct AtomQuantConfig {
  // "atom" (W4A4 groups + INT8 outliers), "w4a4-rtn" (per-channel / per-token RTN), "w8a8-smoothquant",
  // "w4a16" (weight-only).
  std::string method = "atom";
  std::string weight_algorithm = "gptq";  // "gptq" | "rtn"
  NumberFormat format = NumberFormat::kInt4;  // weights, and activations unless weight-only
  bool quantized_activations = true;      // false for w4a16
  std::int64_t group_size = 128;          // 0: one group per row (per-channel weights, per-token activations)
  float act_clip = 0.9f;
  float weight_clip = 0.85f;
  std::string kv_cache = "u4";            // "f16" | "u8" | "u4"
  // Whether SmoothQuant scales were folded into norms and weights (the int8 method with or without them;
  // files without the field: true exactly for w8a8-smoothquant, which was then always smoothed).
  bool smoothquant = false;
  float smoothquant_alpha = 0.0f;         // with smoothquant (already folded into the weights)
  std::int64_t calibration_samples = 0;
  std::int64_t calibration_seq_len = 0;
  std::string calibration_data;           // where the calibration windows came from

  nlohmann::json to_json() const;
  // Throws atom::Error naming `source` and the field for unknown methods, formats, ranges.
  static AtomQuantConfig from_json(const nlohmann::json& j, const std::string& source);
  // Group size of a layer whose normal part has k_normal channels.
  std::int64_t group_for(std::int64_t k_normal) const { return group_size == 0 ? k_normal : group_size; }
};

// A non-quantized tensor to write: fp32 data stored as `dtype` (F32, F16 or BF16).
struct DenseTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> data;
  DType dtype = DType::F32;
};

// Writes dir/config.json (hf_config_json + quantization_config) and dir/model.safetensors. `linears` is
// keyed by the HF module name ("model.layers.0.self_attn.q_proj"). Creates dir if needed; refuses to
// overwrite existing files unless `overwrite`. Every linear is validated first (errors name it).
// extra_metadata: more safetensors "__metadata__" entries (the model-level writer adds the full recipe).
void write_atom_checkpoint(const std::string& dir, const ModelConfig& model, const HfConfigExtras& extras,
                           const AtomQuantConfig& quant, const std::map<std::string, QuantizedLinearWeights>& linears,
                           const std::vector<DenseTensor>& dense, bool overwrite = false,
                           const std::map<std::string, std::string>& extra_metadata = {});

// The quantization_config of a parsed config.json, or nullopt-like empty method when the model is not an
// Atom checkpoint. Throws atom::Error naming `source` when present but invalid.
bool has_atom_quant_config(const nlohmann::json& config_json);
AtomQuantConfig read_atom_quant_config(const nlohmann::json& config_json, const std::string& source);

// Loads linear `name` from a checkpoint's tensors, checking dtypes and shapes against `quant` (errors name
// the tensor, the expected and the found dtype/shape) and validating the result.
QuantizedLinearWeights load_quantized_linear(const TensorStore& store, const std::string& name,
                                             const AtomQuantConfig& quant);
// Whether `name`.qweight exists (the linear is quantized in this checkpoint).
bool has_quantized_linear(const TensorStore& store, const std::string& name);

}  // namespace atom::quant
