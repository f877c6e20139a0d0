#include "eval/ablation.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "common/error.h"

namespace atom {

std::vector<AblationRow> default_ablation_rows(const quant::QuantRecipe& settings, const ModelConfig& config) {
  using quant::QuantRecipe;
  if (settings.group <= 0) fail("ablation: the group size of the grouped rows must be positive, got {}", settings.group);
  const std::int64_t widths[] = {config.hidden_size, std::int64_t{config.num_heads} * config.head_dim,
                                 config.intermediate_size};
  std::int64_t whole_group = settings.group - settings.group % 32;
  while (whole_group > 32 && std::any_of(std::begin(widths), std::end(widths),
                                         [&](std::int64_t k) { return k % whole_group != 0; })) {
    whole_group -= 32;
  }
  if (whole_group < 32) whole_group = settings.group;  // the recipe will explain what does not fit
  const auto with_calibration = [&](QuantRecipe r) {
    r.calib_windows = settings.calib_windows;
    r.calib_len = settings.calib_len;
    r.calib_seed = settings.calib_seed;
    if (r.group > 0) r.group = settings.group;
    r.outlier_rule_group = settings.group;  // per-row rows keep the outliers the grouped rows will have
    return r;
  };
  std::vector<AblationRow> rows;
  rows.push_back({"fp", "FP32 (unquantized)", std::nullopt});
  // The ladder (Atom paper, Table 2): each step adds one technique to the one before.
  QuantRecipe r = with_calibration(quant::preset_recipe("rtn-w4a4"));  // per-channel W, per-token A, RTN
  rows.push_back({"w4a4-rtn", "W4A4 RTN (per-channel W, per-token A)", r});
  r.outliers = -1;
  r.outlier_precision = quant::OutlierPrecision::kFp16;
  r.preset = "ablation";
  rows.push_back({"outliers-fp16", "+ outlier channels kept in FP16", r});
  r.outlier_precision = quant::OutlierPrecision::kInt8;
  rows.push_back({"outliers-int8", "+ outliers in INT8", r});
  r.group = settings.group;
  rows.push_back({"group", fmt::format("+ group size {}", settings.group), r});
  r.a_clip = 0.9f;
  r.w_clip = 0.85f;
  rows.push_back({"clip", "+ clipping (a 0.9, w 0.85)", r});
  r.gptq = true;
  rows.push_back({"gptq", "+ GPTQ", r});
  r = with_calibration(quant::preset_recipe("atom-w4a4"));
  rows.push_back({"kv4", "+ INT4 KV cache = Atom W4A4", r});
  // The other recipes.
  rows.push_back({"atom-w3a3", "Atom W3A3 (KV4)", with_calibration(quant::preset_recipe("atom-w3a3"))});
  rows.push_back({"atom-fp4", "Atom FP4 (KV4)", with_calibration(quant::preset_recipe("atom-fp4"))});
  rows.push_back({"w8a8-smoothquant", "W8A8 SmoothQuant (alpha 0.5)",
                  with_calibration(quant::preset_recipe("w8a8-smoothquant"))});
  r = with_calibration(quant::preset_recipe("w4a16"));
  r.group = whole_group;
  rows.push_back({"w4a16-gptq", fmt::format("W4A16 GPTQ g{}", whole_group), r});
  r.gptq = false;
  rows.push_back({"w4a16-rtn", fmt::format("W4A16 RTN g{}", whole_group), r});
  return rows;
}

std::vector<AblationResult> run_ablation(const AblationModel& model, std::span<const std::int32_t> calib_tokens,
                                         std::span<const std::int32_t> eval_tokens, std::span<const AblationRow> rows,
                                         const AblationOptions& options,
                                         const std::function<void(const AblationResult&)>& on_row) {
  if (rows.empty()) fail("ablation: no rows to run");
  perplexity_windows(static_cast<std::int64_t>(eval_tokens.size()), options.eval);  // validates early
  std::vector<AblationResult> results;
  for (const AblationRow& row : rows) {
    AblationResult result;
    result.row = row;
    std::unique_ptr<cpu::LlamaModel> m;
    try {
      if (!row.recipe) {
        m = model.fp_model();
        result.execution = "fp32";
        result.description = "fp32 weights, activations and KV cache";
      } else {
        const quant::QuantRecipe& recipe = *row.recipe;
        quant::QuantizeOptions qopt;
        qopt.show_progress = options.show_progress;
        qopt.activation_budget_bytes = options.activation_budget_bytes;
        const quant::QuantizedModel qm = quant::quantize_model(model.source(), calib_tokens, recipe, qopt, &result.report);
        result.quantize_seconds = result.report.seconds;
        result.effective_bits = result.report.effective_bits;
        result.description = recipe.describe();
        const bool integer = options.execution == AblationExecution::kInteger ||
                             (options.execution == AblationExecution::kAuto && recipe.has_integer_form());
        if (integer && !recipe.has_integer_form()) {
          fail("{} outliers have no integer kernel; run this row with fake quantization",
               quant::outlier_precision_name(recipe.outlier_precision));
        }
        m = quant::build_cpu_model(qm, integer ? quant::Execution::kInteger : quant::Execution::kFakeQuant);
        result.execution = integer ? "integer" : "fake-quant";
      }
      PerplexityOptions eval = options.eval;
      eval.show_progress = options.show_progress;
      result.ppl = perplexity(*m, eval_tokens, eval);
    } catch (const Error& e) {
      fail("ablation row '{}': {}", row.name, e.what());
    }
    if (!results.empty()) {
      result.delta_percent = 100.0 * (result.ppl.perplexity / results.front().ppl.perplexity - 1.0);
    }
    results.push_back(std::move(result));
    if (on_row) on_row(results.back());
  }
  return results;
}

namespace {

std::string bits_text(const AblationResult& r) {
  if (!r.row.recipe) return "32";
  return fmt::format("{:.2f}", r.effective_bits);
}

std::string kv_text(const AblationResult& r) {
  if (!r.row.recipe || r.row.recipe->kv_bits == 16) return "fp32";
  return fmt::format("INT{}", r.row.recipe->kv_bits);
}

}  // namespace

std::string ablation_table(std::span<const AblationResult> results, bool markdown) {
  std::string out;
  if (markdown) {
    out += "| row | PPL | vs first row | bits/weight | KV | quantize s | eval s | execution |\n";
    out += "|---|---:|---:|---:|---|---:|---:|---|\n";
  } else {
    out += fmt::format("{:<42} {:>10} {:>9} {:>7} {:>5} {:>9} {:>8}  {}\n", "row", "PPL", "delta", "bits/w", "KV",
                       "quant s", "eval s", "execution");
  }
  for (std::size_t i = 0; i < results.size(); ++i) {
    const AblationResult& r = results[i];
    const std::string delta = i == 0 ? "-" : fmt::format("{:+.1f}%", r.delta_percent);
    if (markdown) {
      out += fmt::format("| {} | {:.3f} | {} | {} | {} | {:.1f} | {:.1f} | {} |\n", r.row.name, r.ppl.perplexity, delta,
                         bits_text(r), kv_text(r), r.quantize_seconds, r.ppl.seconds, r.execution);
    } else {
      out += fmt::format("{:<42} {:>10.3f} {:>9} {:>7} {:>5} {:>9.1f} {:>8.1f}  {}\n", r.row.name, r.ppl.perplexity,
                         delta, bits_text(r), kv_text(r), r.quantize_seconds, r.ppl.seconds, r.execution);
    }
  }
  return out;
}

std::string outlier_table(const AblationResult& result, bool markdown) {
  // One line per layer; per input kind: max/median channel RMS, outlier share of the energy.
  const std::vector<std::string> kinds = {"attn_in", "o_proj_in", "mlp_in", "down_proj_in"};
  std::map<int, std::map<std::string, const quant::InputReport*>> by_layer;
  for (const quant::InputReport& r : result.report.inputs) by_layer[r.layer][r.input] = &r;
  std::string out;
  if (by_layer.empty()) return out;
  if (markdown) {
    out += "| layer |";
    for (const auto& k : kinds) out += fmt::format(" {} max/med RMS | {} outlier energy |", k, k);
    out += "\n|---:|";
    for (std::size_t i = 0; i < kinds.size(); ++i) out += "---:|---:|";
    out += "\n";
  } else {
    out += fmt::format("{:>5}", "layer");
    for (const auto& k : kinds) out += fmt::format(" {:>14} {:>8}", k + " max/med", "energy");
    out += "\n";
  }
  for (const auto& [layer, inputs] : by_layer) {
    out += markdown ? fmt::format("| {} |", layer) : fmt::format("{:>5}", layer);
    for (const auto& k : kinds) {
      const auto it = inputs.find(k);
      if (it == inputs.end()) {
        out += markdown ? " - | - |" : fmt::format(" {:>14} {:>8}", "-", "-");
        continue;
      }
      const quant::InputReport& r = *it->second;
      const double ratio = r.median_rms > 0 ? r.max_rms / r.median_rms : 0.0;
      out += markdown ? fmt::format(" {:.1f} | {:.0f}% |", ratio, 100.0 * r.outlier_energy)
                      : fmt::format(" {:>14.1f} {:>7.0f}%", ratio, 100.0 * r.outlier_energy);
    }
    out += "\n";
  }
  return out;
}

nlohmann::json to_json(const AblationResult& r) {
  nlohmann::json j = {{"id", r.row.id},
                      {"name", r.row.name},
                      {"description", r.description},
                      {"execution", r.execution},
                      {"ppl", r.ppl.perplexity},
                      {"nll_sum", r.ppl.nll_sum},
                      {"tokens_scored", r.ppl.tokens_scored},
                      {"windows", r.ppl.windows},
                      {"eval_seconds", r.ppl.seconds},
                      {"delta_percent", r.delta_percent},
                      {"quantize_seconds", r.quantize_seconds},
                      {"effective_bits", r.row.recipe ? r.effective_bits : 32.0}};
  if (r.row.recipe) {
    j["recipe"] = r.row.recipe->to_json();
    j["report"] = quant::to_json(r.report);
  }
  return j;
}

}  // namespace atom
