#pragma once
// Hugging Face config.json <-> ModelConfig for the Llama family (Llama, Mistral, Qwen2).
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/model_config.h"

namespace atom {

// "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM".
const std::vector<std::string>& supported_hf_architectures();

// Reads config.json as transformers writes it, in the 4.x form (rope_theta, rope_scaling) or the 5.x form
// (rope_parameters). Missing optional fields take transformers' defaults. Throws atom::Error naming the
// file and the field and value at fault: unsupported architecture, wrong JSON type, unsupported rope
// scaling, hidden_act or bias layout. The result is validated (ModelConfig::validate).
ModelConfig read_hf_config(const std::string& config_json_path);

struct HfConfigExtras {
  std::string torch_dtype = "float32";  // dtype of the weights saved beside the config
  std::optional<int> bos_token_id;
  std::optional<int> eos_token_id;
};

// config.json for `config` (transformers 4.x form, which 5.x also reads), so that a checkpoint written by
// Atom loads with AutoModelForCausalLM.from_pretrained. read_hf_config(hf_config_json(c)) == c.
nlohmann::json hf_config_json(const ModelConfig& config, const HfConfigExtras& extras = {});

}  // namespace atom
