#include "eval/ablation.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include "common/error.h"
#include "quant/kv_centering.h"
#include "quant/rotation.h"

namespace atom {

std::vector<AblationRow> default_ablation_rows(const quant::QuantRecipe& settings,
                                               const ModelConfig& config) {
  using quant::QuantRecipe;
  if (settings.group <= 0)
    fail("ablation: the group size of the grouped rows must be positive, got {}", settings.group);
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
  // Checks of what the weights can take: 8-bit weights should cost nothing; the smallest group the CPU
  // kernels run shows how much of the 4-bit weight error is the group size (a GGUF source's weights may
  // already sit on a 4-bit grid of their own).
  r = with_calibration(quant::preset_recipe("w4a16"));
  r.weight_format = quant::NumberFormat::kInt8;
  r.group = 0;
  r.gptq = false;
  rows.push_back({"w8a16-rtn", "W8A16 RTN per-row", r});
  r = with_calibration(quant::preset_recipe("w4a16"));
  r.group = 32;
  rows.push_back({"w4a16-g32-gptq", "W4A16 GPTQ g32", r});
  // Rotations (QuaRot / SpinQuant placement, quant/rotation.h) and the KV cache alone.
  r = with_calibration(quant::preset_recipe("atom-w4a4"));
  r.qk_hadamard = true;
  r.preset = "ablation";
  rows.push_back({"atom-qk", "Atom W4A4-KV4 + Q/K Hadamard", r});
  rows.push_back({"quarot-w4a4", "QuaRot W4A4-KV4 (per-channel GPTQ, rotated)",
                  with_calibration(quant::preset_recipe("quarot-w4a4"))});
  rows.push_back({"atom-rot-w4a4", "Atom W4A4-KV4 on the rotated model",
                  with_calibration(quant::preset_recipe("atom-rot-w4a4"))});
  rows.push_back({"quarot-w8a8", "W8A8 on the rotated model (per-channel GPTQ)",
                  with_calibration(quant::preset_recipe("quarot-w8a8"))});
  r = with_calibration(quant::preset_recipe("atom-rot-w4a4"));
  r.kv_bits = 16;
  r.preset = "ablation";
  rows.push_back({"atom-rot-kvfp", "Atom W4A4 on the rotated model, KV fp32", r});
  r = with_calibration(quant::preset_recipe("atom-w4a4"));
  r.preset = "kv-only";
  r.kv_bits = 4;
  rows.push_back({"kv4-only", "INT4 KV cache only (fp weights, activations)", r, true});
  r.qk_hadamard = true;
  rows.push_back({"kv4-qk-only", "INT4 KV cache only, Q/K Hadamard", r, true});
  // KV centering (quant/kv_centering.h): the fp model's mean key / value rows on the calibration windows.
  r.qk_hadamard = false;
  r.kv_center_keys = true;
  rows.push_back({"kv4-kc-only", "INT4 KV cache only, keys centered", r, true});
  r.qk_hadamard = true;
  rows.push_back({"kv4-qk-kc-only", "INT4 KV cache only, Q/K Hadamard, keys centered", r, true});
  r.kv_center_values = true;
  rows.push_back({"kv4-qk-kvc-only", "INT4 KV cache only, Q/K Hadamard, K and V centered", r, true});
  r.kv_center_values = false;
  r.rotate_values = true;  // R2: a per-head Hadamard on V's output, its inverse in O's input (offline)
  rows.push_back({"kv4-qk-r2-kc-only", "INT4 KV cache only, Q/K Hadamard, R2 on V/O, keys centered", r, true});
  // Per-token groups of 32 channels (two (scale, minimum) pairs per head of 64: +0.5 bit per value).
  r.kv_group_size = 32;
  rows.push_back({"kv4-qk-r2-kc-g32-only", "INT4 KV cache only (g32), Q/K Hadamard, R2 on V/O, keys centered", r, true});
  r.rotate_values = false;
  rows.push_back({"kv4-qk-kc-g32-only", "INT4 KV cache only (g32), Q/K Hadamard, keys centered", r, true});
  r.kv_group_size = 16;
  rows.push_back({"kv4-qk-kc-g16-only", "INT4 KV cache only (g16), Q/K Hadamard, keys centered", r, true});
  // INT8: whether centering, on by default for any quantized cache, costs anything there.
  r = with_calibration(quant::preset_recipe("atom-w4a4"));
  r.preset = "kv-only";
  r.kv_bits = 8;
  rows.push_back({"kv8-only", "INT8 KV cache only", r, true});
  r.kv_center_keys = true;
  rows.push_back({"kv8-kc-only", "INT8 KV cache only, keys centered", r, true});
  // The best W4A4-KV4 recipe: Atom with the online Hadamards on Q/K and on down_proj's input, then with its KV
  // cache centered.
  r = with_calibration(quant::preset_recipe("atom-w4a4"));
  r.preset = "ablation";
  r.qk_hadamard = r.down_hadamard = true;
  rows.push_back({"atom-qk-down", "Atom W4A4-KV4 + Q/K and down Hadamards", r});
  r.kv_center_keys = true;
  rows.push_back({"atom-qk-down-kc", "Atom W4A4-KV4 + Q/K and down Hadamards, keys centered", r});
  r.kv_group_size = 32;
  rows.push_back({"atom-qk-down-kc-g32", "Atom W4A4-KV4 (g32) + Q/K and down Hadamards, keys centered", r});
  r.kv_group_size = 0;
  r.kv_center_values = true;
  rows.push_back({"atom-qk-down-kvc", "Atom W4A4-KV4 + Q/K and down Hadamards, K and V centered", r});
  r.kv_center_values = false;
  r.rotate_values = true;
  rows.push_back({"atom-qk-down-r2-kc", "Atom W4A4-KV4 + Q/K and down Hadamards, R2 on V/O, keys centered", r});
  return rows;
}

std::vector<AblationResult> run_ablation(const AblationModel& model,
                                         std::span<const std::int32_t> calib_tokens,
                                         std::span<const std::int32_t> eval_tokens,
                                         std::span<const AblationRow> rows, const AblationOptions& options,
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
      } else if (row.kv_only) {
        // Offline rotations (R2 on V/O) change which values the cache holds, not the function: the rotated fp model.
        if (row.recipe->has_offline_rotation()) {
          m = std::make_unique<cpu::LlamaModel>(
              quant::materialize(quant::rotate_model_source(model.source(), *row.recipe)));
        } else {
          m = model.fp_model();
        }
        row.recipe->kv_group_for(m->config().head_dim);
        m->set_kv_store_factory(quant::kv_store_factory(row.recipe->kv_bits, row.recipe->kv_group_size),
                                row.recipe->kv_group_size);
        if (row.recipe->qk_hadamard) {
          m->set_qk_transform(quant::head_transform(quant::qk_transform(m->config(), *row.recipe)));
        }
        if (row.recipe->has_kv_centering()) {  // measured after the Q/K transform is set: it centers those keys
          const auto start = std::chrono::steady_clock::now();
          quant::set_kv_centers(*m, quant::measure_kv_centers(*m, calib_tokens, *row.recipe));
          result.quantize_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        }
        result.execution = "fp32";
        result.description = fmt::format(
            "fp32 weights and activations{}, KV{}{}{}{}", row.recipe->rotate_values ? " (V/O rotated per head)" : "",
            row.recipe->kv_bits,
            row.recipe->kv_group_size != 0 ? fmt::format(" g{}", row.recipe->kv_group_size) : "",
            row.recipe->qk_hadamard ? " with the Q/K Hadamard" : "",
            row.recipe->has_kv_centering() ? fmt::format(", {} centered", row.recipe->kv_centering_name()) : "");
      } else {
        const quant::QuantRecipe& recipe = *row.recipe;
        quant::QuantizeOptions qopt;
        qopt.show_progress = options.show_progress;
        qopt.activation_budget_bytes = options.activation_budget_bytes;
        const quant::QuantizedModel qm =
            quant::quantize_model(model.source(), calib_tokens, recipe, qopt, &result.report);
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

// A fake-quantized op of one linear with quantization switched on or off for its weights and its input.
std::unique_ptr<cpu::LinearOp> partial_op(const quant::QuantizedLinear& q, const cpu::LinearOp& fp_op,
                                          const quant::QuantRecipe& recipe, bool weights, bool activations,
                                          cpu::InputOrder order, std::span<const std::int32_t> row_order,
                                          const std::string& name) {
  const auto* fp = dynamic_cast<const cpu::DenseLinear*>(&fp_op);
  if (fp == nullptr) fail("{}: error attribution needs the fp32 model's dense weights", name);
  quant::QuantizedLinear ql = q;
  std::vector<float> bias = fp->bias();
  if (!row_order.empty()) {
    quant::permute_output_rows(ql, row_order);
    if (!bias.empty()) {
      const std::vector<float> b = bias;
      for (std::size_t r = 0; r < bias.size(); ++r) bias[r] = b[static_cast<std::size_t>(row_order[r])];
    }
  }
  const std::int64_t n = ql.weights.n, k = ql.weights.k();
  std::vector<float> w;
  if (weights) {
    w = quant::dequantize(ql.weights);
  } else {
    w.resize(static_cast<std::size_t>(n * k));
    for (std::int64_t r = 0; r < n; ++r) {
      const std::int64_t src = row_order.empty() ? r : row_order[static_cast<std::size_t>(r)];
      for (std::int64_t c = 0; c < k; ++c) w[r * k + c] = fp->weight()[src * k + ql.weights.perm[c]];
    }
  }
  quant::ActivationQuant act = quant::activation_quant(recipe, ql.weights.k_normal, ql.weights.n_outliers);
  act.enabled = act.enabled && activations;
  return std::make_unique<quant::FakeQuantLinear>(std::move(w), n, ql.weights.perm, act, order,
                                                  std::move(bias), name);
}

std::string bits_text(const AblationResult& r) {
  if (!r.row.recipe) return "32";
  return fmt::format("{:.2f}", r.effective_bits);
}

std::string kv_text(const AblationResult& r) {
  if (!r.row.recipe || r.row.recipe->kv_bits == 16) return "fp32";
  const quant::QuantRecipe& q = *r.row.recipe;
  const char* centered = q.kv_center_keys ? (q.kv_center_values ? " KVc" : " Kc") : q.kv_center_values ? " Vc" : "";
  return fmt::format("INT{}{}", q.kv_bits, centered);
}

}  // namespace

std::vector<AblationResult> attribute_error(const AblationModel& model,
                                            std::span<const std::int32_t> calib_tokens,
                                            std::span<const std::int32_t> eval_tokens,
                                            const quant::QuantRecipe& recipe, const AblationOptions& options,
                                            const std::function<void(const AblationResult&)>& on_row) {
  if (recipe.smoothquant)
    fail("error attribution: not for SmoothQuant recipes (the fp model is the smoothed one)");
  perplexity_windows(static_cast<std::int64_t>(eval_tokens.size()), options.eval);
  quant::QuantizeOptions qopt;
  qopt.show_progress = options.show_progress;
  qopt.activation_budget_bytes = options.activation_budget_bytes;
  quant::QuantizeReport report;
  const quant::QuantizedModel qm = quant::quantize_model(model.source(), calib_tokens, recipe, qopt, &report);
  // The fp model the partial rows take unquantized parts from: the rotated one for a rotated recipe.
  std::unique_ptr<cpu::LlamaModel> fp;
  if (recipe.has_rotation()) {
    fp = std::make_unique<cpu::LlamaModel>(
        quant::materialize(quant::rotate_model_source(model.source(), recipe)));
    quant::apply_online_transforms(*fp, recipe);
  } else {
    fp = model.fp_model();
  }
  const auto down_transform = quant::down_transform(qm.config, recipe);

  struct Variant {
    std::string id, name;
    bool weights;
    std::vector<std::string> act_kinds;
    bool kv;
  };
  const std::vector<std::string> all = {"attn_in", "o_proj_in", "mlp_in", "down_proj_in"};
  const std::vector<Variant> variants = {
      {"fp", "FP32 (unquantized)", false, {}, false},
      {"w+a", "weights and activations (KV fp32)", true, all, false},
      {"w", "weights only", true, {}, false},
      {"a", "activations only", false, all, false},
      {"a:attn_in", "activations of q/k/v only", false, {"attn_in"}, false},
      {"a:o_proj_in", "activations of o_proj only", false, {"o_proj_in"}, false},
      {"a:mlp_in", "activations of gate/up only", false, {"mlp_in"}, false},
      {"a:down_proj_in", "activations of down_proj only", false, {"down_proj_in"}, false},
      {"kv", fmt::format("KV cache only (INT{})", recipe.kv_bits), false, {}, true}};
  std::vector<AblationResult> results;
  for (const Variant& v : variants) {
    if (v.kv && recipe.kv_bits == 16) continue;
    AblationResult result;
    quant::QuantRecipe shown = recipe;  // the table's KV column says what this row runs
    shown.kv_bits = v.kv ? recipe.kv_bits : 16;
    result.row = {v.id, v.name, v.id == "fp" ? std::nullopt : std::optional<quant::QuantRecipe>(shown)};
    result.description = recipe.describe();
    result.execution = v.id == "fp" ? "fp32" : "fake-quant";
    std::unique_ptr<cpu::LlamaModel> m;
    if (v.id == "fp") {
      m = model.fp_model();
    } else {
      m = quant::build_cpu_model(qm, quant::Execution::kFakeQuant);
      const auto act = [&](const char* kind) {
        return std::find(v.act_kinds.begin(), v.act_kinds.end(), kind) != v.act_kinds.end();
      };
      for (int li = 0; li < m->num_layers(); ++li) {
        const quant::QuantizedLayer& ql = qm.layers[static_cast<std::size_t>(li)];
        const cpu::DecoderLayer& f = fp->layer(li);
        cpu::DecoderLayer& l = m->layer(li);
        const auto reordered = cpu::InputOrder::kReordered, original = cpu::InputOrder::kOriginal;
        // Under R4 down_proj reads the original order through its Hadamard; gate/up rows stay as they are.
        const std::span<const std::int32_t> none,
            down_order = down_transform ? none : std::span<const std::int32_t>(ql.down_proj.weights.perm);
        const cpu::LinearOp& f_down =
            down_transform ? dynamic_cast<const quant::HadamardInputLinear&>(*f.down_proj).inner()
                           : *f.down_proj;
        const auto name = [li](const char* linear) { return quant::linear_name(li, linear); };
        l.q_proj = partial_op(ql.q_proj, *f.q_proj, recipe, v.weights, act("attn_in"), reordered, none,
                              name("q_proj"));
        l.k_proj = partial_op(ql.k_proj, *f.k_proj, recipe, v.weights, act("attn_in"), reordered, none,
                              name("k_proj"));
        l.v_proj = partial_op(ql.v_proj, *f.v_proj, recipe, v.weights, act("attn_in"), reordered, none,
                              name("v_proj"));
        l.o_proj = partial_op(ql.o_proj, *f.o_proj, recipe, v.weights, act("o_proj_in"), original, none,
                              name("o_proj"));
        l.gate_proj = partial_op(ql.gate_proj, *f.gate_proj, recipe, v.weights, act("mlp_in"), reordered,
                                 down_order, name("gate_proj"));
        l.up_proj = partial_op(ql.up_proj, *f.up_proj, recipe, v.weights, act("mlp_in"), reordered,
                               down_order, name("up_proj"));
        l.down_proj = partial_op(ql.down_proj, f_down, recipe, v.weights, act("down_proj_in"),
                                 down_transform ? original : reordered, none, name("down_proj"));
        if (down_transform) {
          l.down_proj = std::make_unique<quant::HadamardInputLinear>(down_transform, std::move(l.down_proj));
        }
      }
      m->set_kv_store_factory(quant::kv_store_factory(v.kv ? recipe.kv_bits : 16, v.kv ? recipe.kv_group_size : 0),
                              v.kv ? recipe.kv_group_size : 0);
      result.quantize_seconds = report.seconds;
      result.effective_bits = v.weights ? report.effective_bits : 32.0;
      result.report = report;
    }
    PerplexityOptions eval = options.eval;
    eval.show_progress = options.show_progress;
    try {
      result.ppl = perplexity(*m, eval_tokens, eval);
    } catch (const Error& e) {
      fail("error attribution '{}': {}", v.name, e.what());
    }
    if (!results.empty()) {
      result.delta_percent = 100.0 * (result.ppl.perplexity / results.front().ppl.perplexity - 1.0);
    }
    results.push_back(std::move(result));
    if (on_row) on_row(results.back());
  }
  return results;
}

std::string ablation_table(std::span<const AblationResult> results, bool markdown) {
  std::string out;
  std::size_t name_width = 42;  // the longest row name, so that the columns line up
  for (const AblationResult& r : results) name_width = std::max(name_width, r.row.name.size());
  if (markdown) {
    out += "| row | PPL | vs first row | bits/weight | KV | quantize s | eval s | execution |\n";
    out += "|---|---:|---:|---:|---|---:|---:|---|\n";
  } else {
    out += fmt::format("{:<{}} {:>10} {:>9} {:>7} {:>8} {:>9} {:>8}  {}\n", "row", name_width, "PPL", "delta",
                       "bits/w", "KV", "quant s", "eval s", "execution");
  }
  for (std::size_t i = 0; i < results.size(); ++i) {
    const AblationResult& r = results[i];
    const std::string delta = i == 0 ? "-" : fmt::format("{:+.1f}%", r.delta_percent);
    if (markdown) {
      out +=
          fmt::format("| {} | {:.3f} | {} | {} | {} | {:.1f} | {:.1f} | {} |\n", r.row.name, r.ppl.perplexity,
                      delta, bits_text(r), kv_text(r), r.quantize_seconds, r.ppl.seconds, r.execution);
    } else {
      out += fmt::format("{:<{}} {:>10.3f} {:>9} {:>7} {:>8} {:>9.1f} {:>8.1f}  {}\n", r.row.name, name_width,
                         r.ppl.perplexity, delta, bits_text(r), kv_text(r), r.quantize_seconds, r.ppl.seconds,
                         r.execution);
    }
  }
  return out;
}

std::string outlier_table(const AblationResult& result, bool markdown) {
  // One line per layer; per input kind: max/median channel RMS, outlier share of the energy.
  const std::vector<std::string> kinds = {"attn_in", "o_proj_in", "mlp_in", "down_proj_in"};
  std::map<int, std::map<std::string, const quant::InputReport*>> by_layer;
  for (const quant::InputReport& r : result.report.inputs) by_layer[r.layer][r.input] = &r;
  std::map<int, const quant::KvReport*> kv;
  for (const quant::KvReport& r : result.report.kv) kv[r.layer] = &r;
  const bool with_kv = !kv.empty();
  std::string out;
  if (by_layer.empty()) return out;
  if (markdown) {
    out += "| layer |";
    for (const auto& k : kinds) out += fmt::format(" {} max/med RMS | {} outlier energy |", k, k);
    if (with_kv) out += " K err | V err | K max/med channel |";
    out += "\n|---:|";
    for (std::size_t i = 0; i < kinds.size(); ++i) out += "---:|---:|";
    if (with_kv) out += "---:|---:|---:|";
    out += "\n";
  } else {
    out += fmt::format("{:>5}", "layer");
    for (const auto& k : kinds) out += fmt::format(" {:>14} {:>8}", k + " max/med", "energy");
    if (with_kv) out += fmt::format(" {:>7} {:>7} {:>9}", "K err", "V err", "K max/med");
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
    if (with_kv) {
      const auto it = kv.find(layer);
      if (it == kv.end()) {
        out += markdown ? " - | - | - |" : fmt::format(" {:>7} {:>7} {:>9}", "-", "-", "-");
      } else {
        const quant::KvReport& r = *it->second;
        out += markdown ? fmt::format(" {:.1f}% | {:.1f}% | {:.1f} |", 100 * r.key_rel_error,
                                      100 * r.value_rel_error, r.key_channel_max_over_median)
                        : fmt::format(" {:>6.1f}% {:>6.1f}% {:>9.1f}", 100 * r.key_rel_error,
                                      100 * r.value_rel_error, r.key_channel_max_over_median);
      }
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
