// Atom checkpoints at model level: round trips through load_cpu_model give the logits of the in-memory
// integer model bit for bit; every kind of bad file is refused with an error that names what is wrong.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>

#include "backend/cpu/atom_model_loader.h"
#include "backend/cpu/quantizer_ops.h"
#include "common/error.h"
#include "common/half.h"
#include "format/atom_checkpoint.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/weights.h"
#include "quant/quantizer.h"
#include "test_quantizer_tiny_model.h"

namespace atom::quant {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() / fmt::format("atom_ckpt_test_{}_{}", ::getpid(), counter++);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

QuantizedModel quantize_tiny(const std::string& preset, bool qwen2 = false) {
  const ModelConfig c = test::tiny_config(qwen2);
  QuantizeOptions o;
  o.show_progress = false;
  return quantize_model(model_source(test::tiny_weights(c, 5)), test::tiny_tokens(500, 0, c.vocab_size, 8),
                        test::tiny_recipe(preset), o);
}

std::vector<float> logits(const cpu::LlamaModel& model) {
  const std::vector<std::int32_t> tokens = test::tiny_tokens(40, 0, model.vocab_size(), 31);
  cpu::KvCache cache = model.new_cache();
  return model.forward(tokens, cache, true);
}

using test::error_of;

std::string load_error(const fs::path& dir) {
  return error_of([&] { cpu::load_cpu_model(open_checkpoint(dir.string())); });
}

// ---- round trips

class RoundTrip : public ::testing::TestWithParam<std::pair<const char*, bool>> {};

TEST_P(RoundTrip, LoadedModelGivesTheSameLogits) {
  const auto [preset, qwen2] = GetParam();
  const QuantizedModel m = quantize_tiny(preset, qwen2);
  TempDir tmp;
  const fs::path dir = tmp.path / "model";
  AtomCheckpointFiles files;
  files.tokenizer_json = nlohmann::json{{"version", "1.0"}};
  files.tokenizer_config_json = nlohmann::json{{"model_max_length", 256}};
  save_atom_checkpoint(dir.string(), m, files);
  EXPECT_TRUE(fs::exists(dir / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(dir / "tokenizer_config.json"));
  for (const auto& entry : fs::directory_iterator(tmp.path))
    EXPECT_EQ(entry.path(), dir);  // no temporary left

  const Checkpoint ckpt = open_checkpoint(dir.string());
  EXPECT_TRUE(is_atom_checkpoint(ckpt));
  const QuantizedModel back = load_atom_checkpoint(ckpt);
  EXPECT_EQ(back.recipe.to_json(), m.recipe.to_json());
  const auto loaded = cpu::load_cpu_model(ckpt);
  const auto built = build_cpu_model(m, Execution::kInteger);
  cpu::use_lm_head_precision(*built, cpu::lm_head_precision_from_env());  // as load_cpu_model does
  EXPECT_EQ(logits(*loaded), logits(*built)) << preset;
  EXPECT_NE(loaded->lm_head().describe().find("int8"), std::string::npos);
  EXPECT_EQ(loaded->new_cache().dtype(), m.recipe.kv_bits == 4 ? cpu::KvDType::U4 : cpu::KvDType::F32);
  EXPECT_NE(loaded->layer(0).q_proj->describe().find(m.recipe.quantize_activations ? "atom" : "weight-only"),
            std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Presets, RoundTrip,
                         ::testing::Values(std::pair{"atom-w4a4", false}, std::pair{"atom-w4a4", true},
                                           std::pair{"atom-w3a3", false}, std::pair{"atom-fp4", false},
                                           std::pair{"w8a8-smoothquant", true}, std::pair{"w4a16", false},
                                           std::pair{"rtn-w4a4", false}));

// Recipes off the presets save checkpoints that load: INT8 without SmoothQuant (plain, and on the rotated
// model) and an Atom W4A4 recipe with SmoothQuant; quantization_config says whether smoothing was folded in
// (before it did, such checkpoints were written and then refused as disagreeing with their own metadata).
TEST(AtomModelCheckpoint, SmoothQuantIsRecordedForEveryRecipe) {
  const ModelConfig c = test::tiny_config();
  QuantRecipe int8_plain = test::tiny_recipe("w8a8-smoothquant");
  int8_plain.smoothquant = false;
  QuantRecipe int8_rotated = test::tiny_recipe("quarot-w4a4");
  int8_rotated.weight_format = int8_rotated.act_format = NumberFormat::kInt8;
  int8_rotated.kv_bits = 16;
  QuantRecipe atom_smoothed = test::tiny_recipe("atom-w4a4");
  atom_smoothed.smoothquant = true;
  atom_smoothed.smooth_alpha = 0.6f;
  for (const QuantRecipe& recipe : {int8_plain, int8_rotated, atom_smoothed}) {
    SCOPED_TRACE(recipe.describe());
    QuantizeOptions o;
    o.show_progress = false;
    const QuantizedModel m = quantize_model(model_source(test::tiny_weights(c, 5)),
                                            test::tiny_tokens(500, 0, c.vocab_size, 8), recipe, o);
    TempDir tmp;
    const fs::path dir = tmp.path / "model";
    save_atom_checkpoint(dir.string(), m, AtomCheckpointFiles{});
    const Checkpoint ckpt = open_checkpoint(dir.string());
    EXPECT_EQ(load_atom_checkpoint(ckpt, /*runs_online_transforms=*/true).recipe.to_json(), m.recipe.to_json());
    const auto built = build_cpu_model(m, Execution::kInteger);
    cpu::use_lm_head_precision(*built, cpu::lm_head_precision_from_env());
    EXPECT_EQ(logits(*cpu::load_cpu_model(ckpt)), logits(*built));
  }
}

// A checkpoint written before quantization_config had "smoothquant": the method says it.
TEST(AtomModelCheckpoint, SmoothQuantFieldMissingFollowsTheMethod) {
  for (const bool int8 : {true, false}) {
    AtomQuantConfig q;
    q.method = int8 ? "w8a8-smoothquant" : "atom";
    q.format = int8 ? NumberFormat::kInt8 : NumberFormat::kInt4;
    q.smoothquant = int8;
    q.smoothquant_alpha = int8 ? 0.5f : 0.0f;
    nlohmann::json j = q.to_json();
    j.erase("smoothquant");
    EXPECT_EQ(AtomQuantConfig::from_json(j, "old config.json").smoothquant, int8);
    j["smoothquant"] = "yes";
    EXPECT_THROW(AtomQuantConfig::from_json(j, "bad config.json"), Error);
  }
}

TEST(AtomModelCheckpoint, PlainCheckpointsLoadAsFp32) {
  const std::string dir = std::string(ATOM_TEST_DATA_DIR) + "/model/tiny_llama_gqa";
  const Checkpoint ckpt = open_checkpoint(dir);
  EXPECT_FALSE(is_atom_checkpoint(ckpt));
  const auto loaded = cpu::load_cpu_model(ckpt);
  const cpu::LlamaModel direct(load_llama_weights(ckpt.config, *ckpt.tensors));
  EXPECT_EQ(logits(*loaded), logits(direct));
  EXPECT_NE(loaded->layer(0).q_proj->describe().find("dense"), std::string::npos);
}

TEST(AtomModelCheckpoint, LoadsFromQuantizationConfigAloneWithoutTheRecipeMetadata) {
  const QuantizedModel m = quantize_tiny("atom-w4a4");
  TempDir tmp;
  const fs::path dir = tmp.path / "m";
  save_atom_checkpoint(dir.string(), m, {});
  {
    const SafetensorsFile f((dir / "model.safetensors").string());
    std::vector<SafetensorsWriteTensor> tensors;
    for (const TensorView& t : f.tensors()) tensors.push_back({t.name, t.dtype, t.shape, {t.data, t.nbytes}});
    auto metadata = f.metadata();
    metadata.erase(kAtomMetadataKey);
    write_safetensors((dir / "model.safetensors").string(), tensors, metadata, true);
  }
  const auto loaded = cpu::load_cpu_model(open_checkpoint(dir.string()));
  const auto built = build_cpu_model(m, Execution::kInteger);
  cpu::use_lm_head_precision(*built, cpu::lm_head_precision_from_env());  // as load_cpu_model does
  EXPECT_EQ(logits(*loaded), logits(*built));
}

// ---- writing refusals

TEST(AtomModelCheckpoint, NeverOverwritesWithoutForce) {
  const QuantizedModel m = quantize_tiny("rtn-w4a4");
  TempDir tmp;
  const fs::path dir = tmp.path / "out";
  fs::create_directories(dir);
  std::ofstream(dir / "keep.txt") << "precious";
  EXPECT_NE(error_of([&] { save_atom_checkpoint(dir.string(), m, {}); }).find("--force"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir / "keep.txt"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  save_atom_checkpoint(dir.string(), m, {}, /*force=*/true);
  EXPECT_FALSE(fs::exists(dir / "keep.txt"));
  EXPECT_NO_THROW(cpu::load_cpu_model(open_checkpoint(dir.string())));
}

TEST(AtomModelCheckpoint, FailedWriteLeavesNothingBehind) {
  QuantRecipe r = test::tiny_recipe("atom-w4a4");
  r.gptq = false;
  r.outlier_precision = OutlierPrecision::kFp16;
  const ModelConfig c = test::tiny_config();
  QuantizeOptions o;
  o.show_progress = false;
  const QuantizedModel m =
      quantize_model(model_source(test::tiny_weights(c, 5)), test::tiny_tokens(500, 0, 96, 8), r, o);
  TempDir tmp;
  EXPECT_NE(error_of([&] { save_atom_checkpoint((tmp.path / "x").string(), m, {}); }).find("fp16"),
            std::string::npos);
  EXPECT_TRUE(fs::is_empty(tmp.path));
}

// ---- bad files

struct OwnedTensor {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;
};

class BadCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.path / "m";
    save_atom_checkpoint(dir_.string(), quantize_tiny("atom-w4a4", /*qwen2=*/true), {});
    ASSERT_NO_THROW(cpu::load_cpu_model(open_checkpoint(dir_.string())));
  }
  void edit_weights(
      const std::function<void(std::vector<OwnedTensor>&, std::map<std::string, std::string>&)>& edit) {
    std::vector<OwnedTensor> tensors;
    std::map<std::string, std::string> metadata;
    {
      const SafetensorsFile f((dir_ / "model.safetensors").string());
      for (const TensorView& t : f.tensors()) {
        tensors.push_back({t.name, t.dtype, t.shape, std::vector<std::uint8_t>(t.data, t.data + t.nbytes)});
      }
      metadata = f.metadata();
    }
    edit(tensors, metadata);
    std::vector<SafetensorsWriteTensor> out;
    for (const OwnedTensor& t : tensors) out.push_back({t.name, t.dtype, t.shape, t.bytes});
    write_safetensors((dir_ / "model.safetensors").string(), out, metadata, true);
  }
  OwnedTensor& find(std::vector<OwnedTensor>& tensors, const std::string& name) {
    for (OwnedTensor& t : tensors) {
      if (t.name == name) return t;
    }
    throw std::runtime_error("test: no tensor " + name);
  }
  void edit_config(const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json config = read_json_file((dir_ / "config.json").string());
    edit(config);
    std::ofstream(dir_ / "config.json") << config.dump(2);
  }
  void edit_recipe(const std::function<void(nlohmann::json&)>& edit) {
    edit_weights([&](std::vector<OwnedTensor>&, std::map<std::string, std::string>& metadata) {
      nlohmann::json meta = nlohmann::json::parse(metadata.at(kAtomMetadataKey));
      edit(meta);
      metadata[kAtomMetadataKey] = meta.dump();
    });
  }
  void expect_refused(const std::vector<std::string>& fragments) {
    const std::string error = load_error(dir_);
    for (const std::string& f : fragments)
      EXPECT_NE(error.find(f), std::string::npos) << "'" << f << "' not in: " << error;
  }

  TempDir tmp_;
  fs::path dir_;
};

TEST_F(BadCheckpoint, WrongCheckpointVersion) {
  edit_config([](nlohmann::json& c) { c["quantization_config"]["atom_version"] = 2; });
  expect_refused({"version 2", "version 1"});
}

TEST_F(BadCheckpoint, WrongMetadataVersion) {
  edit_recipe([](nlohmann::json& m) { m["format_version"] = 7; });
  expect_refused({"format_version 7", "version 1"});
}

TEST_F(BadCheckpoint, MetadataNotJson) {
  edit_weights(
      [](auto&, std::map<std::string, std::string>& metadata) { metadata[kAtomMetadataKey] = "{oops"; });
  expect_refused({"metadata 'atom'"});
}

TEST_F(BadCheckpoint, MetadataRecipeDisagreesWithConfig) {
  edit_recipe([](nlohmann::json& m) { m["recipe"]["a_clip"] = 0.8; });
  expect_refused({"a_clip", "0.8", "0.9"});
}

TEST_F(BadCheckpoint, MissingTensor) {
  edit_weights([](std::vector<OwnedTensor>& t, auto&) {
    std::erase_if(t, [](const OwnedTensor& x) { return x.name == "model.layers.1.mlp.down_proj.scales"; });
  });
  expect_refused({"model.layers.1.mlp.down_proj.scales"});
}

TEST_F(BadCheckpoint, MissingBias) {
  edit_weights([](std::vector<OwnedTensor>& t, auto&) {
    std::erase_if(t, [](const OwnedTensor& x) { return x.name == "model.layers.0.self_attn.k_proj.bias"; });
  });
  expect_refused({"model.layers.0.self_attn.k_proj.bias", "attention_bias"});
}

TEST_F(BadCheckpoint, UnknownTensor) {
  edit_weights([](std::vector<OwnedTensor>& t, auto&) {
    t.push_back(
        {"model.layers.0.self_attn.q_norm.weight", DType::F32, {4}, std::vector<std::uint8_t>(16, 0)});
  });
  expect_refused({"unexpected tensor", "q_norm"});
}

TEST_F(BadCheckpoint, PermIsNotAPermutation) {
  edit_weights([&](std::vector<OwnedTensor>& t, auto&) {
    OwnedTensor& perm = find(t, "model.layers.0.self_attn.o_proj.perm");
    std::memcpy(perm.bytes.data() + 4, perm.bytes.data(), 4);  // entry 1 repeats entry 0
  });
  expect_refused({"model.layers.0.self_attn.o_proj"});
}

TEST_F(BadCheckpoint, QkvPermutationsDiffer) {
  edit_weights([&](std::vector<OwnedTensor>& t, auto&) {
    OwnedTensor& perm = find(t, "model.layers.1.self_attn.k_proj.perm");
    std::swap_ranges(perm.bytes.begin(), perm.bytes.begin() + 4,
                     perm.bytes.begin() + 4);  // swap entries 0 and 1
  });
  expect_refused({"layer 1", "q_proj, k_proj and v_proj"});
}

TEST_F(BadCheckpoint, QweightShapeDoesNotFitConfig) {
  edit_weights([&](std::vector<OwnedTensor>& t, auto&) {
    OwnedTensor& q = find(t, "model.layers.0.mlp.up_proj.qweight");
    q.shape[0] -= 1;
    q.bytes.resize(q.bytes.size() - static_cast<std::size_t>(q.shape[1]));
  });
  expect_refused({"model.layers.0.mlp.up_proj"});
}

TEST_F(BadCheckpoint, ConfigDisagreesWithTensors) {
  edit_config([](nlohmann::json& c) { c["intermediate_size"] = 160; });
  expect_refused({"gate_proj", "160"});
}

TEST_F(BadCheckpoint, GroupDoesNotDivideNormalChannels) {
  edit_config([](nlohmann::json& c) { c["quantization_config"]["group_size"] = 48; });
  edit_recipe([](nlohmann::json& m) { m["recipe"]["group"] = 48; });
  expect_refused({"group size 48"});
}

TEST_F(BadCheckpoint, ScaleIsNotFinite) {
  edit_weights([&](std::vector<OwnedTensor>& t, auto&) {
    OwnedTensor& s = find(t, "model.layers.1.self_attn.v_proj.scales");
    const std::uint16_t nan = 0x7E00;
    std::memcpy(s.bytes.data() + 6, &nan, 2);
  });
  expect_refused({"model.layers.1.self_attn.v_proj.scales", "entry 3"});
}

TEST_F(BadCheckpoint, WrongDtype) {
  edit_weights([&](std::vector<OwnedTensor>& t, auto&) {
    OwnedTensor& s = find(t, "model.layers.0.self_attn.q_proj.qweight");
    s.dtype = DType::I8;
  });
  expect_refused({"model.layers.0.self_attn.q_proj.qweight", "U8"});
}

TEST_F(BadCheckpoint, NotQuantizedAtAll) {
  edit_config([](nlohmann::json& c) { c.erase("quantization_config"); });
  expect_refused({"quantization_config"});
}

}  // namespace
}  // namespace atom::quant
