// KV cache groups (kv_group_size: a scale and minimum per group of channels of a KV row): the recipe field, a
// quantized model whose cache and calibration use the group, and the checkpoint: round trip, a group that does not
// divide head_dim refused by name, checkpoints without the field loading with one group per head.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include "backend/cpu/atom_model_loader.h"
#include "backend/cpu/llama_model.h"
#include "backend/cpu/quant_kv_cache.h"
#include "backend/cpu/quantizer_ops.h"
#include "common/error.h"
#include "format/atom_checkpoint.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "quant/quantizer.h"
#include "test_quantizer_tiny_model.h"

namespace atom::quant {
namespace {

namespace fs = std::filesystem;

using test::error_of;

TEST(KvGroupRecipe, RecordedOnlyWhenSetAndReadBack) {
  QuantRecipe r = test::tiny_recipe("atom-w4a4");
  EXPECT_FALSE(r.to_json().contains("kv_group_size"));  // one group per head: older readers keep reading it
  EXPECT_EQ(QuantRecipe::from_json(r.to_json(), "test").kv_group_size, 0);
  EXPECT_EQ(r.kv_group_for(64), 64);
  r.kv_group_size = 32;
  const nlohmann::json j = r.to_json();
  ASSERT_TRUE(j.contains("kv_group_size"));
  EXPECT_EQ(j["kv_group_size"], 32);
  const QuantRecipe back = QuantRecipe::from_json(j, "test");
  EXPECT_EQ(back.kv_group_size, 32);
  EXPECT_EQ(back.to_json(), j);
  EXPECT_NE(r.describe().find("KV4 g32"), std::string::npos) << r.describe();
  EXPECT_EQ(r.kv_group_for(64), 32);
  EXPECT_EQ(r.kv_group_for(128), 32);
  nlohmann::json bad = j;
  bad["kv_group_size"] = "32";
  EXPECT_NE(error_of([&] { QuantRecipe::from_json(bad, "f.json"); }).find("'kv_group_size'"), std::string::npos);
}

TEST(KvGroupRecipe, RefusesGroupsByName) {
  QuantRecipe r = test::tiny_recipe("atom-w4a4");
  for (std::int64_t bad : {24, -16, 8}) {
    r.kv_group_size = bad;
    const std::string e = error_of([&] { r.validate(); });
    EXPECT_NE(e.find("kv_group_size " + std::to_string(bad)), std::string::npos) << e;
  }
  r.kv_group_size = 32;
  r.kv_bits = 16;  // nothing to group
  EXPECT_NE(error_of([&] { r.validate(); }).find("kv_group_size 32"), std::string::npos);
  r.kv_bits = 4;
  r.kv_group_size = 48;  // a multiple of 16, but not of head_dim 64's divisors
  EXPECT_NO_THROW(r.validate());
  const std::string e = error_of([&] { r.kv_group_for(64); });
  EXPECT_NE(e.find("kv_group_size 48 does not divide head_dim 64"), std::string::npos) << e;
}

// The tiny model with heads of 32 channels, so that groups of 16 split every head in two.
ModelConfig grouped_config() {
  ModelConfig c = test::tiny_config();
  c.head_dim = 32;
  return c;
}

QuantRecipe grouped_recipe(std::int64_t kv_group_size) {
  QuantRecipe r = test::tiny_recipe("atom-w4a4");
  r.kv_center_keys = true;
  r.kv_group_size = kv_group_size;
  return r;
}

QuantizedModel quantize_grouped(std::int64_t kv_group_size) {
  const ModelConfig c = grouped_config();
  QuantizeOptions o;
  o.show_progress = false;
  return quantize_model(model_source(test::tiny_weights(c, 5)), test::tiny_tokens(500, 0, 96, 8),
                        grouped_recipe(kv_group_size), o);
}

std::vector<float> logits(const cpu::LlamaModel& m) {
  const std::vector<std::int32_t> tokens = test::tiny_tokens(40, 0, m.vocab_size(), 31);
  cpu::KvCache cache = m.new_cache();
  return m.forward(tokens, cache, true);
}

// The quantizer's calibration forward stores K/V as the runtime will: o_proj's input (the attention output through
// the quantized cache) differs with the group, and so do the o_proj weights GPTQ fits to it.
TEST(KvGroupModel, CalibrationAndTheBuiltModelUseTheGroup) {
  const QuantizedModel per_head = quantize_grouped(0), grouped = quantize_grouped(16);
  // Layer 0's q_proj comes before any cache (later layers' inputs went through one).
  EXPECT_EQ(grouped.layers[0].q_proj.weights.packed, per_head.layers[0].q_proj.weights.packed);
  bool o_proj_differs = false;
  for (std::size_t li = 0; li < grouped.layers.size(); ++li) {
    o_proj_differs = o_proj_differs || grouped.layers[li].o_proj.weights.packed != per_head.layers[li].o_proj.weights.packed;
  }
  EXPECT_TRUE(o_proj_differs) << "the calibration's KV store ignored kv_group_size";
  const auto model = build_cpu_model(grouped, Execution::kInteger);
  EXPECT_EQ(model->kv_group_size(), 16);
  const cpu::KvCache cache = model->new_cache();
  const auto* store = dynamic_cast<const cpu::QuantKvRowStore*>(&cache.keys(0));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->group_size(), 16);
  // A group that does not divide head_dim 32 fails before any work, naming the field.
  QuantizeOptions o;
  o.show_progress = false;
  const ModelConfig c = grouped_config();
  const std::string e = error_of([&] {
    quantize_model(model_source(test::tiny_weights(c, 5)), test::tiny_tokens(500, 0, 96, 8), grouped_recipe(48), o);
  });
  EXPECT_NE(e.find("kv_group_size 48 does not divide head_dim 32"), std::string::npos) << e;
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / fmt::format("atom_kv_groups_test_{}", ::getpid());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// Rewrites the recipe in model.safetensors' metadata.
void edit_recipe(const fs::path& dir, const std::function<void(nlohmann::json&)>& edit) {
  std::vector<std::vector<std::uint8_t>> bytes;
  std::vector<SafetensorsWriteTensor> tensors;
  std::map<std::string, std::string> metadata;
  {
    const SafetensorsFile f((dir / "model.safetensors").string());
    bytes.reserve(f.tensors().size());
    for (const TensorView& t : f.tensors()) {
      bytes.emplace_back(t.data, t.data + t.nbytes);
      tensors.push_back({t.name, t.dtype, t.shape, bytes.back()});
    }
    metadata = f.metadata();
  }
  nlohmann::json meta = nlohmann::json::parse(metadata.at(kAtomMetadataKey));
  edit(meta["recipe"]);
  metadata[kAtomMetadataKey] = meta.dump();
  write_safetensors((dir / "model.safetensors").string(), tensors, metadata, true);
}

TEST(KvGroupCheckpoint, RoundTripsAndRefusesAGroupThatDoesNotDivideHeadDim) {
  const QuantizedModel m = quantize_grouped(16);
  TempDir tmp;
  const fs::path dir = tmp.path / "model";
  save_atom_checkpoint(dir.string(), m, {});
  const auto built = build_cpu_model(m, Execution::kInteger);
  cpu::use_lm_head_precision(*built, cpu::lm_head_precision_from_env());
  {
    const Checkpoint ckpt = open_checkpoint(dir.string());
    EXPECT_EQ(load_atom_checkpoint(ckpt, true).recipe.kv_group_size, 16);
    const auto loaded = cpu::load_cpu_model(ckpt);
    EXPECT_EQ(loaded->kv_group_size(), 16);
    EXPECT_EQ(logits(*loaded), logits(*built));
  }
  const fs::path copy = tmp.path / "edited";
  const auto reset = [&] {
    fs::remove_all(copy);
    fs::copy(dir, copy);
  };
  reset();
  edit_recipe(copy, [](nlohmann::json& recipe) { recipe["kv_group_size"] = 48; });
  const std::string e = error_of([&] { cpu::load_cpu_model(open_checkpoint(copy.string())); });
  EXPECT_NE(e.find("kv_group_size 48 does not divide head_dim 32"), std::string::npos) << e;
  // Without the field (a checkpoint from before groups existed): one group per head, other logits.
  reset();
  edit_recipe(copy, [](nlohmann::json& recipe) { recipe.erase("kv_group_size"); });
  const auto per_head = cpu::load_cpu_model(open_checkpoint(copy.string()));
  EXPECT_EQ(per_head->kv_group_size(), 0);
  EXPECT_NE(logits(*per_head), logits(*built));
}

}  // namespace
}  // namespace atom::quant
