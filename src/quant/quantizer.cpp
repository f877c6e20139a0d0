#include "quant/quantizer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "backend/cpu/quantizer_ops.h"
#include "common/error.h"
#include "common/half.h"
#include "common/progress.h"
#include "dist/tensor_parallel_plan.h"
#include "quant/calibration.h"
#include "quant/channels.h"
#include "quant/cpu_quantizer_backend.h"
#include "quant/gptq.h"
#include "quant/kv_centering.h"
#include "quant/rotation.h"

namespace atom::quant {

nlohmann::json to_json(const QuantizeReport& report) {
  nlohmann::json inputs = nlohmann::json::array(), linears = nlohmann::json::array();
  for (const InputReport& r : report.inputs) {
    inputs.push_back({{"layer", r.layer},
                      {"input", r.input},
                      {"k", r.k},
                      {"n_outliers", r.n_outliers},
                      {"max_rms", r.max_rms},
                      {"median_rms", r.median_rms},
                      {"outlier_energy", r.outlier_energy}});
  }
  for (const LinearReport& l : report.linears) {
    linears.push_back({{"name", l.name},
                       {"n", l.n},
                       {"k", l.k},
                       {"n_outliers", l.n_outliers},
                       {"group", l.group},
                       {"w_clip", l.w_clip},
                       {"gptq_loss", l.gptq_loss},
                       {"dead_columns", l.dead_columns}});
  }
  nlohmann::json kv = nlohmann::json::array();
  for (const KvReport& r : report.kv) {
    kv.push_back({{"layer", r.layer},
                  {"key_rel_error", r.key_rel_error},
                  {"value_rel_error", r.value_rel_error},
                  {"key_channel_max_over_median", r.key_channel_max_over_median}});
  }
  return {{"seconds", report.seconds},
          {"backend_status", report.backend_status},
          {"kv", kv},
          {"effective_bits", report.effective_bits},
          {"quantized_weights", report.quantized_weights},
          {"window_length", report.window_length},
          {"window_starts", report.window_starts},
          {"inputs", inputs},
          {"linears", linears}};
}

// ---- the sequential pipeline

namespace {

// Channel order, outlier count, and the Hessian and clip-search sample (when the recipe asks) of one linear
// input.
struct InputPlan {
  std::vector<std::int32_t> perm;
  std::int64_t n_outliers = 0;
  std::unique_ptr<InputMoments> moments;  // null without calibration or when neither GPTQ nor clip search runs
};

class Quantizer {
 public:
  Quantizer(ModelSource source, std::span<const std::int32_t> calib_tokens, const QuantRecipe& recipe,
            const QuantizeOptions& options, QuantizeReport& report)
      : source_(std::move(source)), recipe_(recipe), options_(options), report_(report) {
    const ModelConfig& c = source_.config;
    recipe.kv_group_for(c.head_dim);  // a KV group that does not divide head_dim fails before any work
    calibrate_ = recipe.needs_calibration();
    if (calibrate_) {
      const std::int64_t length = std::min<std::int64_t>(recipe.calib_len, c.max_position_embeddings);
      report_.window_starts = calibration_window_starts(static_cast<std::int64_t>(calib_tokens.size()),
                                                        recipe.calib_windows, length, recipe.calib_seed);
      report_.window_length = length;
    }
    CalibrationSetup setup;
    setup.config = c;
    setup.recipe = recipe;
    setup.embed_tokens = *source_.embed_tokens;
    setup.tokens = calib_tokens;
    setup.window_starts = report_.window_starts;
    setup.window_length = report_.window_length;
    backend_ = options.backend ? options.backend(setup) : make_cpu_quantizer_backend(setup);
  }

