// atom eval ablation: the Atom paper's ablation ladder and the baselines on one model: perplexity,
// quantization time and bits per weight per row, with the settings that produced them.
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>

#include "backend/cpu/llama_model.h"
#include "commands.h"
#include "common/error.h"
#include "eval/ablation.h"
#include "io/checkpoint.h"
#include "model/weights.h"
#include "text_file.h"
#include "tokenizer/checkpoint_tokenizer.h"

namespace atom::cli {

namespace {

struct AblationCliOptions {
  std::string model, calib, text, out, rows, exec = "fake", attribution_preset = "atom-w4a4",
                                             outlier_rows = "kv4";
  // Defaults: every row in about 25 minutes on 2 shared cores (a report states the settings of its run).
  std::int64_t calib_windows = 16, calib_len = 256, group = 128, ctx = 512, stride = 0, max_windows = 8;
  std::uint64_t seed = 0;
  bool json = false, outlier_table = false, attribution = false, quiet = false;
};

std::string machine_description() {
  std::string cpu = "unknown CPU";
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);) {
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  }
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return fmt::format("{} ({}), {} OpenMP threads", host, cpu, omp_get_max_threads());
}

void run_ablation_command(const AblationCliOptions& opt) {
  const Checkpoint ckpt = open_checkpoint(opt.model);
  const Tokenizer tokenizer = load_tokenizer(ckpt);
  // Both texts are encoded as `atom eval ppl` encodes its text; calibration windows come from --calib only.
  const std::vector<std::int32_t> calib_tokens =
      tokenizer.encode(read_text_file(opt.calib, "calibration text"), true);
  const std::vector<std::int32_t> eval_tokens = tokenizer.encode(read_text_file(opt.text, "text file"), true);

  quant::QuantRecipe settings;
  settings.calib_windows = opt.calib_windows;
  settings.calib_len = std::min<std::int64_t>(opt.calib_len, ckpt.config.max_position_embeddings);
  settings.calib_seed = opt.seed;
  settings.group = opt.group;
  std::vector<AblationRow> rows = default_ablation_rows(settings, ckpt.config);
  if (!opt.rows.empty()) {
    std::set<std::string> wanted;
    std::stringstream list(opt.rows);
    for (std::string id; std::getline(list, id, ',');) wanted.insert(id);
    std::vector<AblationRow> chosen;
    for (const AblationRow& r : rows) {
      if (wanted.erase(r.id)) chosen.push_back(r);
    }
    if (!wanted.empty()) {
      std::string ids;
      for (const AblationRow& r : rows) ids += (ids.empty() ? "" : ", ") + r.id;
      fail("--rows: unknown row '{}' (rows: {})", *wanted.begin(), ids);
    }
    rows = chosen;
  }

  AblationOptions options;
  options.eval.context = std::min<std::int64_t>(opt.ctx, ckpt.config.max_position_embeddings);
  options.eval.stride = opt.stride > 0 ? opt.stride : options.eval.context;
  options.eval.max_windows = opt.max_windows;
  options.execution = opt.exec == "integer" ? AblationExecution::kInteger
                      : opt.exec == "auto"  ? AblationExecution::kAuto
                                            : AblationExecution::kFakeQuant;
  options.show_progress = !opt.quiet;

  const auto now = std::chrono::system_clock::now();
  const std::string settings_text = fmt::format(
      "model {}; calibration {} windows x {} tokens (seed {}) from {} ({} tokens); evaluation {} ({} "
      "tokens), ctx {}, "
      "stride {}, {}; group {}; execution {}; {}; {:%Y-%m-%d %H:%M} UTC",
      opt.model, settings.calib_windows, settings.calib_len, settings.calib_seed, opt.calib,
      calib_tokens.size(), opt.text, eval_tokens.size(), options.eval.context, options.eval.stride,
      options.eval.max_windows > 0 ? fmt::format("first {} windows", options.eval.max_windows)
                                   : "all windows",
      settings.group, opt.exec, machine_description(),
      fmt::gmtime(std::chrono::system_clock::to_time_t(now)));
  fmt::print("ablation: {}\n", settings_text);

  AblationModel model;
  model.source = [&ckpt] { return quant::model_source(ckpt); };
  model.fp_model = [&ckpt] {
    return std::make_unique<cpu::LlamaModel>(load_llama_weights(ckpt.config, *ckpt.tensors));
  };
  const auto start = std::chrono::steady_clock::now();
  const std::vector<AblationResult> results =
      run_ablation(model, calib_tokens, eval_tokens, rows, options, [](const AblationResult& r) {
        fmt::print("{:<42} ppl {:.3f} ({:+.1f}%)  {:.2f} bits/w  quantize {:.1f}s  eval {:.1f}s\n",
                   r.row.name, r.ppl.perplexity, r.delta_percent, r.row.recipe ? r.effective_bits : 32.0,
                   r.quantize_seconds, r.ppl.seconds);
        std::fflush(stdout);
      });
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print("\n{}", ablation_table(results, false));
  fmt::print("total {:.1f}s ({:.1f} min); {} tokens scored per row\n", total, total / 60.0,
             results.front().ppl.tokens_scored);
  std::vector<const AblationResult*> stat_rows;
  {
    std::set<std::string> wanted;
    std::stringstream list(opt.outlier_rows);
    for (std::string id; std::getline(list, id, ',');) wanted.insert(id);
    for (const AblationResult& r : results) {
      if (wanted.count(r.row.id) != 0 && !r.report.inputs.empty()) stat_rows.push_back(&r);
    }
  }
  if (opt.outlier_table) {
    for (const AblationResult* r : stat_rows)
      fmt::print("\nchannel statistics ({} row):\n{}", r->row.name, outlier_table(*r, false));
  }
  std::vector<AblationResult> attribution;
  if (opt.attribution) {
    quant::QuantRecipe atom = quant::preset_recipe(opt.attribution_preset);
    atom.calib_windows = settings.calib_windows;
    atom.calib_len = settings.calib_len;
    atom.calib_seed = settings.calib_seed;
    atom.group = settings.group;
    fmt::print("\nerror attribution of {}:\n", atom.describe());
    attribution =
        attribute_error(model, calib_tokens, eval_tokens, atom, options, [](const AblationResult& r) {
          fmt::print("{:<42} ppl {:.3f} ({:+.1f}%)  eval {:.1f}s\n", r.row.name, r.ppl.perplexity,
                     r.delta_percent, r.ppl.seconds);
          std::fflush(stdout);
        });
    fmt::print("\n{}", ablation_table(attribution, false));
  }
  const double total_with_attribution =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  nlohmann::json j = {{"settings", settings_text},
                      {"model", opt.model},
                      {"calib", opt.calib},
                      {"text", opt.text},
                      {"calib_windows", settings.calib_windows},
                      {"calib_len", settings.calib_len},
                      {"seed", settings.calib_seed},
                      {"ctx", options.eval.context},
                      {"stride", options.eval.stride},
                      {"max_windows", options.eval.max_windows},
                      {"execution", opt.exec},
                      {"machine", machine_description()},
                      {"total_seconds", total},
                      {"rows", nlohmann::json::array()}};
  for (const AblationResult& r : results) j["rows"].push_back(to_json(r));
  if (opt.attribution) {
    j["attribution"] = nlohmann::json::array();
    for (const AblationResult& r : attribution) j["attribution"].push_back(to_json(r));
    j["total_seconds_with_attribution"] = total_with_attribution;
  }
  if (!opt.out.empty()) {
    std::ofstream out(opt.out);
    if (opt.out.ends_with(".json")) {
      out << j.dump(1) << "\n";
    } else {
      out << "Settings: " << settings_text << "\n\n" << ablation_table(results, true);
      out << fmt::format("\nTotal {:.1f} min.\n", total / 60.0);
      if (opt.attribution) {
        out << "\nError attribution of " << opt.attribution_preset
            << " (one quantization; quantization switched on only where the row says, fp32 elsewhere):\n\n"
            << ablation_table(attribution, true)
            << fmt::format("\nTotal with the attribution {:.1f} min.\n", total_with_attribution / 60.0);
      }
      for (const AblationResult* stat_row : stat_rows) {
        out << "\nChannel statistics of the " << stat_row->row.name
            << " row on the calibration tokens: per linear input, the "
               "largest "
               "channel RMS over the median one and the share of the activation energy the outlier channels "
               "hold; "
               "the relative error the INT4 KV cache puts on keys and values, and the largest key channel "
               "RMS "
               "over the median one:\n\n"
            << outlier_table(*stat_row, true);
      }
    }
    out.close();
    if (!out) fail("cannot write '{}'", opt.out);
  }
  if (opt.json) fmt::print("{}\n", j.dump());
}

}  // namespace

