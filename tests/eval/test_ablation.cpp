// The ablation runner on a tiny random model: every row runs, the FP row is the plain perplexity, the
// quantized rows are scored through the model they describe, calibration never depends on the evaluation
// text.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <tuple>

#include "common/error.h"
#include "eval/ablation.h"
#include "model/weights.h"

namespace atom {
namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.architecture = "llama";
  c.vocab_size = 96;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 256;
  c.tie_word_embeddings = true;
  return c;
}

// Random weights scaled so that the model's predictions are not uniform; channel 7 of every norm is large (an
// activation outlier channel).
LlamaWeights tiny_weights(std::uint64_t seed) {
  const ModelConfig c = tiny_config();
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  const auto vec = [&](std::size_t n, float scale) {
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng) * scale;
    return v;
  };
  const auto norm = [&] {
    std::vector<float> v(static_cast<std::size_t>(c.hidden_size), 1.0f);
    v[7] = 12.0f;
    return v;
  };
  const std::size_t h = c.hidden_size, inter = c.intermediate_size,
                    kv = std::size_t(c.num_kv_heads) * c.head_dim;
  LlamaWeights w;
  w.config = c;
  w.embed_tokens = vec(std::size_t(c.vocab_size) * h, 0.5f);
  for (int i = 0; i < c.num_layers; ++i) {
    LayerWeights l;
    l.input_norm = norm();
    l.q_proj = vec(h * h, 0.125f);
    l.k_proj = vec(kv * h, 0.125f);
    l.v_proj = vec(kv * h, 0.125f);
    l.o_proj = vec(h * h, 0.125f);
    l.post_attention_norm = norm();
    l.gate_proj = vec(inter * h, 0.125f);
    l.up_proj = vec(inter * h, 0.125f);
    l.down_proj = vec(h * inter, 0.09f);
    w.layers.push_back(std::move(l));
  }
  w.final_norm = std::vector<float>(h, 1.0f);
  return w;
}

std::vector<std::int32_t> tokens(std::size_t n, std::int32_t lo, std::int32_t hi, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int32_t> t(n);
  std::int32_t cur = lo;
  for (auto& x : t) x = cur = lo + std::int32_t((cur - lo + 1 + rng() % 5) % std::uint64_t(hi - lo));
  return t;
}

AblationModel tiny_model() {
  AblationModel m;
  m.source = [] { return quant::model_source(tiny_weights(3)); };
  m.fp_model = [] { return std::make_unique<cpu::LlamaModel>(tiny_weights(3)); };
  return m;
}

quant::QuantRecipe tiny_settings() {
  quant::QuantRecipe s;
  s.calib_windows = 4;
  s.calib_len = 40;
  s.calib_seed = 1;
  s.group = 32;
  return s;
}

AblationOptions tiny_options(AblationExecution execution = AblationExecution::kFakeQuant) {
  AblationOptions o;
  o.eval.context = 32;
  o.eval.stride = 32;
  o.execution = execution;
  o.show_progress = false;
  return o;
}