  QuantizedModel run() {
    const ModelConfig& c = source_.config;
    QuantizedModel m;
    m.config = c;
    m.recipe = recipe_;
    m.embed_tokens = source_.embed_tokens;
    m.embed_dtype = source_.embed_dtype;
    m.final_norm = source_.final_norm;
    m.lm_head = source_.lm_head;
    m.lm_head_dtype = source_.lm_head_dtype;
    Progress progress("quantize", std::int64_t{c.num_layers} * 4, options_.show_progress);
    for (int i = 0; i < c.num_layers; ++i) m.layers.push_back(quantize_layer(i, progress));
    progress.finish();
    report_.backend_status = backend_->status();
    std::int64_t weights = 0;
    double bits = 0.0;
    for (const LinearReport& l : report_.linears) {
      weights += l.n * l.k;
      bits += static_cast<double>(l.n * l.k) *
              effective_bits_per_weight(l.k - l.n_outliers, l.n_outliers, l.group, recipe_.weight_format);
    }
    report_.quantized_weights = weights;
    report_.effective_bits = weights > 0 ? bits / static_cast<double>(weights) : 0.0;
    return m;
  }

 private:
  std::int64_t rows() const { return report_.window_length; }
  std::int64_t window_count() const { return static_cast<std::int64_t>(report_.window_starts.size()); }
  bool keep(std::int64_t width) const {
    return window_count() * rows() * width * static_cast<std::int64_t>(sizeof(float)) <=
           options_.activation_budget_bytes;
  }

  // smooth: called with the input's statistics before the channel order is chosen (SmoothQuant); it may
  // rescale the weights and the norm, and must rescale the statistics to match.
  InputPlan plan_input(CalibrationInput* input, std::int64_t k, int layer, const char* input_name,
                       const std::function<void(ChannelStats&)>& smooth) {
    InputPlan plan;
    plan.n_outliers = recipe_.outlier_count(k);
    plan.perm.resize(static_cast<std::size_t>(k));
    std::iota(plan.perm.begin(), plan.perm.end(), 0);
    if (!calibrate_) return plan;
    ATOM_CHECK(input != nullptr && input->width() == k);
    ChannelStats stats = input->channel_stats();
    if (smooth) smooth(stats);
    if (plan.n_outliers > 0) plan.perm = reorder_by_sum_of_squares(stats.sum_sq);
    report_input(stats, plan, layer, input_name);
    if (!recipe_.gptq && !recipe_.search_clip) return plan;
    const ActivationQuant act = activation_quant(recipe_, k - plan.n_outliers, plan.n_outliers);
    plan.moments = input->moments(plan.perm, act, recipe_.gptq, recipe_.search_clip);
    return plan;
  }

  void report_kv(const KvErrorStats& s, int layer) {
    KvReport r;
    r.layer = layer;
    r.key_rel_error = std::sqrt(s.key_err_sq / s.key_sq);
    r.value_rel_error = s.value_sq > 0.0 ? std::sqrt(s.value_err_sq / s.value_sq) : 0.0;
    std::vector<double> ch = s.key_channel_sq;
    const double max = *std::max_element(ch.begin(), ch.end());
    std::nth_element(ch.begin(), ch.begin() + static_cast<std::ptrdiff_t>(ch.size() / 2), ch.end());
    const double median = ch[ch.size() / 2];
    r.key_channel_max_over_median = median > 0.0 ? std::sqrt(max / median) : 0.0;
    report_.kv.push_back(r);
  }

  void report_input(const ChannelStats& stats, const InputPlan& plan, int layer, const char* input_name) {
    const auto k = static_cast<std::int64_t>(stats.sum_sq.size());
    const double tokens = static_cast<double>(window_count() * rows());
    std::vector<double> rms(stats.sum_sq.size());
    for (std::size_t j = 0; j < rms.size(); ++j) rms[j] = std::sqrt(stats.sum_sq[j] / tokens);
    InputReport r;
    r.layer = layer;
    r.input = input_name;
    r.k = k;
    r.n_outliers = plan.n_outliers;
    r.max_rms = *std::max_element(rms.begin(), rms.end());
    std::vector<double> sorted = rms;
    std::nth_element(sorted.begin(), sorted.begin() + k / 2, sorted.end());
    r.median_rms = sorted[static_cast<std::size_t>(k / 2)];
    double total = 0.0, outlier = 0.0;
    for (std::int64_t j = 0; j < k; ++j) {
      total += stats.sum_sq[plan.perm[j]];
      if (j >= k - plan.n_outliers) outlier += stats.sum_sq[plan.perm[j]];
    }
    r.outlier_energy = total > 0.0 ? outlier / total : 0.0;
    report_.inputs.push_back(r);
  }

