#include "io/hf_config.h"

#include <limits>
#include <map>

#include <fmt/ranges.h>

#include "common/error.h"
#include "io/json_file.h"

namespace atom {
namespace {

struct HfArchitecture {
  const char* hf_name;     // config.json "architectures"
  const char* model_type;  // config.json "model_type", ModelConfig::architecture
  int default_max_position_embeddings;  // transformers' defaults for each config class
};

constexpr HfArchitecture kArchitectures[] = {
    {"LlamaForCausalLM", "llama", 2048},
    {"MistralForCausalLM", "mistral", 4096 * 32},
    {"Qwen2ForCausalLM", "qwen2", 32768},
};

// Fields of one JSON object, read with errors naming the file and the field path ("rope_scaling.factor").
class FieldReader {
 public:
  FieldReader(const nlohmann::json& object, const std::string& path, std::string prefix = "")
      : object_(object), path_(path), prefix_(std::move(prefix)) {}

  // The field, or nullptr when absent or null (transformers treats both as "use the default").
  const nlohmann::json* find(const char* key) const {
    const auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }

  [[noreturn]] void fail_field(const char* key, std::string_view what) const {
    fail("config '{}': field '{}{}' {}", path_, prefix_, key, what);
  }
  [[noreturn]] void fail_type(const char* key, std::string_view expected, const nlohmann::json& value) const {
    fail_field(key, fmt::format("must be {}, found {}", expected, json_snippet(value)));
  }

  int integer(const char* key, std::optional<int> fallback = std::nullopt) const {
    const auto* v = find(key);
    if (!v) {
      if (!fallback) fail_field(key, "is missing");
      return *fallback;
    }
    if (!v->is_number_integer()) fail_type(key, "an integer", *v);
    if (v->is_number_unsigned() ? v->get<std::uint64_t>() > std::numeric_limits<int>::max()
                                : v->get<std::int64_t>() < std::numeric_limits<int>::min())
      fail_type(key, "an integer in the range of int", *v);
    return static_cast<int>(v->get<std::int64_t>());
  }

  float number(const char* key, std::optional<float> fallback = std::nullopt) const {
    const auto* v = find(key);
    if (!v) {
      if (!fallback) fail_field(key, "is missing");
      return *fallback;
    }
    if (!v->is_number()) fail_type(key, "a number", *v);
    return static_cast<float>(v->get<double>());
  }

  bool boolean(const char* key, bool fallback) const {
    const auto* v = find(key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail_type(key, "true or false", *v);
    return v->get<bool>();
  }

  std::optional<std::string> string(const char* key) const {
    const auto* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) fail_type(key, "a string", *v);
    return v->get<std::string>();
  }

 private:
  const nlohmann::json& object_;
  const std::string& path_;
  std::string prefix_;
};

std::string supported_list() { return fmt::format("{}", fmt::join(supported_hf_architectures(), ", ")); }

const HfArchitecture& find_architecture(const FieldReader& fields, const std::string& path) {
  if (const auto* archs = fields.find("architectures")) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string())
      fields.fail_type("architectures", "a list of architecture names", *archs);
    const auto& name = (*archs)[0].get_ref<const std::string&>();
    for (const auto& a : kArchitectures)
      if (name == a.hf_name) return a;
    fail("config '{}': architecture '{}' is not supported (supported: {})", path, name, supported_list());
  }
  // Configs without "architectures" are still identified by model_type, as transformers' Auto classes do.
  const auto model_type = fields.string("model_type");
  if (!model_type) fail("config '{}': neither 'architectures' nor 'model_type' is given", path);
  for (const auto& a : kArchitectures)
    if (*model_type == a.model_type) return a;
  fail("config '{}': model_type '{}' is not supported (supported: {})", path, *model_type, supported_list());
}

// rope_scaling (transformers 4.x) or rope_parameters (5.x, which also holds rope_theta).
void read_rope(const FieldReader& fields, const std::string& path, ModelConfig& config) {
  const char* key = fields.find("rope_parameters") ? "rope_parameters" : "rope_scaling";
  const auto* rope = fields.find(key);
  config.rope_theta = fields.number("rope_theta", 10000.0f);
  if (!rope) return;
  if (!rope->is_object()) fields.fail_type(key, "an object or null", *rope);
  const FieldReader params(*rope, path, std::string(key) + ".");
  if (std::string_view(key) == "rope_parameters") config.rope_theta = params.number("rope_theta", config.rope_theta);
  auto type = params.string("rope_type");
  if (!type) type = params.string("type");
  if (!type) fail("config '{}': field '{}' gives no 'rope_type'", path, key);
  if (*type == "default") return;
  if (*type != "llama3")
    fail("config '{}': field '{}' has rope_type '{}', which is not supported (supported: default, llama3)",
         path, key, *type);
  config.rope_scaling.type = "llama3";
  config.rope_scaling.factor = params.number("factor");
  config.rope_scaling.low_freq_factor = params.number("low_freq_factor");
  config.rope_scaling.high_freq_factor = params.number("high_freq_factor");
  config.rope_scaling.original_max_position_embeddings = params.integer("original_max_position_embeddings");
}