TEST(Ablation, RowsFollowThePaperLadder) {
  const std::vector<AblationRow> rows = default_ablation_rows(tiny_settings(), tiny_config());
  std::vector<std::string> ids;
  for (const AblationRow& r : rows) ids.push_back(r.id);
  EXPECT_EQ(ids, (std::vector<std::string>{"fp",
                                           "w4a4-rtn",
                                           "outliers-fp16",
                                           "outliers-int8",
                                           "group",
                                           "clip",
                                           "gptq",
                                           "kv4",
                                           "atom-w3a3",
                                           "atom-fp4",
                                           "w8a8-smoothquant",
                                           "w4a16-gptq",
                                           "w4a16-rtn",
                                           "w8a16-rtn",
                                           "w4a16-g32-gptq",
                                           "atom-qk",
                                           "quarot-w4a4",
                                           "atom-rot-w4a4",
                                           "quarot-w8a8",
                                           "atom-rot-kvfp",
                                           "kv4-only",
                                           "kv4-qk-only",
                                           "kv4-kc-only",
                                           "kv4-qk-kc-only",
                                           "kv4-qk-kvc-only",
                                           "kv4-qk-r2-kc-only",
                                           "kv4-qk-r2-kc-g32-only",
                                           "kv4-qk-kc-g32-only",
                                           "kv4-qk-kc-g16-only",
                                           "kv8-only",
                                           "kv8-kc-only",
                                           "atom-qk-down",
                                           "atom-qk-down-kc",
                                           "atom-qk-down-kc-g32",
                                           "atom-qk-down-kvc",
                                           "atom-qk-down-r2-kc"}));
  EXPECT_FALSE(rows[0].recipe);
  // The KV-only rows differ only by the Q/K Hadamard; the rotated rows rotate everything.
  EXPECT_TRUE(rows[20].kv_only && rows[21].kv_only);
  EXPECT_FALSE(rows[20].recipe->qk_hadamard);
  EXPECT_TRUE(rows[21].recipe->qk_hadamard);
  EXPECT_EQ(rows[21].recipe->kv_bits, 4);
  EXPECT_TRUE(rows[15].recipe->qk_hadamard && !rows[15].recipe->rotate_residual);
  EXPECT_TRUE(rows[16].recipe->rotate_residual && rows[16].recipe->down_hadamard &&
              rows[16].recipe->group == 0);
  EXPECT_TRUE(rows[17].recipe->rotate_residual && rows[17].recipe->group == 32);
  EXPECT_TRUE(rows[18].recipe->rotate_residual && rows[18].recipe->down_hadamard &&
              rows[18].recipe->weight_format == quant::NumberFormat::kInt8 && rows[18].recipe->kv_bits == 16);
  EXPECT_EQ(rows[19].recipe->kv_bits, 16);
  // KV centering: each row adds what its name says to the one before it (keys, then values; R2 instead of values).
  for (int i = 22; i <= 25; ++i) EXPECT_TRUE(rows[i].kv_only && rows[i].recipe->kv_center_keys) << rows[i].id;
  EXPECT_FALSE(rows[22].recipe->qk_hadamard || rows[22].recipe->kv_center_values);
  EXPECT_TRUE(rows[23].recipe->qk_hadamard && !rows[23].recipe->kv_center_values);
  EXPECT_TRUE(rows[24].recipe->qk_hadamard && rows[24].recipe->kv_center_values);
  EXPECT_TRUE(rows[25].recipe->rotate_values && !rows[25].recipe->kv_center_values && !rows[25].recipe->fold_norms);
  // KV groups: the rows above with a scale and minimum per 32 (16) channels, and nothing else changed.
  EXPECT_EQ(rows[25].recipe->kv_group_size, 0);
  for (auto [grouped, plain, group] : {std::tuple{26, 25, 32}, {27, 23, 32}, {28, 23, 16}}) {
    EXPECT_TRUE(rows[grouped].kv_only) << rows[grouped].id;
    quant::QuantRecipe r = *rows[plain].recipe;
    r.kv_group_size = group;
    EXPECT_EQ(r.to_json(), rows[grouped].recipe->to_json()) << rows[grouped].id;
  }
  EXPECT_TRUE(rows[29].kv_only && rows[29].recipe->kv_bits == 8 && !rows[29].recipe->has_kv_centering());
  EXPECT_EQ(rows[29].recipe->kv_group_size, 0);
  quant::QuantRecipe kv8 = *rows[29].recipe;
  kv8.kv_center_keys = true;
  EXPECT_TRUE(rows[30].kv_only);
  EXPECT_EQ(kv8.to_json(), rows[30].recipe->to_json());
  quant::QuantRecipe best = *rows[31].recipe;
  EXPECT_TRUE(best.qk_hadamard && best.down_hadamard && !best.has_kv_centering() && !rows[31].kv_only);
  best.kv_center_keys = true;
  EXPECT_EQ(best.to_json(), rows[32].recipe->to_json());
  best.kv_group_size = 32;
  EXPECT_EQ(best.to_json(), rows[33].recipe->to_json());
  EXPECT_FALSE(rows[33].kv_only);
  best.kv_group_size = 0;
  best.kv_center_values = true;
  EXPECT_EQ(best.to_json(), rows[34].recipe->to_json());
  best.kv_center_values = false;
  best.rotate_values = true;
  EXPECT_EQ(best.to_json(), rows[35].recipe->to_json());
  // Each ladder step changes exactly what its name says.
  const quant::QuantRecipe &rtn = *rows[1].recipe, &fp16 = *rows[2].recipe, &int8 = *rows[3].recipe;
  const quant::QuantRecipe &group = *rows[4].recipe, &clip = *rows[5].recipe, &gptq = *rows[6].recipe;
  const quant::QuantRecipe& kv4 = *rows[7].recipe;
  EXPECT_EQ(rtn.outliers, 0);
  EXPECT_EQ(rtn.group, 0);
  EXPECT_FALSE(rtn.gptq);
  EXPECT_EQ(rtn.kv_bits, 16);
  EXPECT_EQ(fp16.outliers, -1);
  EXPECT_EQ(fp16.outlier_precision, quant::OutlierPrecision::kFp16);
  EXPECT_EQ(int8.outlier_precision, quant::OutlierPrecision::kInt8);
  EXPECT_EQ(int8.group, 0);
  EXPECT_EQ(group.group, 32);
  EXPECT_EQ(group.a_clip, 1.0f);
  EXPECT_EQ(clip.a_clip, 0.9f);
  EXPECT_EQ(clip.w_clip, 0.85f);
  EXPECT_FALSE(clip.gptq);
  EXPECT_TRUE(gptq.gptq);
  EXPECT_EQ(gptq.kv_bits, 16);
  EXPECT_EQ(kv4.kv_bits, 4);
  gptq.validate();
  quant::QuantRecipe same = gptq;
  same.kv_bits = 4;
  same.preset = kv4.preset;
  EXPECT_EQ(same.to_json(), kv4.to_json());  // + KV4 is the full Atom recipe
  for (const AblationRow& r : rows) {
    if (r.recipe) {
      EXPECT_EQ(r.recipe->calib_windows, 4) << r.id;
      EXPECT_EQ(r.recipe->calib_len, 40) << r.id;
    }
  }
  // SmolLM2's widths (576, 1536): the weight-only rows take group 96, the Atom rows keep 128.
  ModelConfig smol = tiny_config();
  smol.hidden_size = 576;
  smol.num_heads = 9;
  smol.num_kv_heads = 3;
  smol.head_dim = 64;
  smol.intermediate_size = 1536;
  quant::QuantRecipe s = tiny_settings();
  s.group = 128;
  const std::vector<AblationRow> smol_rows = default_ablation_rows(s, smol);
  EXPECT_EQ(smol_rows[4].recipe->group, 128);
  EXPECT_EQ(smol_rows[11].recipe->group, 96);
  EXPECT_EQ(smol_rows[11].name, "W4A16 GPTQ g96");
}

