// config.json -> ModelConfig (4.x and 5.x transformers forms), ModelConfig::validate, and config.json output.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "io/hf_config.h"

namespace atom {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "atom_hf_config_XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

template <class Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    return;
  }
  ADD_FAILURE() << "no atom::Error thrown";
}

const std::string kDataDir = std::string(ATOM_TEST_DATA_DIR) + "/io/hf";

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

// A Llama-3-style GQA config in the transformers 4.x form.
json llama_gqa() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "max_position_embeddings": 8192, "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0, "rope_scaling": null, "tie_word_embeddings": false, "attention_bias": false,
    "hidden_act": "silu", "mlp_bias": false, "torch_dtype": "bfloat16", "bos_token_id": 128000,
    "eos_token_id": [128001, 128009]})");
}

class HfConfig : public ::testing::Test {
 protected:
  std::string write(const json& config) {
    const std::string path = dir_.file(fmt::format("config{}.json", count_++));
    std::ofstream(path) << config.dump(2);
    return path;
  }
  ModelConfig read(const json& config) { return read_hf_config(write(config)); }
  // read_hf_config must fail with an error naming the file and each of `parts`.
  void expect_read_error(const json& config, std::initializer_list<std::string> parts) {
    const std::string path = write(config);
    SCOPED_TRACE(config.dump());
    expect_error([&] { read_hf_config(path); }, {path});
    expect_error([&] { read_hf_config(path); }, parts);
  }

  TempDir dir_;
  int count_ = 0;
};

void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
  EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings, b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
}

// ---- reading

TEST_F(HfConfig, LlamaWithGroupedQueryAttention) {
  const ModelConfig c = read(llama_gqa());
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_layers, 32);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.rope_scaling.type, "");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.sliding_window, 0);
}

TEST_F(HfConfig, AbsentAndNullFieldsTakeTransformersDefaults) {
  json minimal = {{"architectures", {"LlamaForCausalLM"}}, {"vocab_size", 100}, {"hidden_size", 64},
                  {"intermediate_size", 128}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                  {"num_key_value_heads", nullptr}, {"head_dim", nullptr}, {"rope_scaling", nullptr}};
  const ModelConfig c = read(minimal);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.rope_scaling.type, "");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);

  minimal.erase("architectures");  // identified by model_type instead
  minimal["model_type"] = "mistral";
  EXPECT_EQ(read(minimal).architecture, "mistral");
  EXPECT_EQ(read(minimal).max_position_embeddings, 131072);
}

TEST_F(HfConfig, Llama3RopeScalingInBothSpellings) {
  json config = llama_gqa();
  config["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  ModelConfig c = read(config);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.rope_scaling.factor, 8.0f);
  EXPECT_EQ(c.rope_scaling.low_freq_factor, 1.0f);
  EXPECT_EQ(c.rope_scaling.high_freq_factor, 4.0f);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  config["rope_scaling"].erase("rope_type");  // older configs say "type"
  config["rope_scaling"]["type"] = "llama3";
  EXPECT_EQ(read(config).rope_scaling.type, "llama3");
  config["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(read(config).rope_scaling.type, "");
}

TEST_F(HfConfig, TransformersFiveLlama3Config) {
  // Saved by transformers 5.23 (scripts/dev/make_safetensors_refs.py): rope_parameters, "dtype".
  const ModelConfig c = read_hf_config(kDataDir + "/config_llama3.json");
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.vocab_size, 128);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 160);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.rope_scaling.factor, 32.0f);
  EXPECT_EQ(c.rope_scaling.low_freq_factor, 1.0f);
  EXPECT_EQ(c.rope_scaling.high_freq_factor, 4.0f);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
}

TEST_F(HfConfig, MistralWithExplicitHeadDimAndSlidingWindow) {
  const ModelConfig c = read_hf_config(kDataDir + "/config_mistral.json");
  EXPECT_EQ(c.architecture, "mistral");
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 32);  // explicit, not hidden_size / num_heads = 16
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.rope_theta, 1e6f);
  EXPECT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_FALSE(c.attention_bias);

  json config = read_json(kDataDir + "/config_mistral.json");
  config["sliding_window"] = nullptr;
  EXPECT_EQ(read(config).sliding_window, 0);
  config.erase("sliding_window");
  EXPECT_EQ(read(config).sliding_window, 4096);  // MistralConfig's default
}