  struct LinearInput {
    const std::vector<float>* weight;  // [n, k], original channel order
    std::int64_t n;
    std::vector<float> bias;
    std::string name;
  };

  // Quantizes the linears reading one input. They share its Hessian and channel order, and GPTQ treats output
  // rows independently, so they are stacked into one matrix: one factorization of the Hessian, one call (the
  // same codes as separate calls). The clip search, when on, picks one ratio for the stack.
  std::vector<QuantizedLinear> quantize_linears(std::vector<LinearInput> linears, const InputPlan& plan) {
    const auto k = static_cast<std::int64_t>(plan.perm.size());
    const std::int64_t k_normal = k - plan.n_outliers;
    std::int64_t n = 0;
    for (const LinearInput& l : linears) n += l.n;
    std::vector<float> stacked;
    if (linears.size() > 1) {
      stacked.reserve(static_cast<std::size_t>(n * k));
      for (const LinearInput& l : linears) stacked.insert(stacked.end(), l.weight->begin(), l.weight->end());
    }
    const std::span<const float> w =
        linears.size() > 1 ? std::span<const float>(stacked) : *linears.front().weight;
    std::string name = linears.front().name;
    for (std::size_t i = 1; i < linears.size(); ++i)
      name += "+" + linears[i].name.substr(linears[i].name.rfind('.') + 1);
    WeightQuantSpec spec;
    spec.format = recipe_.weight_format;
    spec.group = recipe_.group_for(k_normal);
    spec.n_outliers = plan.n_outliers;
    GptqOptions gptq;
    gptq.percdamp = recipe_.percdamp;
    gptq.block = recipe_.gptq_block;
    const auto quantize = [&](float clip, GptqReport* rep) {
      spec.clip = clip;
      return recipe_.gptq ? backend_->gptq(w, n, *plan.moments, plan.perm, spec, gptq, name.c_str(), rep)
                          : rtn_quantize(w, n, plan.perm, spec);
    };
    float clip = recipe_.w_clip;
    if (recipe_.search_clip) {
      const ActQuantSpec act{recipe_.act_format, recipe_.group_for(k_normal), plan.n_outliers,
                             recipe_.a_clip};
      const ClipSearchResult found = search_clip(default_clip_grid(), [&](float c) {
        return backend_->output_mse(*plan.moments, w, quantize(c, nullptr),
                                    recipe_.quantize_activations ? &act : nullptr);
      });
      clip = found.best_clip;
    }
    GptqReport rep;
    const QuantizedLinearWeights all = quantize(clip, &rep);

    std::vector<QuantizedLinear> out;
    std::int64_t row = 0;
    for (LinearInput& l : linears) {
      QuantizedLinear ql;
      ql.weights = output_rows(all, row, l.n);
      ql.bias = std::move(l.bias);
      if (recipe_.outlier_precision == OutlierPrecision::kFp16 && plan.n_outliers > 0) {
        ql.fp16_outlier_columns.resize(static_cast<std::size_t>(l.n * plan.n_outliers));
        for (std::int64_t r = 0; r < l.n; ++r) {
          for (std::int64_t o = 0; o < plan.n_outliers; ++o) {
            const float v = (*l.weight)[static_cast<std::size_t>(r * k + plan.perm[k_normal + o])];
            ql.fp16_outlier_columns[r * plan.n_outliers + o] = fp16_to_fp32(fp32_to_fp16(v));
          }
        }
      }
      LinearReport lr;
      lr.name = l.name;
      lr.n = l.n;
      lr.k = k;
      lr.n_outliers = plan.n_outliers;
      lr.group = spec.group;
      lr.w_clip = clip;
      lr.gptq_loss = rep.loss;
      lr.dead_columns = rep.dead_columns;
      report_.linears.push_back(lr);
      out.push_back(std::move(ql));
      row += l.n;
    }
    return out;
  }