TEST(Ablation, RunsEveryRowOnATinyModel) {
  const std::vector<std::int32_t> calib = tokens(400, 0, 96, 5), text = tokens(200, 0, 96, 6);
  // Every row whose KV group fits the tiny model's heads of 16 channels; the groups of 32 are refused by name.
  std::vector<AblationRow> rows;
  for (const AblationRow& r : default_ablation_rows(tiny_settings(), tiny_config())) {
    if (!r.recipe || r.recipe->kv_group_size <= 16) {
      rows.push_back(r);
      continue;
    }
    try {
      run_ablation(tiny_model(), calib, text, std::vector<AblationRow>{r}, tiny_options());
      ADD_FAILURE() << r.id << " ran with heads of 16 channels";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("kv_group_size 32 does not divide head_dim 16"), std::string::npos)
          << e.what();
    }
  }
  std::vector<std::string> seen;
  const std::vector<AblationResult> results =
      run_ablation(tiny_model(), calib, text, rows, tiny_options(),
                   [&](const AblationResult& r) { seen.push_back(r.row.id); });
  ASSERT_EQ(results.size(), rows.size());
  EXPECT_EQ(seen.size(), rows.size());
  // The FP row is exactly the perplexity of the fp model.
  PerplexityOptions eval = tiny_options().eval;
  eval.show_progress = false;
  const PerplexityResult fp = perplexity(*tiny_model().fp_model(), text, eval);
  EXPECT_DOUBLE_EQ(results[0].ppl.perplexity, fp.perplexity);
  EXPECT_EQ(results[0].execution, "fp32");
  EXPECT_EQ(results[0].ppl.tokens_scored, fp.tokens_scored);
  for (std::size_t i = 1; i < results.size(); ++i) {
    const AblationResult& r = results[i];
    EXPECT_TRUE(std::isfinite(r.ppl.perplexity)) << r.row.id;
    EXPECT_GT(r.ppl.perplexity, 1.0) << r.row.id;
    EXPECT_EQ(r.ppl.tokens_scored, fp.tokens_scored) << r.row.id;
    EXPECT_NEAR(r.delta_percent, 100.0 * (r.ppl.perplexity / fp.perplexity - 1.0), 1e-9) << r.row.id;
    if (r.row.kv_only) {
      EXPECT_EQ(r.execution, "fp32") << r.row.id;
      EXPECT_NE(r.ppl.perplexity, fp.perplexity) << r.row.id;
      continue;
    }
    EXPECT_EQ(r.execution, "fake-quant") << r.row.id;
    EXPECT_GT(r.effective_bits, 4.0) << r.row.id;
    EXPECT_LT(r.effective_bits, 9.0) << r.row.id;
    for (std::int64_t s : r.report.window_starts) EXPECT_LE(s + r.report.window_length, 400) << r.row.id;
  }
  const auto ppl = [&](const char* id) {
    for (const AblationResult& r : results) {
      if (r.row.id == id) return r.ppl.perplexity;
    }
    return std::numeric_limits<double>::quiet_NaN();
  };
  // What the recipes promise, on a model with one strong outlier channel.
  EXPECT_LT(ppl("outliers-int8"), ppl("w4a4-rtn"));
  EXPECT_LT(std::fabs(ppl("w8a8-smoothquant") / fp.perplexity - 1.0),
            std::fabs(ppl("kv4") / fp.perplexity - 1.0));
  EXPECT_LT(std::fabs(ppl("w4a16-gptq") / fp.perplexity - 1.0),
            std::fabs(ppl("w4a4-rtn") / fp.perplexity - 1.0));
  EXPECT_NEAR(results[1].effective_bits, (64 * 4.0 + 16) / 64, 0.2);  // per-row INT4

  const std::string table = ablation_table(results, false), markdown = ablation_table(results, true);
  for (const AblationRow& r : rows) {
    EXPECT_NE(table.find(r.name), std::string::npos) << r.name;
    EXPECT_NE(markdown.find("| " + r.name + " |"), std::string::npos) << r.name;
  }
  const std::string outliers = outlier_table(results[7], false);
  EXPECT_EQ(std::count(outliers.begin(), outliers.end(), '\n'), 3);  // header + 2 layers
  EXPECT_EQ(to_json(results[7]).at("report").at("inputs").size(), 8u);
}

