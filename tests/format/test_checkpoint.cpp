// Atom checkpoint: write, read back through the HF tensor store, config round trip, errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <numeric>
#include <random>

#include "common/error.h"
#include "format/checkpoint.h"
#include "io/hf_config.h"
#include "io/hf_store.h"
#include "io/json_file.h"
#include "io/safetensors.h"

namespace atom::quant {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / fmt::format("atom_quant_ckpt_{}_{}", ::getpid(), counter()++);
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static int& counter() {
    static int c = 0;
    return c;
  }
};

ModelConfig tiny_config() {
  ModelConfig c;
  c.architecture = "llama";
  c.vocab_size = 32;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 1;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  return c;
}

QuantizedLinearWeights random_linear(std::int64_t n, std::int64_t k, std::int64_t n_out, std::int64_t group,
                                     NumberFormat format, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> w(static_cast<std::size_t>(n * k));
  for (auto& v : w) v = dist(rng);
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  return quantize_weights_rtn(w, n, perm, n_out, group, format, 0.9f);
}

void expect_same(const QuantizedLinearWeights& a, const QuantizedLinearWeights& b) {
  EXPECT_EQ(a.n, b.n);
  EXPECT_EQ(a.k_normal, b.k_normal);
  EXPECT_EQ(a.n_outliers, b.n_outliers);
  EXPECT_EQ(a.group, b.group);
  EXPECT_EQ(a.format, b.format);
  EXPECT_EQ(a.packed, b.packed);
  EXPECT_EQ(a.scales, b.scales);
  EXPECT_EQ(a.outliers, b.outliers);
  EXPECT_EQ(a.outlier_scales, b.outlier_scales);
  EXPECT_EQ(a.perm, b.perm);
}

TEST(AtomCheckpoint, WritesAndReadsBack) {
  TempDir dir;
  AtomQuantConfig qc;
  qc.group_size = 32;
  qc.calibration_samples = 128;
  qc.calibration_seq_len = 2048;
  qc.calibration_data = "kjv/train.txt";
  std::map<std::string, QuantizedLinearWeights> linears;
  linears["model.layers.0.self_attn.q_proj"] = random_linear(64, 64, 32, 32, NumberFormat::kInt4, 1);
  linears["model.layers.0.mlp.down_proj"] = random_linear(64, 128, 0, 32, NumberFormat::kInt4, 2);
  std::vector<DenseTensor> dense = {{"model.norm.weight", {64}, std::vector<float>(64, 1.5f), DType::F32},
                                    {"model.embed_tokens.weight", {32, 64}, std::vector<float>(32 * 64, 0.25f), DType::BF16}};
  write_atom_checkpoint(dir.path.string(), tiny_config(), {}, qc, linears, dense);

  const auto config_json = read_json_file((dir.path / "config.json").string());
  ASSERT_TRUE(has_atom_quant_config(config_json));
  const AtomQuantConfig back = read_atom_quant_config(config_json, "config.json");
  EXPECT_EQ(back.to_json(), qc.to_json());
  EXPECT_EQ(config_json["quantization_config"]["act_clip"].get<double>(), 0.9);  // written as 0.9, not 0.89999997
  EXPECT_EQ(read_hf_config((dir.path / "config.json").string()).hidden_size, 64);

  const auto store = open_hf_tensor_store(dir.path.string());
  for (const auto& [name, q] : linears) {
    ASSERT_TRUE(has_quantized_linear(*store, name));
    expect_same(load_quantized_linear(*store, name, back), q);
  }
  EXPECT_FALSE(has_quantized_linear(*store, "model.layers.0.mlp.up_proj"));
  EXPECT_EQ(store->load_f32("model.norm.weight", {64}), std::vector<float>(64, 1.5f));
  EXPECT_EQ(store->load_f32("model.embed_tokens.weight", {32, 64}), std::vector<float>(32 * 64, 0.25f));
  EXPECT_EQ(store->get("model.layers.0.self_attn.q_proj.qweight").shape, (std::vector<std::int64_t>{64, 16}));
  EXPECT_EQ(store->get("model.layers.0.self_attn.q_proj.scales").dtype, DType::F16);

  // Existing files are not overwritten unless asked.
  EXPECT_THROW(write_atom_checkpoint(dir.path.string(), tiny_config(), {}, qc, linears, dense), Error);
  EXPECT_NO_THROW(write_atom_checkpoint(dir.path.string(), tiny_config(), {}, qc, linears, dense, true));
}

