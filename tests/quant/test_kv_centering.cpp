// KV centering: the recipe field, the centering vectors measured on the fp model (layer 0 against an fp64
// reference; every layer: the centered model appends rows of mean zero over the calibration windows), the ones the
// quantizer computes (the mean of what its own quantized model appends there), and the checkpoint: round trip,
// missing or misshapen vectors refused by name, checkpoints without centering loading as before.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>

#include "backend/cpu/atom_model_loader.h"
#include "backend/cpu/hadamard.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/llama_model.h"
#include "backend/cpu/quant_kv_cache.h"
#include "backend/cpu/quantizer_ops.h"
#include "common/error.h"
#include "format/atom_checkpoint.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "quant/calibration.h"
#include "quant/kv_centering.h"
#include "quant/quantizer.h"
#include "quant/rotation.h"
#include "test_quantizer_tiny_model.h"

namespace atom::quant {
namespace {

namespace fs = std::filesystem;

using test::error_of;

QuantRecipe centered_recipe(bool keys, bool values, bool qk_hadamard) {
  QuantRecipe r = test::tiny_recipe("atom-w4a4");
  r.kv_center_keys = keys;
  r.kv_center_values = values;
  r.qk_hadamard = qk_hadamard;
  return r;
}

TEST(KvCenteringRecipe, RecordedOnlyWhenOnAndReadBack) {
  const QuantRecipe r = centered_recipe(true, false, false);
  const nlohmann::json j = r.to_json();
  ASSERT_TRUE(j.contains("kv_centering"));
  const QuantRecipe back = QuantRecipe::from_json(j, "test");
  EXPECT_TRUE(back.kv_center_keys);
  EXPECT_FALSE(back.kv_center_values);
  EXPECT_EQ(back.to_json(), j);
  EXPECT_NE(r.describe().find("keys centered"), std::string::npos) << r.describe();
  // Recipes without centering carry no field (older readers keep reading them); absent reads back as off.
  const nlohmann::json plain = preset_recipe("atom-w4a4").to_json();
  EXPECT_FALSE(plain.contains("kv_centering"));
  EXPECT_FALSE(QuantRecipe::from_json(plain, "test").has_kv_centering());
  nlohmann::json bad = j;
  bad["kv_centering"]["queries"] = true;
  EXPECT_NE(error_of([&] { QuantRecipe::from_json(bad, "f.json"); }).find("'queries'"), std::string::npos);
  bad = j;
  bad["kv_centering"]["keys"] = 1;
  EXPECT_NE(error_of([&] { QuantRecipe::from_json(bad, "f.json"); }).find("'keys'"), std::string::npos);
  QuantRecipe fp_kv = r;
  fp_kv.kv_bits = 16;
  EXPECT_NE(error_of([&] { fp_kv.validate(); }).find("kv_bits 16"), std::string::npos);
  EXPECT_TRUE(r.needs_calibration());
}

// fp64 layer-0 keys and values of one window: RoPE (rotate-half) of k_proj(RMSNorm(embedding)), then the Q/K
// transform when asked.
void layer0_reference(const ModelConfig& c, const LlamaWeights& w, std::span<const std::int32_t> window, bool hadamard,
                      std::vector<double>& k_sum, std::vector<double>& v_sum) {
  const int hidden = c.hidden_size, d = c.head_dim, kv_dim = c.num_kv_heads * d;
  const std::vector<float> inv_freq = cpu::rope_inv_freq(c);
  const LayerWeights& l = w.layers[0];
  for (std::size_t p = 0; p < window.size(); ++p) {
    const float* e = w.embed_tokens.data() + std::int64_t{window[p]} * hidden;
    double ss = 0;
    for (int i = 0; i < hidden; ++i) ss += double(e[i]) * e[i];
    const double inv_rms = 1.0 / std::sqrt(ss / hidden + double(c.rms_norm_eps));
    std::vector<double> x(static_cast<std::size_t>(hidden)), k(static_cast<std::size_t>(kv_dim)), v(k.size());
    for (int i = 0; i < hidden; ++i) x[i] = e[i] * inv_rms * l.input_norm[i];
    for (int o = 0; o < kv_dim; ++o) {
      double a = l.k_bias.empty() ? 0.0 : l.k_bias[o], b = l.v_bias.empty() ? 0.0 : l.v_bias[o];
      for (int i = 0; i < hidden; ++i) {
        a += double(l.k_proj[std::size_t(o) * hidden + i]) * x[i];
        b += double(l.v_proj[std::size_t(o) * hidden + i]) * x[i];
      }
      k[o] = a;
      v[o] = b;
    }
    for (int h = 0; h < c.num_kv_heads; ++h) {
      double* head = k.data() + h * d;
      for (int i = 0; i < d / 2; ++i) {
        const double angle = double(static_cast<float>(p) * inv_freq[i]);
        const double a = head[i], b = head[i + d / 2];
        head[i] = a * std::cos(angle) - b * std::sin(angle);
        head[i + d / 2] = b * std::cos(angle) + a * std::sin(angle);
      }
      if (hadamard) HadamardTransform(d).apply(head, 1);
    }
    for (int o = 0; o < kv_dim; ++o) k_sum[o] += k[o], v_sum[o] += v[o];
  }
}

double rms(const std::vector<float>& x) {
  double s = 0;
  for (float v : x) s += double(v) * v;
  return std::sqrt(s / double(x.size()));
}

class MeasuredCenters : public ::testing::TestWithParam<bool> {};  // with the Q/K Hadamard or not

TEST_P(MeasuredCenters, AreTheMeanRowsOfTheCalibrationWindows) {
  const bool hadamard = GetParam();
  const ModelConfig c = test::tiny_config(/*qwen2=*/true);  // k/v biases: a clear mean
  const LlamaWeights w = test::tiny_weights(c, 5);
  const std::vector<std::int32_t> tokens = test::tiny_tokens(500, 0, c.vocab_size, 8);
  const QuantRecipe recipe = centered_recipe(true, true, hadamard);
  cpu::LlamaModel model(w);
  if (hadamard) model.set_qk_transform(head_transform(qk_transform(c, recipe)));
  const KvCenters centers = measure_kv_centers(model, tokens, recipe);
  ASSERT_EQ(centers.keys.size(), 2u);
  const std::size_t kv_dim = std::size_t(c.num_kv_heads) * c.head_dim;
  ASSERT_EQ(centers.keys[1].size(), kv_dim);
  ASSERT_EQ(centers.values[1].size(), kv_dim);

  // Layer 0 against fp64 over the recipe's windows.
  const auto starts = calibration_window_starts(500, recipe.calib_windows, recipe.calib_len, recipe.calib_seed);
  std::vector<double> k_sum(kv_dim, 0.0), v_sum(kv_dim, 0.0);
  for (std::int64_t s : starts) {
    layer0_reference(c, w, std::span<const std::int32_t>(tokens).subspan(std::size_t(s), std::size_t(recipe.calib_len)),
                     hadamard, k_sum, v_sum);
  }
  const double n = double(starts.size() * std::size_t(recipe.calib_len));
  const double k_scale = rms(centers.keys[0]), v_scale = rms(centers.values[0]);
  ASSERT_GT(k_scale, 0.05);
  for (std::size_t i = 0; i < kv_dim; ++i) {
    EXPECT_NEAR(centers.keys[0][i], k_sum[i] / n, 1e-4 * k_scale + 1e-6) << "key channel " << i;
    EXPECT_NEAR(centers.values[0][i], v_sum[i] / n, 1e-4 * v_scale + 1e-6) << "value channel " << i;
  }

  // Every layer: the centered model appends rows whose mean over the same windows is zero (fp32 rounding), while
  // the vectors themselves are far from zero.
  set_kv_centers(model, centers);
  RowMeanAccumulator k_mean[2] = {RowMeanAccumulator(std::int64_t(kv_dim)), RowMeanAccumulator(std::int64_t(kv_dim))};
  RowMeanAccumulator v_mean[2] = {RowMeanAccumulator(std::int64_t(kv_dim)), RowMeanAccumulator(std::int64_t(kv_dim))};
  std::vector<float> rows(std::size_t(recipe.calib_len) * kv_dim);
  for (std::int64_t s : starts) {
    cpu::KvCache cache = model.new_cache(cpu::make_f32_kv_row_store);
    model.forward(std::span<const std::int32_t>(tokens).subspan(std::size_t(s), std::size_t(recipe.calib_len)), cache);
    for (int li = 0; li < 2; ++li) {
      cache.keys(li).read(0, recipe.calib_len, rows.data());
      k_mean[li].add(rows.data(), recipe.calib_len);
      cache.values(li).read(0, recipe.calib_len, rows.data());
      v_mean[li].add(rows.data(), recipe.calib_len);
    }
  }
  for (int li = 0; li < 2; ++li) {
    const double ks = rms(centers.keys[std::size_t(li)]), vs = rms(centers.values[std::size_t(li)]);
    EXPECT_GT(ks, 0.05) << "layer " << li;
    EXPECT_LT(rms(k_mean[li].mean()), 1e-5 * ks + 1e-7) << "layer " << li;
    EXPECT_LT(rms(v_mean[li].mean()), 1e-5 * vs + 1e-7) << "layer " << li;
  }
  EXPECT_NE(error_of([&] { measure_kv_centers(model, tokens, recipe); }).find("centered already"),
            std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(QkHadamard, MeasuredCenters, ::testing::Values(false, true));

// A quantized KV store that also sums the rows appended to it.
class RecordingStore final : public cpu::KvRowStore {
 public:
  RecordingStore(std::unique_ptr<cpu::KvRowStore> inner) : inner_(std::move(inner)), sums_(inner_->row_width()) {}
  cpu::KvDType dtype() const override { return inner_->dtype(); }
  std::int64_t row_width() const override { return inner_->row_width(); }
  std::int64_t rows() const override { return inner_->rows(); }
  void append(const float* rows, std::int64_t n) override {
    sums_.add(rows, n);
    inner_->append(rows, n);
  }
  void read(std::int64_t b, std::int64_t e, float* out) const override { inner_->read(b, e, out); }
  const float* f32_rows() const override { return inner_->f32_rows(); }
  bool quantized_rows(cpu::QuantKvRows& view) const override { return inner_->quantized_rows(view); }
  void truncate(std::int64_t rows) override { inner_->truncate(rows); }
  std::size_t bytes() const override { return inner_->bytes(); }
  const RowMeanAccumulator& sums() const { return sums_; }

 private:
  std::unique_ptr<cpu::KvRowStore> inner_;
  RowMeanAccumulator sums_;
};

class QuantizerCenters : public ::testing::TestWithParam<const char*> {};

// The quantizer's vectors are the mean key / value rows its quantized model (fake quantization, INT4 cache)
// computes on the calibration windows: that model, centered, appends rows of mean ~0 there.
TEST_P(QuantizerCenters, AreTheMeanRowsOfTheQuantizedModel) {
  const ModelConfig c = test::tiny_config(/*qwen2=*/true);
  QuantRecipe recipe = test::tiny_recipe(GetParam());
  recipe.kv_bits = 4;
  recipe.kv_center_keys = recipe.kv_center_values = true;
  recipe.qk_hadamard = true;
  QuantizeOptions o;
  o.show_progress = false;
  const std::vector<std::int32_t> tokens = test::tiny_tokens(500, 0, c.vocab_size, 8);
  const QuantizedModel qm = quantize_model(model_source(test::tiny_weights(c, 5)), tokens, recipe, o);
  const auto model = build_cpu_model(qm, Execution::kFakeQuant);
  const std::int64_t kv_dim = std::int64_t{c.num_kv_heads} * c.head_dim;
  const auto starts = calibration_window_starts(500, recipe.calib_windows, recipe.calib_len, recipe.calib_seed);
  std::vector<RowMeanAccumulator> k_mean(2, RowMeanAccumulator(kv_dim)), v_mean = k_mean;
  for (std::int64_t s : starts) {
    cpu::KvCache cache = model->new_cache([](std::int64_t width, std::int64_t head_dim) {
      return std::make_unique<RecordingStore>(cpu::make_u4_kv_row_store(width, head_dim));
    });
    model->forward(std::span<const std::int32_t>(tokens).subspan(std::size_t(s), std::size_t(recipe.calib_len)), cache);
    for (int li = 0; li < 2; ++li) {
      const auto& ks = dynamic_cast<const RecordingStore&>(cache.keys(li)).sums();
      const auto& vs = dynamic_cast<const RecordingStore&>(cache.values(li)).sums();
      std::vector<float> km = ks.mean(), vm = vs.mean();
      k_mean[std::size_t(li)].add(km.data(), 1);  // windows have equal lengths: mean of means
      v_mean[std::size_t(li)].add(vm.data(), 1);
    }
  }
  for (int li = 0; li < 2; ++li) {
    const QuantizedLayer& l = qm.layers[std::size_t(li)];
    ASSERT_EQ(l.key_center.size(), std::size_t(kv_dim));
    ASSERT_EQ(l.value_center.size(), std::size_t(kv_dim));
    const double ks = rms(l.key_center), vs = rms(l.value_center);
    EXPECT_GT(ks, 0.05);
    EXPECT_LT(rms(k_mean[std::size_t(li)].mean()), 1e-3 * ks) << "layer " << li;
    EXPECT_LT(rms(v_mean[std::size_t(li)].mean()), 1e-3 * vs) << "layer " << li;
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, QuantizerCenters, ::testing::Values("atom-w4a4", "w4a16"));

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / fmt::format("atom_kv_centering_test_{}", ::getpid());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::vector<float> logits(const cpu::LlamaModel& m) {
  const std::vector<std::int32_t> tokens = test::tiny_tokens(40, 0, m.vocab_size(), 31);
  cpu::KvCache cache = m.new_cache();
  return m.forward(tokens, cache, true);
}

// Rewrites model.safetensors with `edit` applied to its tensors and metadata.
void edit_weights(const fs::path& dir, const std::function<void(std::vector<SafetensorsWriteTensor>&,
                                                                std::map<std::string, std::string>&)>& edit) {
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
  edit(tensors, metadata);
  write_safetensors((dir / "model.safetensors").string(), tensors, metadata, true);
}

TEST(KvCenteringCheckpoint, RoundTripsAndRefusesMissingOrMisshapenVectors) {
  const ModelConfig c = test::tiny_config(/*qwen2=*/true);
  QuantizeOptions o;
  o.show_progress = false;
  const QuantizedModel m = quantize_model(model_source(test::tiny_weights(c, 5)), test::tiny_tokens(500, 0, 96, 8),
                                          centered_recipe(true, false, true), o);
  ASSERT_FALSE(m.layers[1].key_center.empty());
  ASSERT_TRUE(m.layers[1].value_center.empty());
  TempDir tmp;
  const fs::path dir = tmp.path / "model";
  save_atom_checkpoint(dir.string(), m, {});
  {
    const Checkpoint ckpt = open_checkpoint(dir.string());
    EXPECT_TRUE(ckpt.tensors->contains("model.layers.1.self_attn.k_cache_center"));
    EXPECT_FALSE(ckpt.tensors->contains("model.layers.1.self_attn.v_cache_center"));
    const QuantizedModel back = load_atom_checkpoint(ckpt, true);
    EXPECT_EQ(back.recipe.to_json(), m.recipe.to_json());
    for (std::size_t li = 0; li < m.layers.size(); ++li) {
      EXPECT_EQ(back.layers[li].key_center, m.layers[li].key_center);
      EXPECT_TRUE(back.layers[li].value_center.empty());
    }
    const auto loaded = cpu::load_cpu_model(ckpt);
    const auto built = build_cpu_model(m, Execution::kInteger);
    cpu::use_lm_head_precision(*built, cpu::lm_head_precision_from_env());
    EXPECT_EQ(logits(*loaded), logits(*built));
    EXPECT_EQ(loaded->layer(0).key_center, m.layers[0].key_center);
    // The centering changes the numbers a quantized cache holds: without it the model computes other logits.
    QuantizedModel uncentered = m;
    uncentered.recipe.kv_center_keys = false;
    for (QuantizedLayer& l : uncentered.layers) l.key_center.clear();
    const auto plain = build_cpu_model(uncentered, Execution::kInteger);
    cpu::use_lm_head_precision(*plain, cpu::lm_head_precision_from_env());
    EXPECT_NE(logits(*plain), logits(*built));
  }
  const std::string name = "model.layers.1.self_attn.k_cache_center";
  const fs::path copy = tmp.path / "edited";
  const auto reset = [&] {
    fs::remove_all(copy);
    fs::copy(dir, copy);
  };
  const auto load_error = [&] { return error_of([&] { cpu::load_cpu_model(open_checkpoint(copy.string())); }); };
  reset();  // missing
  edit_weights(copy, [&](auto& t, auto&) { std::erase_if(t, [&](const auto& x) { return x.name == name; }); });
  EXPECT_NE(load_error().find(name), std::string::npos) << load_error();
  reset();  // wrong length
  const std::vector<std::uint8_t> short_bytes(4 * 31, 0);
  edit_weights(copy, [&](auto& t, auto&) {
    for (auto& x : t) {
      if (x.name == name) {
        x.shape = {31};
        x.bytes = short_bytes;
      }
    }
  });
  std::string error = load_error();
  EXPECT_NE(error.find(name), std::string::npos) << error;
  EXPECT_NE(error.find("[31]"), std::string::npos) << error;
  EXPECT_NE(error.find("[32]"), std::string::npos) << error;
  reset();  // a vector the recipe does not ask for
  const std::vector<std::uint8_t> value_bytes(4 * 32, 0);
  edit_weights(copy, [&](auto& t, auto&) {
    t.push_back({"model.layers.0.self_attn.v_cache_center", DType::F32, {32}, value_bytes});
  });
  EXPECT_NE(load_error().find("unexpected tensor"), std::string::npos) << load_error();
  // A checkpoint from before centering existed: no field, no tensors. It loads and runs uncentered.
  reset();
  edit_weights(copy, [&](auto& t, std::map<std::string, std::string>& metadata) {
    std::erase_if(t, [](const auto& x) { return x.name.ends_with("_cache_center"); });
    nlohmann::json meta = nlohmann::json::parse(metadata.at(kAtomMetadataKey));
    meta["recipe"].erase("kv_centering");
    metadata[kAtomMetadataKey] = meta.dump();
  });
  const Checkpoint old = open_checkpoint(copy.string());
  const QuantizedModel old_model = load_atom_checkpoint(old, true);
  EXPECT_FALSE(old_model.recipe.has_kv_centering());
  EXPECT_TRUE(old_model.layers[0].key_center.empty());
  QuantizedModel uncentered = m;
  uncentered.recipe.kv_center_keys = false;
  for (QuantizedLayer& l : uncentered.layers) l.key_center.clear();
  const auto plain = build_cpu_model(uncentered, Execution::kInteger);
  cpu::use_lm_head_precision(*plain, cpu::lm_head_precision_from_env());
  EXPECT_EQ(logits(*cpu::load_cpu_model(old)), logits(*plain));
}

}  // namespace
}  // namespace atom::quant