TEST(Ablation, CalibrationDoesNotDependOnTheEvaluationText) {
  const std::vector<std::int32_t> calib = tokens(400, 0, 96, 5);
  std::vector<AblationRow> rows = default_ablation_rows(tiny_settings(), tiny_config());
  rows = {rows[6]};  // + GPTQ: statistics, Hessians and outliers all come from calibration
  const auto a = run_ablation(tiny_model(), calib, tokens(100, 0, 48, 7), rows, tiny_options());
  const auto b = run_ablation(tiny_model(), calib, tokens(100, 48, 96, 8), rows, tiny_options());
  EXPECT_EQ(quant::to_json(a[0].report).at("linears"), quant::to_json(b[0].report).at("linears"));
  EXPECT_EQ(quant::to_json(a[0].report).at("inputs"), quant::to_json(b[0].report).at("inputs"));
  EXPECT_NE(a[0].ppl.perplexity, b[0].ppl.perplexity);
}

TEST(Ablation, IntegerExecution) {
  const std::vector<std::int32_t> calib = tokens(400, 0, 96, 5), text = tokens(120, 0, 96, 6);
  const std::vector<AblationRow> all = default_ablation_rows(tiny_settings(), tiny_config());
  const std::vector<AblationRow> rows = {all[0], all[2], all[7]};  // fp, FP16 outliers, Atom
  const auto r = run_ablation(tiny_model(), calib, text, rows, tiny_options(AblationExecution::kAuto));
  EXPECT_EQ(r[1].execution, "fake-quant");  // FP16 outliers have no integer kernel
  EXPECT_EQ(r[2].execution, "integer");
  const auto fake = run_ablation(tiny_model(), calib, text, std::vector<AblationRow>{all[7]}, tiny_options());
  EXPECT_NEAR(r[2].ppl.perplexity, fake[0].ppl.perplexity, 1e-3 * fake[0].ppl.perplexity);
  try {
    run_ablation(tiny_model(), calib, text, rows, tiny_options(AblationExecution::kInteger));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(all[2].name), std::string::npos) << e.what();
  }
}