TEST(AtomCheckpoint, PerChannelInt8Baseline) {
  TempDir dir;
  AtomQuantConfig qc;
  qc.method = "w8a8-smoothquant";
  qc.format = NumberFormat::kInt8;
  qc.group_size = 0;
  qc.weight_algorithm = "rtn";
  qc.smoothquant_alpha = 0.5f;
  qc.act_clip = qc.weight_clip = 1.0f;
  std::map<std::string, QuantizedLinearWeights> linears;
  linears["model.layers.0.mlp.up_proj"] = random_linear(128, 64, 0, 64, NumberFormat::kInt8, 3);
  write_atom_checkpoint(dir.path.string(), tiny_config(), {}, qc, linears, {});
  const auto store = open_hf_tensor_store(dir.path.string());
  const auto q = load_quantized_linear(*store, "model.layers.0.mlp.up_proj", qc);
  expect_same(q, linears["model.layers.0.mlp.up_proj"]);
  EXPECT_EQ(store->get("model.layers.0.mlp.up_proj.qweight").dtype, DType::I8);
}

TEST(AtomCheckpoint, RejectsInconsistentContent) {
  TempDir dir;
  AtomQuantConfig qc;
  qc.group_size = 32;
  std::map<std::string, QuantizedLinearWeights> linears;
  linears["a"] = random_linear(8, 64, 0, 64, NumberFormat::kInt4, 4);  // group 64 != 32
  try {
    write_atom_checkpoint(dir.path.string(), tiny_config(), {}, qc, linears, {});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a: group size 64"), std::string::npos) << e.what();
  }
  // A scales tensor of the wrong dtype.
  fs::create_directories(dir.path);
  const auto good = random_linear(8, 64, 0, 32, NumberFormat::kInt4, 5);
  std::vector<float> bad_scales(8 * 2, 1.0f);
  const SafetensorsWriteTensor tensors[] = {
      {"l.qweight", DType::U8, {8, 32}, {good.packed.data(), good.packed.size()}},
      {"l.scales", DType::F32, {8, 2}, {reinterpret_cast<const std::uint8_t*>(bad_scales.data()), 64}},
      {"l.perm", DType::I32, {64}, {reinterpret_cast<const std::uint8_t*>(good.perm.data()), 256}}};
  write_safetensors((dir.path / "model.safetensors").string(), tensors);
  const auto store = open_hf_tensor_store(dir.path.string());
  try {
    load_quantized_linear(*store, "l", qc);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("l.scales"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("expected F16 8x2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_quantized_linear(*store, "missing", qc), Error);
}

TEST(AtomQuantConfig, ValidatesFields) {
  const auto good = AtomQuantConfig{}.to_json();
  EXPECT_NO_THROW(AtomQuantConfig::from_json(good, "c"));
  auto bad = good;
  bad["method"] = "awq";
  EXPECT_THROW(AtomQuantConfig::from_json(bad, "c"), Error);
  bad = good;
  bad["act_clip"] = 1.5;
  EXPECT_THROW(AtomQuantConfig::from_json(bad, "c"), Error);
  bad = good;
  bad["group_size"] = "128";
  try {
    AtomQuantConfig::from_json(bad, "ckpt/config.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ckpt/config.json: quantization_config field 'group_size'"), std::string::npos)
        << e.what();
  }
  bad = good;
  bad["format"] = "int8";  // the atom method is 4-bit
  EXPECT_THROW(AtomQuantConfig::from_json(bad, "c"), Error);
  bad = good;
  bad["quantized_activations"] = false;
  EXPECT_THROW(AtomQuantConfig::from_json(bad, "c"), Error);
  bad = good;
  bad["atom_version"] = 2;
  EXPECT_THROW(AtomQuantConfig::from_json(bad, "c"), Error);
}

}  // namespace
}  // namespace atom::quant