  // SmoothQuant on one norm-fed input: s from the activation and weight maxima, folded into the norm.
  std::function<void(ChannelStats&)> smoothing(std::vector<float>& norm,
                                               std::initializer_list<std::vector<float>*> ws,
                                               std::int64_t k) {
    if (!recipe_.smoothquant) return {};
    return [this, &norm, ws = std::vector<std::vector<float>*>(ws), k](ChannelStats& stats) {
      std::vector<float> weight_absmax;
      for (std::vector<float>* w : ws) {
        accumulate_weight_absmax(*w, static_cast<std::int64_t>(w->size()) / k, k, weight_absmax);
      }
      const std::vector<float> s = smoothquant_scales(stats.absmax, weight_absmax, recipe_.smooth_alpha);
      for (std::vector<float>* w : ws) apply_smoothing(s, *w, static_cast<std::int64_t>(w->size()) / k);
      fold_smoothing_into_norm(s, norm);
      for (std::size_t j = 0; j < s.size(); ++j) {
        stats.sum_sq[j] /= static_cast<double>(s[j]) * s[j];
        stats.absmax[j] /= s[j];
      }
    };
  }

  // One decoder layer in execution order; each step's calibration inputs live only as long as the step.
  QuantizedLayer quantize_layer(int li, Progress& progress) {
    LayerWeights w = source_.layer(li);
    QuantizedLayer ql;
    ql.input_norm = std::move(w.input_norm);
    ql.post_attention_norm = std::move(w.post_attention_norm);
    // Progress after each of the layer's 4 steps: throughput in calibration tokens through one layer per
    // second, and the backend's status (GPU memory).
    int steps_done = 0;
    const auto step = [&](const char* what) {
      ++steps_done;
      std::string detail = fmt::format("layer {}/{} {}", li + 1, source_.config.num_layers, what);
      const double seconds = progress.elapsed_seconds(), layers = li + steps_done / 4.0;
      if (calibrate_ && seconds > 0.0)
        detail += fmt::format(", {:.0f} tokens/s", static_cast<double>(window_count() * rows()) * layers / seconds);
      const std::string status = backend_->status();
      if (!status.empty()) detail += ", " + status;
      progress.advance(1, detail);
    };
    quantize_qkv(li, w, ql);
    step("q/k/v");
    quantize_o_proj(li, w, ql);
    step("o_proj");
    quantize_gate_up(li, w, ql);
    step("gate/up");
    quantize_down_proj(li, w, ql);
    step("down_proj");
    return ql;
  }

  std::int64_t hidden() const { return source_.config.hidden_size; }
  std::int64_t q_dim() const { return std::int64_t{source_.config.num_heads} * source_.config.head_dim; }
  std::int64_t kv_dim() const { return std::int64_t{source_.config.num_kv_heads} * source_.config.head_dim; }
  std::int64_t inter() const { return source_.config.intermediate_size; }