TEST_F(HfConfig, Qwen2HasQkvBiasAndTiedEmbeddings) {
  const ModelConfig c = read_hf_config(kDataDir + "/config_qwen2.json");
  EXPECT_EQ(c.architecture, "qwen2");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope_theta, 1e6f);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.sliding_window, 0);  // "sliding_window": null, use_sliding_window false

  json config = read_json(kDataDir + "/config_qwen2.json");
  config["use_sliding_window"] = true;
  config["sliding_window"] = 4096;
  expect_read_error(config, {"use_sliding_window", "not supported"});
}

TEST_F(HfConfig, RejectsUnknownArchitectures) {
  json config = llama_gqa();
  config["architectures"] = {"GPT2LMHeadModel"};
  expect_read_error(config, {"'GPT2LMHeadModel'", "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"});
  config.erase("architectures");
  config["model_type"] = "gpt2";
  expect_read_error(config, {"model_type 'gpt2'", "Qwen2ForCausalLM"});
  config.erase("model_type");
  expect_read_error(config, {"neither 'architectures' nor 'model_type'"});
}

TEST_F(HfConfig, RejectsWrongJsonTypesNamingFieldAndValue) {
  const std::vector<std::tuple<std::string, json, std::string>> cases = {
      {"hidden_size", "4096", "field 'hidden_size' must be an integer, found \"4096\""},
      {"hidden_size", 4096.0, "field 'hidden_size' must be an integer, found 4096.0"},
      {"hidden_size", 3000000000LL, "field 'hidden_size' must be an integer in the range of int, found 3000000000"},
      {"num_hidden_layers", -5000000000LL, "field 'num_hidden_layers' must be an integer in the range of int"},
      {"num_key_value_heads", 2.5, "field 'num_key_value_heads' must be an integer, found 2.5"},
      {"rms_norm_eps", "1e-5", "field 'rms_norm_eps' must be a number, found \"1e-5\""},
      {"rope_theta", json::array({1}), "field 'rope_theta' must be a number, found [1]"},
      {"tie_word_embeddings", "true", "field 'tie_word_embeddings' must be true or false, found \"true\""},
      {"attention_bias", 1, "field 'attention_bias' must be true or false, found 1"},
      {"architectures", "LlamaForCausalLM", "field 'architectures' must be a list of architecture names"},
      {"architectures", json::array(), "field 'architectures' must be a list of architecture names, found []"},
      {"rope_scaling", "llama3", "field 'rope_scaling' must be an object or null, found \"llama3\""},
      {"hidden_act", 7, "field 'hidden_act' must be a string, found 7"},
  };
  for (const auto& [field, value, message] : cases) {
    json config = llama_gqa();
    config[field] = value;
    expect_read_error(config, {message});
  }
  json config = llama_gqa();
  config["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", "8"}, {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  expect_read_error(config, {"field 'rope_scaling.factor' must be a number, found \"8\""});
  config["rope_scaling"].erase("factor");
  expect_read_error(config, {"field 'rope_scaling.factor' is missing"});
  config = llama_gqa();
  config.erase("vocab_size");
  expect_read_error(config, {"field 'vocab_size' is missing"});
}

TEST_F(HfConfig, RejectsUnsupportedModelFeatures) {
  json config = llama_gqa();
  config["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_read_error(config, {"rope_scaling", "'yarn'", "not supported", "llama3"});
  config["rope_scaling"] = {{"factor", 4.0}};
  expect_read_error(config, {"rope_scaling", "no 'rope_type'"});
  config = llama_gqa();
  config.erase("rope_scaling");
  config["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 10000.0}};
  expect_read_error(config, {"rope_parameters", "'linear'"});
  config = llama_gqa();
  config["hidden_act"] = "gelu";
  expect_read_error(config, {"hidden_act", "gelu", "silu"});
  config = llama_gqa();
  config["mlp_bias"] = true;
  expect_read_error(config, {"mlp_bias"});
}

TEST_F(HfConfig, RejectsInconsistentSizesNamingFieldAndValue) {
  const std::vector<std::pair<json, std::string>> cases = {
      {{{"num_key_value_heads", 3}}, "num_kv_heads 3 does not divide num_heads 32"},
      {{{"hidden_size", 4001}}, "hidden_size 4001 is not divisible by num_attention_heads 32"},
      {{{"head_dim", 127}}, "head_dim must be even for rotary embeddings, found 127"},
      {{{"hidden_size", 0}}, "hidden_size must be positive, found 0"},
      {{{"num_attention_heads", 0}}, "num_heads must be positive, found 0"},
      {{{"intermediate_size", -1}}, "intermediate_size must be positive, found -1"},
      {{{"rms_norm_eps", 0}}, "rms_norm_eps must be positive, found 0"},
      {{{"rope_theta", -1.0}}, "rope_theta must be positive, found -1"},
      {{{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 0.5}, {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}}},
       "rope_scaling.factor must be >= 1, found 0.5"},
      {{{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 4.0},
                          {"high_freq_factor", 1.0}, {"original_max_position_embeddings", 8192}}}},
       "rope_scaling.high_freq_factor must exceed low_freq_factor 4, found 1"},
  };
  for (const auto& [patch, message] : cases) {
    json config = llama_gqa();
    config.merge_patch(patch);
    expect_read_error(config, {message});
  }
  json config = llama_gqa();
  config["head_dim"] = 96;  // explicit head_dim: heads need not divide hidden_size
  config["hidden_size"] = 4000;
  EXPECT_EQ(read(config).head_dim, 96);
}