// The shortest decimal that reads back as `value`, as a JSON double ("1e-05", not 9.99999974738e-06).
double exact_decimal(float value) { return std::stod(fmt::format("{}", value)); }

}  // namespace

const std::vector<std::string>& supported_hf_architectures() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& a : kArchitectures) out.push_back(a.hf_name);
    return out;
  }();
  return names;
}

ModelConfig read_hf_config(const std::string& config_json_path) {
  const std::string& path = config_json_path;
  const nlohmann::json root = read_json_file(path);
  if (!root.is_object()) fail("config '{}': must be a JSON object, found {}", path, json_snippet(root));
  const FieldReader fields(root, path);
  const HfArchitecture& arch = find_architecture(fields, path);

  ModelConfig c;
  c.architecture = arch.model_type;
  c.vocab_size = fields.integer("vocab_size");
  c.hidden_size = fields.integer("hidden_size");
  c.intermediate_size = fields.integer("intermediate_size");
  c.num_layers = fields.integer("num_hidden_layers");
  c.num_heads = fields.integer("num_attention_heads");
  c.num_kv_heads = fields.integer("num_key_value_heads", c.num_heads);
  if (fields.find("head_dim")) {
    c.head_dim = fields.integer("head_dim");
  } else if (c.num_heads > 0) {
    if (c.hidden_size % c.num_heads != 0)
      fail("config '{}': hidden_size {} is not divisible by num_attention_heads {} and head_dim is not given",
           path, c.hidden_size, c.num_heads);
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.max_position_embeddings = fields.integer("max_position_embeddings", arch.default_max_position_embeddings);
  c.rms_norm_eps = fields.number("rms_norm_eps", 1e-6f);
  read_rope(fields, path, c);
  c.tie_word_embeddings = fields.boolean("tie_word_embeddings", false);

  if (const auto act = fields.string("hidden_act"); act && *act != "silu")
    fail("config '{}': field 'hidden_act' is \"{}\"; only \"silu\" is supported", path, *act);
  if (c.architecture == "llama") {
    c.attention_bias = fields.boolean("attention_bias", false);
    if (fields.boolean("mlp_bias", false))
      fail("config '{}': field 'mlp_bias' is true; MLP biases are not supported", path);
  } else if (c.architecture == "qwen2") {
    c.attention_bias = true;  // Qwen2 always has q/k/v biases (and none elsewhere)
    if (fields.boolean("use_sliding_window", false))
      fail("config '{}': field 'use_sliding_window' is true; Qwen2 sliding-window layers are not supported", path);
  } else if (c.architecture == "mistral") {
    // Absent: transformers' default window of 4096; null: no window.
    c.sliding_window = root.contains("sliding_window") ? fields.integer("sliding_window", 0) : 4096;
  }
  c.validate(fmt::format("config '{}'", path));
  return c;
}

nlohmann::json hf_config_json(const ModelConfig& config, const HfConfigExtras& extras) {
  config.validate("hf_config_json");
  const HfArchitecture* arch = nullptr;
  for (const auto& a : kArchitectures)
    if (config.architecture == a.model_type) arch = &a;
  ATOM_CHECK(arch != nullptr);  // validate() accepts only these

  nlohmann::json j;
  j["architectures"] = {arch->hf_name};
  j["model_type"] = arch->model_type;
  j["vocab_size"] = config.vocab_size;
  j["hidden_size"] = config.hidden_size;
  j["intermediate_size"] = config.intermediate_size;
  j["num_hidden_layers"] = config.num_layers;
  j["num_attention_heads"] = config.num_heads;
  j["num_key_value_heads"] = config.num_kv_heads;
  j["head_dim"] = config.head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = config.max_position_embeddings;
  j["rms_norm_eps"] = exact_decimal(config.rms_norm_eps);
  j["rope_theta"] = exact_decimal(config.rope_theta);
  if (config.rope_scaling.type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    const auto& r = config.rope_scaling;
    j["rope_scaling"] = {{"rope_type", r.type},
                         {"factor", exact_decimal(r.factor)},
                         {"low_freq_factor", exact_decimal(r.low_freq_factor)},
                         {"high_freq_factor", exact_decimal(r.high_freq_factor)},
                         {"original_max_position_embeddings", r.original_max_position_embeddings}};
  }
  j["tie_word_embeddings"] = config.tie_word_embeddings;
  if (config.architecture == "llama") {
    j["attention_bias"] = config.attention_bias;
    j["mlp_bias"] = false;
  } else if (config.architecture == "mistral") {
    j["sliding_window"] = config.sliding_window > 0 ? nlohmann::json(config.sliding_window) : nullptr;
  } else if (config.architecture == "qwen2") {
    j["use_sliding_window"] = false;
  }
  j["torch_dtype"] = extras.torch_dtype;
  if (extras.bos_token_id) j["bos_token_id"] = *extras.bos_token_id;
  if (extras.eos_token_id) j["eos_token_id"] = *extras.eos_token_id;
  return j;
}

}  // namespace atom