  // q/k/v read input_layernorm's output (recomputed on each visit: cheap).
  void quantize_qkv(int li, LayerWeights& w, QuantizedLayer& ql) {
    std::unique_ptr<CalibrationInput> in;
    if (calibrate_) in = backend_->normed_input(ql.input_norm);
    const InputPlan plan = plan_input(in.get(), hidden(), li, "attn_in",
                                      smoothing(ql.input_norm, {&w.q_proj, &w.k_proj, &w.v_proj}, hidden()));
    std::vector<QuantizedLinear> qkv =
        quantize_linears({{&w.q_proj, q_dim(), std::move(w.q_bias), linear_name(li, "self_attn.q_proj")},
                          {&w.k_proj, kv_dim(), std::move(w.k_bias), linear_name(li, "self_attn.k_proj")},
                          {&w.v_proj, kv_dim(), std::move(w.v_bias), linear_name(li, "self_attn.v_proj")}},
                         plan);
    ql.q_proj = std::move(qkv[0]);
    ql.k_proj = std::move(qkv[1]);
    ql.v_proj = std::move(qkv[2]);
  }

  // o_proj reads the attention output, computed through the quantized q/k/v and the recipe's KV store; the
  // windows then take the quantized o_proj's residual branch.
  void quantize_o_proj(int li, LayerWeights& w, QuantizedLayer& ql) {
    KvErrorStats kv_stats;
    std::unique_ptr<CalibrationInput> in;
    if (calibrate_) {
      const NamedLinear q{&ql.q_proj, linear_name(li, "self_attn.q_proj")},
          k{&ql.k_proj, linear_name(li, "self_attn.k_proj")}, v{&ql.v_proj, linear_name(li, "self_attn.v_proj")};
      if (recipe_.has_kv_centering()) {
        LayerKvCenters centers = backend_->kv_centers(ql.input_norm, k, v);
        if (recipe_.kv_center_keys) ql.key_center = std::move(centers.keys);
        if (recipe_.kv_center_values) ql.value_center = std::move(centers.values);
      }
      in = backend_->attention_input(ql.input_norm, q, k, v, keep(q_dim()), &kv_stats, ql.key_center,
                                     ql.value_center);
    }
    const std::string name = linear_name(li, "self_attn.o_proj");
    if (recipe_.tensor_parallel > 1) {
      ql.o_proj_shards = quantize_row_parallel(in.get(), w.o_proj, q_dim(), li, "o_proj_in", name);
      ql.o_proj.bias = std::move(w.o_bias);  // the whole layer's, added once to the shards' sum
      if (in) in->add_sharded_projection(ql.o_proj_shards, ql.o_proj.bias, name);
    } else {
      const InputPlan plan = plan_input(in.get(), q_dim(), li, "o_proj_in", {});
      ql.o_proj = std::move(quantize_linears({{&w.o_proj, hidden(), std::move(w.o_bias), name}}, plan).front());
      if (in) in->add_projection(ql.o_proj, name);
    }
    if (kv_stats.key_sq > 0.0) report_kv(kv_stats, li);
  }

  // gate/up read post_attention_layernorm's output.
  void quantize_gate_up(int li, LayerWeights& w, QuantizedLayer& ql) {
    std::unique_ptr<CalibrationInput> in;
    if (calibrate_) in = backend_->normed_input(ql.post_attention_norm);
    const InputPlan plan = plan_input(in.get(), hidden(), li, "mlp_in",
                                      smoothing(ql.post_attention_norm, {&w.gate_proj, &w.up_proj}, hidden()));
    std::vector<QuantizedLinear> gate_up =
        quantize_linears({{&w.gate_proj, inter(), {}, linear_name(li, "mlp.gate_proj")},
                          {&w.up_proj, inter(), {}, linear_name(li, "mlp.up_proj")}},
                         plan);
    ql.gate_proj = std::move(gate_up[0]);
    ql.up_proj = std::move(gate_up[1]);
  }