TEST_F(HfConfig, FileErrorsNameThePath) {
  const std::string path = dir_.file("broken.json");
  std::ofstream(path) << "{\"hidden_size\": 64,\n \"vocab_size\": }";
  expect_error([&] { read_hf_config(path); }, {path, "invalid JSON at byte"});
  std::ofstream(path) << "{\"hidden_size\": 64, \"hidden_size\": 65}";
  expect_error([&] { read_hf_config(path); }, {path, "duplicate JSON key \"hidden_size\""});
  std::ofstream(path) << "[]";
  expect_error([&] { read_hf_config(path); }, {path, "must be a JSON object"});
  expect_error([&] { read_hf_config(dir_.file("absent.json")); }, {dir_.file("absent.json")});
}

TEST(ModelConfigValidate, ChecksWhatReadersCannot) {
  ModelConfig c;
  c.architecture = "llama";
  c.vocab_size = 32;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 1;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.validate("test");

  auto expect_invalid = [](ModelConfig bad, std::initializer_list<std::string> parts) {
    expect_error([&] { bad.validate("the-source"); }, parts);
    expect_error([&] { bad.validate("the-source"); }, {"the-source"});
  };
  ModelConfig bad = c;
  bad.architecture = "gpt2";
  expect_invalid(bad, {"architecture 'gpt2'", "llama, mistral, qwen2"});
  bad = c;
  bad.head_dim = 0;
  expect_invalid(bad, {"head_dim must be positive, found 0", "16"});
  bad.hidden_size = 66;
  expect_invalid(bad, {"hidden_size 66 is not divisible by num_heads 4"});
  bad = c;
  bad.rope_scaling.type = "linear";
  expect_invalid(bad, {"rope_scaling type 'linear'"});
  bad = c;
  bad.sliding_window = 1024;
  expect_invalid(bad, {"sliding_window 1024", "only mistral"});
  bad = c;
  bad.sliding_window = -1;
  expect_invalid(bad, {"sliding_window must be >= 0, found -1"});
  bad = c;
  bad.architecture = "qwen2";
  expect_invalid(bad, {"qwen2", "attention_bias is false"});
  bad = c;
  bad.architecture = "mistral";
  bad.attention_bias = true;
  expect_invalid(bad, {"mistral", "attention_bias is true"});
  bad = c;
  bad.max_position_embeddings = 0;
  expect_invalid(bad, {"max_position_embeddings must be positive, found 0"});
  bad = c;
  bad.rms_norm_eps = std::numeric_limits<float>::quiet_NaN();
  expect_invalid(bad, {"rms_norm_eps must be positive, found nan"});
}