void add_eval_ablation_command(CLI::App* eval) {
  auto opt = std::make_shared<AblationCliOptions>();
  auto* cmd = eval->add_subcommand(
      "ablation", "The Atom ablation ladder and baselines: perplexity per quantization step");
  cmd->add_option("--model,-m", opt->model, "GGUF file or Hugging Face model directory (unquantized)")
      ->required();
  cmd->add_option("--calib", opt->calib, "Calibration text (a training split)")->required();
  cmd->add_option("--text", opt->text, "Evaluation text (the matching test split)")->required();
  cmd->add_option("--calib-windows", opt->calib_windows, "Calibration windows per row (default 16)")
      ->check(positive_number());
  cmd->add_option("--calib-len", opt->calib_len, "Tokens per calibration window (default 256)")
      ->check(CLI::Range(std::int64_t{2}, std::int64_t{1} << 20));
  cmd->add_option("--seed", opt->seed, "Seed of the calibration windows");
  cmd->add_option("--group-size", opt->group, "Group size of the grouped rows (default 128)")
      ->check(positive_number());
  cmd->add_option("--ctx", opt->ctx, "Evaluation window (default 512, capped by the model's context)")
      ->check(CLI::Range(std::int64_t{2}, std::int64_t{1} << 20));
  cmd->add_option("--stride", opt->stride, "Advance between evaluation windows (default: ctx)")
      ->check(non_negative_number());
  cmd->add_option("--max-windows", opt->max_windows,
                  "Evaluate the first N windows (default 8; 0: the whole text)")
      ->check(non_negative_number());
  cmd->add_option("--rows", opt->rows,
                  "Comma-separated row ids (default: all): fp, w4a4-rtn, outliers-fp16, "
                  "outliers-int8, group, clip, gptq, kv4, atom-w3a3, atom-fp4, w8a8-smoothquant, "
                  "w4a16-gptq, w4a16-rtn, w8a16-rtn, w4a16-g32-gptq, atom-qk, quarot-w4a4, atom-rot-w4a4, quarot-w8a8, "
                  "atom-rot-kvfp, kv4-only, kv4-qk-only, kv4-kc-only, kv4-qk-kc-only, kv4-qk-kvc-only, "
                  "kv4-qk-r2-kc-only, kv4-qk-r2-kc-g32-only, kv4-qk-kc-g32-only, kv4-qk-kc-g16-only, "
                  "kv8-only, kv8-kc-only, "
                  "atom-qk-down, atom-qk-down-kc, atom-qk-down-kc-g32, atom-qk-down-kvc, atom-qk-down-r2-kc");
  cmd->add_option("--exec", opt->exec,
                  "fake (quantize-dequantize, products summed in fp64), integer (the integer kernels; "
                  "every row must have them) or auto")
      ->check(CLI::IsMember({"fake", "integer", "auto"}));
  cmd->add_flag("--outlier-table", opt->outlier_table, "Print per-layer channel statistics of the Atom row");
  cmd->add_option("--outlier-rows", opt->outlier_rows,
                  "Comma-separated row ids whose channel statistics --outlier-table shows (default kv4)");
  cmd->add_flag("--attribution", opt->attribution,
                "Also attribute Atom W4A4's error: weights only, activations only (per input kind), KV only");
  cmd->add_option("--attribution-preset", opt->attribution_preset,
                  "Preset whose error --attribution breaks down (default atom-w4a4)");
  cmd->add_option("--out", opt->out, "Save the report: markdown, or JSON when FILE ends in .json");
  cmd->add_flag("--json", opt->json, "Print one JSON object as the last stdout line");
  cmd->add_flag("--quiet,-q", opt->quiet, "No progress bars");
  cmd->callback([opt] { run_ablation_command(*opt); });
}

}  // namespace atom::cli