  // down_proj reads SiLU(gate) * up through the quantized gate/up; the windows then take its residual branch.
  void quantize_down_proj(int li, LayerWeights& w, QuantizedLayer& ql) {
    std::unique_ptr<CalibrationInput> in;
    if (calibrate_) {
      in = backend_->down_proj_input(ql.post_attention_norm, {&ql.gate_proj, linear_name(li, "mlp.gate_proj")},
                                     {&ql.up_proj, linear_name(li, "mlp.up_proj")}, keep(inter()));
    }
    const std::string name = linear_name(li, "mlp.down_proj");
    if (recipe_.tensor_parallel > 1) {
      ql.down_proj_shards = quantize_row_parallel(in.get(), w.down_proj, inter(), li, "down_proj_in", name);
      if (in) in->add_sharded_projection(ql.down_proj_shards, {}, name);
    } else {
      const InputPlan plan = plan_input(in.get(), inter(), li, "down_proj_in", {});
      ql.down_proj = std::move(quantize_linears({{&w.down_proj, hidden(), {}, name}}, plan).front());
      if (in) in->add_projection(ql.down_proj, name);
    }
  }

  // A row-parallel linear (o_proj, down_proj) of a tensor-parallel layout: shard r of its k input channels,
  // [r k/N, (r + 1) k/N), gets its own channel order, outliers and groups from the shard's own calibration
  // statistics and Hessian, as rank r quantizes its slice of the input on its own.
  std::vector<QuantizedLinear> quantize_row_parallel(CalibrationInput* in, const std::vector<float>& weight,
                                                     std::int64_t k, int li, const char* input_name,
                                                     const std::string& name) {
    const int tp = recipe_.tensor_parallel;
    const std::int64_t n = hidden(), width = k / tp;
    std::vector<QuantizedLinear> shards;
    for (int r = 0; r < tp; ++r) {
      std::unique_ptr<CalibrationInput> part;
      if (in) part = in->columns(r * width, (r + 1) * width);
      const std::string shard_input = fmt::format("{}.tp_shards.{}", input_name, r);
      const InputPlan plan = plan_input(part.get(), width, li, shard_input.c_str(), {});
      std::vector<float> columns(static_cast<std::size_t>(n * width));
      for (std::int64_t row = 0; row < n; ++row) {
        std::copy_n(weight.begin() + row * k + r * width, width, columns.begin() + row * width);
      }
      shards.push_back(std::move(
          quantize_linears({{&columns, n, {}, fmt::format("{}.tp_shards.{}", name, r)}}, plan).front()));
    }
    return shards;
  }

  ModelSource source_;
  QuantRecipe recipe_;
  QuantizeOptions options_;
  QuantizeReport& report_;
  bool calibrate_ = false;
  std::unique_ptr<QuantizerBackend> backend_;
};

}  // namespace

void check_tensor_parallel_layout(const ModelConfig& config, const QuantRecipe& recipe) {
  const int tp = recipe.tensor_parallel;
  dist::check_tensor_parallel(config, tp);
  const std::int64_t q_dim = std::int64_t{config.num_heads} * config.head_dim;
  for (const auto& [what, k] : {std::pair{"o_proj", q_dim}, std::pair{"down_proj", std::int64_t{config.intermediate_size}}}) {
    try {
      recipe.outlier_count(k / tp);
    } catch (const Error& e) {
      fail("tensor_parallel {}: {}'s shards of {} input channels have no valid outlier count: {}", tp, what, k / tp,
           e.what());
    }
  }
}

QuantizedModel quantize_model(ModelSource source, std::span<const std::int32_t> calib_tokens,
                              const QuantRecipe& recipe, const QuantizeOptions& options,
                              QuantizeReport* report) {
  recipe.validate();
  source.config.validate("model config");
  if (recipe.tensor_parallel > 1) check_tensor_parallel_layout(source.config, recipe);
  cpu::use_single_threaded_blas();  // OpenMP threads only (GPTQ and the products): no spinning BLAS threads
  const auto start = std::chrono::steady_clock::now();
  QuantizeReport local;
  QuantizeReport& rep = report ? *report : local;
  rep = QuantizeReport{};
  if (recipe.has_offline_rotation()) source = rotate_model_source(std::move(source), recipe);
  QuantizedModel m = Quantizer(std::move(source), calib_tokens, recipe, options, rep).run();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return m;
}

}  // namespace atom::quant
