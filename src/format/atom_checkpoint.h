#pragma once
// A whole quantized model <-> an Atom checkpoint directory (docs/FORMAT.md "Checkpoint"), on top of the
// per-linear layout and quantization_config of format/checkpoint.h:
//  - model.safetensors: every quantized linear (qweight, scales, outliers, perm), biases, norms, embeddings,
//    lm_head; metadata "atom" = {"format_version", "recipe"} (the full QuantRecipe it was made with);
//  - config.json with "quantization_config";
//  - tokenizer.json / tokenizer_config.json, so that the directory is a self-contained model.
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "format/checkpoint.h"
#include "format/quantized_model.h"
#include "io/checkpoint.h"
#include "io/hf_config.h"

namespace atom::quant {

inline constexpr const char* kAtomMetadataKey = "atom";

struct AtomCheckpointFiles {
  std::optional<nlohmann::json> tokenizer_json, tokenizer_config_json;
  HfConfigExtras config_extras;  // bos/eos ids for config.json (torch_dtype follows the stored embeddings)
  std::string
      calibration_data;  // where the calibration text came from (quantization_config.calibration.data)
};

// quantization_config of a recipe.
AtomQuantConfig atom_quant_config(const QuantRecipe& recipe, const std::string& calibration_data);

// Writes `dir`. Refuses (atom::Error) an existing path unless `force`; everything is written to a sibling
// temporary directory first and renamed into place, so a failure never leaves a half-written checkpoint nor
// touches an existing one. Refuses models without an integer form (FP16 outliers of the ablation).
void save_atom_checkpoint(const std::string& dir, const QuantizedModel& model,
                          const AtomCheckpointFiles& files, bool force = false);

// Whether an opened checkpoint is an Atom checkpoint: config.json has quantization_config.quant_method
// "atom", or its tensors include quantized linears (then loading it explains what is missing).
bool is_atom_checkpoint(const Checkpoint& checkpoint);

// Reads and validates an Atom checkpoint: checkpoint version, quantization_config and the "atom" metadata
// (they must agree), every linear's presence, dtypes and shapes against the model config, permutations
// (q/k/v share one, gate/up share one), biases as the config says, norms, embeddings, and no unknown tensors.
// Throws atom::Error naming the file, tensor or field and the value at fault.
// A checkpoint whose recipe has online transforms (the Q/K or down_proj Hadamard, quant/rotation.h) is
// refused unless the caller says its runtime applies them (`runs_online_transforms`): without them it
// computes garbage.
QuantizedModel load_atom_checkpoint(const Checkpoint& checkpoint, bool runs_online_transforms = false);

}  // namespace atom::quant