TEST(Ablation, ErrorAttribution) {
  const std::vector<std::int32_t> calib = tokens(400, 0, 96, 5), text = tokens(160, 0, 96, 6);
  const std::vector<AblationRow> rows = default_ablation_rows(tiny_settings(), tiny_config());
  const auto a = attribute_error(tiny_model(), calib, text, *rows[7].recipe, tiny_options());  // Atom, KV4
  std::vector<std::string> ids;
  for (const AblationResult& r : a) ids.push_back(r.row.id);
  EXPECT_EQ(ids, (std::vector<std::string>{"fp", "w+a", "w", "a", "a:attn_in", "a:o_proj_in", "a:mlp_in",
                                           "a:down_proj_in", "kv"}));
  for (std::size_t i = 2; i < a.size(); ++i) {
    EXPECT_NE(a[i].ppl.perplexity, a[0].ppl.perplexity) << a[i].row.id;  // each switch changes something
    EXPECT_NE(a[i].ppl.perplexity, a[1].ppl.perplexity) << a[i].row.id;
  }
  // With an fp KV cache (the ladder's "+ GPTQ" recipe: the KV store also shapes calibration), everything
  // switched on is that row of the ladder, and there is no KV row.
  const auto a16 = attribute_error(tiny_model(), calib, text, *rows[6].recipe, tiny_options());
  ASSERT_EQ(a16.size(), 8u);
  const auto ladder =
      run_ablation(tiny_model(), calib, text, std::vector<AblationRow>{rows[0], rows[6]}, tiny_options());
  EXPECT_DOUBLE_EQ(a16[0].ppl.perplexity, ladder[0].ppl.perplexity);
  EXPECT_NEAR(a16[1].ppl.perplexity, ladder[1].ppl.perplexity, 1e-9 * ladder[1].ppl.perplexity);
  EXPECT_THROW(attribute_error(tiny_model(), calib, text, *rows[10].recipe, tiny_options()),
               Error);  // SmoothQuant
  // A rotated recipe: its "w+a" row with an fp KV cache is the rotated row of the ladder with KV fp32.
  const auto rot = attribute_error(tiny_model(), calib, text, *rows[18].recipe, tiny_options());
  ASSERT_EQ(rot.size(), 8u);
  const auto rot_row =
      run_ablation(tiny_model(), calib, text, std::vector<AblationRow>{rows[18]}, tiny_options());
  EXPECT_NEAR(rot[1].ppl.perplexity, rot_row[0].ppl.perplexity, 1e-9 * rot_row[0].ppl.perplexity);
}

TEST(Ablation, BadOptions) {
  const std::vector<std::int32_t> calib = tokens(400, 0, 96, 5), text = tokens(10, 0, 96, 6);
  EXPECT_THROW(run_ablation(tiny_model(), calib, text, {}, tiny_options()), Error);
  const std::vector<AblationRow> rows = default_ablation_rows(tiny_settings(), tiny_config());
  AblationOptions o = tiny_options();
  o.eval.stride = 0;
  EXPECT_THROW(run_ablation(tiny_model(), calib, text, rows, o), Error);
  quant::QuantRecipe s = tiny_settings();
  s.group = 0;
  EXPECT_THROW(default_ablation_rows(s, tiny_config()), Error);
  // A calibration text shorter than one window fails naming the row.
  const std::vector<std::int32_t> short_calib = tokens(20, 0, 96, 5);
  try {
    run_ablation(tiny_model(), short_calib, text, std::vector<AblationRow>{rows[3]}, tiny_options());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(rows[3].name), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace atom