// ---- writing

TEST_F(HfConfig, WrittenConfigReadsBackIdentically) {
  std::vector<std::pair<std::string, ModelConfig>> configs = {
      {"llama3", read_hf_config(kDataDir + "/config_llama3.json")},
      {"mistral", read_hf_config(kDataDir + "/config_mistral.json")},
      {"qwen2", read_hf_config(kDataDir + "/config_qwen2.json")},
      {"llama_gqa", read(llama_gqa())},
  };
  ModelConfig odd = configs[0].second;  // values whose float and decimal forms differ
  odd.rms_norm_eps = 1.1e-5f;
  odd.rope_theta = 12345.678f;
  odd.rope_scaling.factor = 1.3f;
  odd.attention_bias = true;
  odd.tie_word_embeddings = false;
  configs.emplace_back("llama_odd", odd);
  ModelConfig no_window = configs[1].second;
  no_window.sliding_window = 0;
  configs.emplace_back("mistral_no_window", no_window);

  const char* export_dir = std::getenv("ATOM_HF_EXPORT_DIR");
  json expected_by_transformers;
  for (const auto& [name, config] : configs) {
    SCOPED_TRACE(name);
    const json written = hf_config_json(config, {.torch_dtype = "bfloat16", .bos_token_id = 1, .eos_token_id = 2});
    EXPECT_EQ(written["torch_dtype"], "bfloat16");
    EXPECT_EQ(written["bos_token_id"], 1);
    EXPECT_EQ(written["eos_token_id"], 2);
    EXPECT_EQ(written["model_type"], config.architecture);
    expect_same_config(read(written), config);

    const json plain = hf_config_json(config);
    EXPECT_EQ(plain["torch_dtype"], "float32");
    EXPECT_FALSE(plain.contains("bos_token_id"));
    EXPECT_FALSE(plain.contains("eos_token_id"));
    expect_same_config(read(plain), config);

    if (export_dir) {  // for scripts/dev/make_safetensors_refs.py --check
      const fs::path config_dir = fs::path(export_dir) / ("config_" + name);
      fs::create_directories(config_dir);
      std::ofstream(config_dir / "config.json") << written.dump(2);
      json& fields = expected_by_transformers[name];
      fields = {{"vocab_size", config.vocab_size}, {"hidden_size", config.hidden_size},
                {"intermediate_size", config.intermediate_size}, {"num_hidden_layers", config.num_layers},
                {"num_attention_heads", config.num_heads}, {"num_key_value_heads", config.num_kv_heads},
                {"head_dim", config.head_dim}, {"max_position_embeddings", config.max_position_embeddings},
                {"rms_norm_eps", config.rms_norm_eps}, {"tie_word_embeddings", config.tie_word_embeddings},
                {"bos_token_id", 1}, {"eos_token_id", 2}, {"rope.rope_theta", config.rope_theta},
                {"rope.rope_type", config.rope_scaling.type.empty() ? "default" : config.rope_scaling.type}};
      if (!config.rope_scaling.type.empty()) {
        fields["rope.factor"] = config.rope_scaling.factor;
        fields["rope.low_freq_factor"] = config.rope_scaling.low_freq_factor;
        fields["rope.high_freq_factor"] = config.rope_scaling.high_freq_factor;
        fields["rope.original_max_position_embeddings"] = config.rope_scaling.original_max_position_embeddings;
      }
      if (config.architecture == "llama") fields["attention_bias"] = config.attention_bias;
      if (config.architecture == "mistral")
        fields["sliding_window"] = config.sliding_window ? json(config.sliding_window) : json(nullptr);
    }
  }
  if (export_dir) std::ofstream(fs::path(export_dir) / "expected.json") << expected_by_transformers.dump(2);
}

TEST(HfConfigJson, RefusesInvalidConfigs) {
  ModelConfig c;
  c.architecture = "llama";
  expect_error([&] { hf_config_json(c); }, {"hf_config_json", "must be positive"});
}

}  // namespace
}  // namespace atom
