// Rotations: the rotated fp model (norms folded, R1, R2, the online Q/K and down_proj Hadamards) computes the
// fp model's logits to fp32 rounding on every tiny test model and on SmolLM2; rotated recipes quantize, run
// on the integer kernels as on fake quantization, and survive a checkpoint round trip that records their
// online transforms (and is refused by a runtime that does not apply them).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "backend/cpu/atom_model_loader.h"
#include "backend/cpu/llama_model.h"
#include "backend/cpu/quantizer_ops.h"
#include "common/error.h"
#include "format/atom_checkpoint.h"
#include "io/checkpoint.h"
#include "model/weights.h"
#include "quant/rotation.h"
#include "test_quantizer_tiny_model.h"

namespace atom::quant {
namespace {

namespace fs = std::filesystem;

QuantRecipe rotations(bool fold, bool r1, bool r2, bool qk, bool r4) {
  QuantRecipe r;
  r.fold_norms = fold;
  r.rotate_residual = r1;
  r.rotate_values = r2;
  r.qk_hadamard = qk;
  r.down_hadamard = r4;
  r.rotation_seed = 11;
  return r;
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double err = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    err += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(a[i]) * a[i];
  }
  return std::sqrt(err / norm);
}

std::vector<float> all_logits(const cpu::LlamaModel& m, const std::vector<std::int32_t>& tokens) {
  cpu::KvCache cache = m.new_cache();
  return m.forward(tokens, cache, true);
}

// fp logits vs the rotated fp model's; two calls of 12 + 12 tokens exercise the cache's rotated keys.
double rotated_error(const Checkpoint& ckpt, const QuantRecipe& recipe, int max_layers = 0) {
  LlamaWeights weights = load_llama_weights(ckpt.config, *ckpt.tensors);
  if (max_layers > 0 && weights.config.num_layers > max_layers) {
    weights.layers.resize(static_cast<std::size_t>(max_layers));
    weights.config.num_layers = max_layers;
  }
  const cpu::LlamaModel fp(weights);  // a copy
  cpu::LlamaModel rotated(materialize(rotate_model_source(model_source(std::move(weights)), recipe)));
  apply_online_transforms(rotated, recipe);
  const std::vector<std::int32_t> tokens = test::tiny_tokens(24, 0, ckpt.config.vocab_size, 4);
  const std::vector<std::int32_t> first(tokens.begin(), tokens.begin() + 12),
      second(tokens.begin() + 12, tokens.end());
  std::vector<float> a, b;
  for (const cpu::LlamaModel* m : {&fp, static_cast<const cpu::LlamaModel*>(&rotated)}) {
    cpu::KvCache cache = m->new_cache();
    std::vector<float> out = m->forward(first, cache, true);
    const std::vector<float> more = m->forward(second, cache, true);
    out.insert(out.end(), more.begin(), more.end());
    (m == &fp ? a : b) = std::move(out);
  }
  return relative_error(a, b);
}

class RotatedTinyModel : public ::testing::TestWithParam<const char*> {};

TEST_P(RotatedTinyModel, ReproducesFpLogits) {
  const Checkpoint ckpt = open_checkpoint(std::string(ATOM_TEST_DATA_DIR) + "/model/" + GetParam());
  EXPECT_LT(rotated_error(ckpt, rotations(true, true, true, true, true)), 1e-5) << "all rotations";
  // Each one alone (R1 needs the folded norms).
  EXPECT_LT(rotated_error(ckpt, rotations(true, false, false, false, false)), 1e-5) << "norms folded";
  EXPECT_LT(rotated_error(ckpt, rotations(true, true, false, false, false)), 1e-5) << "R1";
  EXPECT_LT(rotated_error(ckpt, rotations(false, false, true, false, false)), 1e-5) << "R2";
  EXPECT_LT(rotated_error(ckpt, rotations(false, false, false, true, false)), 1e-5) << "Q/K";
  EXPECT_LT(rotated_error(ckpt, rotations(false, false, false, false, true)), 1e-5) << "R4";
}

INSTANTIATE_TEST_SUITE_P(Models, RotatedTinyModel,
                         ::testing::Values("tiny_llama_gqa", "tiny_llama_tied", "tiny_llama3_rope",
                                           "tiny_mistral", "tiny_qwen2"));

TEST(Rotation, SmolLM2ReproducesFpLogits) {
  const std::string path = std::string(ATOM_SOURCE_DIR) + "/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << "no " << path << " (bash scripts/fetch_model.sh)";
  const Checkpoint ckpt = open_checkpoint(path);
  // Its first 6 of 30 layers, to keep the test to seconds (all 30 layers pass the same bound).
  EXPECT_LT(rotated_error(ckpt, rotations(true, true, true, true, true), 6), 1e-5);
}

TEST(Rotation, RecipeRecordsRotations) {
  QuantRecipe r = preset_recipe("atom-rot-w4a4");
  r.rotation_seed = 77;
  const nlohmann::json j = r.to_json();
  ASSERT_TRUE(j.contains("rotation"));
  const QuantRecipe back = QuantRecipe::from_json(j, "test");
  EXPECT_EQ(back.to_json(), j);
  EXPECT_TRUE(back.fold_norms && back.rotate_residual && back.rotate_values && back.qk_hadamard &&
              back.down_hadamard);
  EXPECT_EQ(back.rotation_seed, 77u);
  // Unrotated recipes carry no rotation field (older readers keep reading them) and read back as none.
  const nlohmann::json plain = preset_recipe("atom-w4a4").to_json();
  EXPECT_FALSE(plain.contains("rotation"));
  EXPECT_FALSE(QuantRecipe::from_json(plain, "test").has_rotation());
  nlohmann::json bad = j;
  bad["rotation"]["spin"] = true;
  try {
    QuantRecipe::from_json(bad, "file.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'spin'"), std::string::npos) << e.what();
  }
  QuantRecipe r1_only;
  r1_only.rotate_residual = true;
  EXPECT_THROW(r1_only.validate(), Error);  // R1 needs the folded norms
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / fmt::format("atom_rotation_test_{}", ::getpid());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

class RotatedPreset : public ::testing::TestWithParam<const char*> {};

// A rotated recipe on the tiny random model: the integer kernels and fake quantization compute the same model
// (up to fp32 sums), the quantized model stays near the fp one, and the checkpoint round trip is exact.
TEST_P(RotatedPreset, QuantizesRunsAndRoundTrips) {
  const ModelConfig c = test::tiny_config(true);
  QuantizeOptions o;
  o.show_progress = false;
  // "PRESET --down-hadamard": the preset plus the online down Hadamard alone (no rotated residual stream).
  const std::string param = GetParam(), preset = param.substr(0, param.find(' '));
  QuantRecipe recipe = test::tiny_recipe(preset);
  if (param.find("--down-hadamard") != std::string::npos) recipe.down_hadamard = true;
  const QuantizedModel m = quantize_model(model_source(test::tiny_weights(c, 5)),
                                          test::tiny_tokens(500, 0, c.vocab_size, 8), recipe, o);
  EXPECT_FALSE(m.config.tie_word_embeddings);
  const std::vector<std::int32_t> tokens = test::tiny_tokens(40, 0, c.vocab_size, 31);
  const auto integer = build_cpu_model(m, Execution::kInteger);
  const auto fake = build_cpu_model(m, Execution::kFakeQuant);
  const cpu::LlamaModel fp(test::tiny_weights(c, 5));
  const std::vector<float> li = all_logits(*integer, tokens), lf = all_logits(*fake, tokens),
                           lp = all_logits(fp, tokens);
  EXPECT_LT(relative_error(lf, li), 0.05);
  // Against the same recipe without rotations, on a model with large norm channels: rotations help.
  QuantRecipe plain = recipe;
  plain.fold_norms = plain.rotate_residual = plain.rotate_values = plain.qk_hadamard = plain.down_hadamard =
      false;
  const QuantizedModel unrotated = quantize_model(model_source(test::tiny_weights(c, 5)),
                                                  test::tiny_tokens(500, 0, c.vocab_size, 8), plain, o);
  const double rotated_err = relative_error(lp, li),
               plain_err =
                   relative_error(lp, all_logits(*build_cpu_model(unrotated, Execution::kInteger), tokens));
  if (recipe.outliers == 0) {
    EXPECT_LT(rotated_err, plain_err);  // rotation is this recipe's only defence against those channels
  } else {
    EXPECT_LT(rotated_err, 1.0);  // outlier channels already isolate them; rotation spreads them out
  }

  TempDir tmp;
  const fs::path dir = tmp.path / "model";
  save_atom_checkpoint(dir.string(), m, {});
  const Checkpoint ckpt = open_checkpoint(dir.string());
  EXPECT_FALSE(ckpt.config.tie_word_embeddings);
  const QuantizedModel back = load_atom_checkpoint(ckpt, true);
  EXPECT_EQ(back.recipe.to_json(), m.recipe.to_json());
  const auto integer_loaded_head = build_cpu_model(m, Execution::kInteger);
  cpu::use_lm_head_precision(*integer_loaded_head,
                             cpu::lm_head_precision_from_env());  // as load_cpu_model does
  EXPECT_EQ(all_logits(*cpu::load_cpu_model(ckpt), tokens), all_logits(*integer_loaded_head, tokens));
  try {
    load_atom_checkpoint(ckpt);  // a runtime without the online transforms
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("online Hadamard"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, RotatedPreset, ::testing::Values("quarot-w4a4", "atom-rot-w4a4", "quarot-w8a8",
                                                            "atom-w4a4 --down-hadamard"));

}  // namespace
}  // namespace atom::quant
