// atom quantize: a checkpoint + calibration text -> an Atom checkpoint directory (docs/FORMAT.md), with the
// Atom recipe or one of the baselines the same tool produces.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "commands.h"
#include "common/error.h"
#include "format/atom_checkpoint.h"
#include "format/recipe.h"
#include "io/checkpoint.h"
#include "quant/quantizer.h"
#include "text_file.h"
#include "tokenizer/checkpoint_tokenizer.h"
#ifdef ATOM_WITH_CUDA
#include "quant/cuda/cuda_quantizer_backend.h"
#endif

namespace atom::cli {

namespace {
namespace fs = std::filesystem;

struct QuantizeOptions {
  std::string model, calib, out, preset = "atom-w4a4", report, device = "cpu";
  std::optional<std::string> kv_centering;
  std::optional<int> wbits, abits, kv_bits;
  std::optional<std::int64_t> group, outliers, calib_windows, calib_len, kv_group_size;
  std::optional<float> a_clip, w_clip, smooth_alpha;
  std::optional<std::uint64_t> seed, rotation_seed;
  int tensor_parallel = 1;
  bool search_clip = false, no_gptq = false, force = false, quiet = false, qk_hadamard = false,
       down_hadamard = false;
};

// What `atom quantize` centers in a quantized KV cache unless --kv-centering says otherwise.
constexpr const char* kDefaultKvCentering = "keys";

quant::NumberFormat int_format(int bits, const char* option) {
  switch (bits) {
    case 3:
      return quant::NumberFormat::kInt3;
    case 4:
      return quant::NumberFormat::kInt4;
    case 8:
      return quant::NumberFormat::kInt8;
  }
  fail("{} {}: expected 3, 4 or 8", option, bits);
}

quant::QuantRecipe recipe_from(const QuantizeOptions& o) {
  quant::QuantRecipe r = quant::preset_recipe(o.preset);
  if (o.wbits) r.weight_format = int_format(*o.wbits, "--wbits");
  if (o.abits) {
    r.quantize_activations = *o.abits != 16;
    if (r.quantize_activations) r.act_format = int_format(*o.abits, "--abits");
  }
  if (o.group) r.group = *o.group;
  if (o.outliers) r.outliers = *o.outliers;
  if (o.a_clip) r.a_clip = *o.a_clip;
  if (o.w_clip) r.w_clip = *o.w_clip;
  if (o.search_clip) r.search_clip = true;
  if (o.no_gptq) r.gptq = false;
  if (o.kv_bits) r.kv_bits = *o.kv_bits;
  if (o.kv_group_size) r.kv_group_size = *o.kv_group_size;
  if (o.calib_windows) r.calib_windows = *o.calib_windows;
  if (o.calib_len) r.calib_len = *o.calib_len;
  if (o.seed) r.calib_seed = *o.seed;
  if (o.qk_hadamard) r.qk_hadamard = true;
  if (o.down_hadamard) r.down_hadamard = true;
  if (o.rotation_seed) r.rotation_seed = *o.rotation_seed;
  if (o.tensor_parallel > 1 && o.device == "cuda") {
    fail("--tensor-parallel {} --device cuda: the GPU quantizer does not quantize tensor-parallel layouts yet "
         "(quantize with --device cpu)", o.tensor_parallel);
  }
  r.tensor_parallel = o.tensor_parallel;
  if (o.smooth_alpha) {
    r.smoothquant = true;
    r.smooth_alpha = *o.smooth_alpha;
  }
  // KV centering: on by default whenever the KV cache is quantized (exact, and it narrows the cache's range),
  // except on the GPU quantizer, which does not calibrate it yet.
  const bool gpu = o.device == "cuda";
  const std::string centering = o.kv_centering.value_or(r.kv_bits == 16 || gpu ? "off" : kDefaultKvCentering);
  if (centering != "off" && gpu) {
    fail("--kv-centering {} --device cuda: the GPU quantizer does not calibrate KV centering yet (quantize with "
         "--device cpu, or pass --kv-centering off)", centering);
  }
  if (centering != "off" && r.kv_bits == 16) {
    fail("--kv-centering {}: the KV cache is not quantized (kv_bits 16); centering needs --kv-bits 4 or 8", centering);
  }
  // Values are not offered: centering them measured worse than none (docs/RESULTS.md), and the CUDA runner does not
  // implement it; the recipe field exists for the ablation's evidence.
  r.kv_center_keys = centering == "keys";
  r.validate();
  return r;
}

// Where the quantizer runs: the CPU, or a GPU (checked before any loading, so a missing GPU fails at once).
void choose_device(const std::string& device, quant::QuantizeOptions& qopt) {
  if (device == "cpu") return;
#ifdef ATOM_WITH_CUDA
  qopt.activation_budget_bytes = quant::cuda_activation_budget_bytes();
  qopt.backend = quant::cuda_quantizer_backend();
#else
  (void)qopt;
  fail("--device {}: this atom was built without the CUDA backend (nvcc was not found at configure time)", device);
#endif
}

void run_quantize(const QuantizeOptions& opt) {
  const auto start = std::chrono::steady_clock::now();
  const quant::QuantRecipe recipe = recipe_from(opt);
  quant::QuantizeOptions qopt;
  qopt.show_progress = !opt.quiet;
  choose_device(opt.device, qopt);
  if (recipe.needs_calibration() && opt.calib.empty()) {
    fail("--calib FILE is required: this recipe ({}) calibrates on a text", recipe.describe());
  }
  std::error_code ec;
  if (fs::exists(fs::symlink_status(opt.out, ec)) && !opt.force) {
    fail("output '{}' already exists; pass --force to replace it", opt.out);
  }
  const Checkpoint ckpt = open_checkpoint(opt.model);
  if (recipe.tensor_parallel > 1) quant::check_tensor_parallel_layout(ckpt.config, recipe);  // before calibrating
  const Tokenizer tokenizer = load_tokenizer(ckpt);
  std::vector<std::int32_t> calib_tokens;
  if (recipe.needs_calibration()) {
    const std::string text = read_text_file(opt.calib, "calibration text");
    calib_tokens = tokenizer.encode(text, /*add_special_tokens=*/true);
  }
  const std::int64_t window = std::min<std::int64_t>(recipe.calib_len, ckpt.config.max_position_embeddings);
  fmt::print(stderr, "quantizing {} ({} layers) with {} on the {}: {}\n", opt.model, ckpt.config.num_layers,
             recipe.preset, opt.device == "cuda" ? "GPU" : "CPU", recipe.describe());
  if (recipe.needs_calibration()) {
    fmt::print(stderr, "calibration: {} windows x {} tokens from '{}' ({} tokens), seed {}\n",
               recipe.calib_windows, window, opt.calib, calib_tokens.size(), recipe.calib_seed);
  } else {
    fmt::print(stderr, "no calibration needed (round to nearest, no outliers)\n");
  }

  quant::QuantizeReport report;
  const quant::QuantizedModel model =
      quant::quantize_model(quant::model_source(ckpt), calib_tokens, recipe, qopt, &report);

  quant::AtomCheckpointFiles files;
  files.tokenizer_json = tokenizer.to_hf_tokenizer_json();
  files.tokenizer_config_json = tokenizer.to_hf_tokenizer_config_json();
  if (auto bos = tokenizer.bos_id()) files.config_extras.bos_token_id = *bos;
  if (!tokenizer.eos_ids().empty()) files.config_extras.eos_token_id = tokenizer.eos_ids().front();
  files.calibration_data = recipe.needs_calibration() ? fs::path(opt.calib).filename().string() : "";
  quant::save_atom_checkpoint(opt.out, model, files, opt.force);

  std::uintmax_t bytes = 0, tensor_bytes = 0;
  for (const auto& entry : fs::directory_iterator(opt.out)) {
    if (!entry.is_regular_file()) continue;
    bytes += entry.file_size();
    if (entry.path().extension() == ".safetensors") tensor_bytes += entry.file_size();
  }
  const quant::StorageSummary storage = quant::storage_summary(model);
  const auto mb = [](double b) { return b / 1e6; };
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print("wrote {}: {:.1f} MB on disk (tensors {:.1f} MB); the same model at fp16: {:.1f} MB ({:.2f}x)\n",
             opt.out, mb(double(bytes)), mb(double(tensor_bytes)), mb(double(storage.fp16_model_bytes())),
             double(bytes) / double(storage.fp16_model_bytes()));
  fmt::print("linear layers: {} weights in {:.1f} MB = {:.3f} bits/weight (codes {:.1f} MB, scales {:.1f} MB, "
             "outliers {:.1f} MB, permutations {:.2f} MB; fp16 {:.1f} MB)\n",
             storage.linear_weights, mb(double(storage.linear_bytes())), storage.bits_per_weight(),
             mb(double(storage.code_bytes)), mb(double(storage.scale_bytes)), mb(double(storage.outlier_bytes)),
             mb(double(storage.perm_bytes)), mb(double(storage.fp16_linear_bytes())));
  fmt::print("quantized in {:.1f}s ({:.1f}s wall with loading, tokenizing and writing){}\n", report.seconds, wall,
             report.backend_status.empty() ? "" : "; " + report.backend_status);
  if (!opt.report.empty()) {
    nlohmann::json j = quant::to_json(report);
    j["recipe"] = recipe.to_json();
    j["model"] = opt.model;
    j["calib"] = opt.calib;
    j["storage"] = quant::to_json(storage);
    j["checkpoint_bytes"] = bytes;
    j["wall_seconds"] = wall;
    std::ofstream out(opt.report);
    out << j.dump(1) << "\n";
    out.close();
    if (!out) fail("cannot write report '{}'", opt.report);
  }
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  auto opt = std::make_shared<QuantizeOptions>();
  auto* cmd = app.add_subcommand("quantize", "Quantize a checkpoint to an Atom checkpoint directory");
  cmd->add_option("--model,-m", opt->model, "GGUF file or Hugging Face model directory")->required();
  cmd->add_option("--calib", opt->calib, "Calibration text (UTF-8; a training split, never the test text)");
  cmd->add_option("--out,-o", opt->out, "Output directory (must not exist unless --force)")->required();
  std::string presets;
  for (const auto& p : quant::preset_names()) presets += (presets.empty() ? "" : " | ") + p;
  cmd->add_option("--preset", opt->preset, "Recipe: " + presets)->check(CLI::IsMember(quant::preset_names()));
  cmd->add_option("--wbits", opt->wbits, "Weight bits (INT3/INT4/INT8) instead of the preset's")
      ->check(CLI::IsMember({3, 4, 8}));
  cmd->add_option("--abits", opt->abits, "Activation bits (3, 4, 8; 16 = weight-only)")
      ->check(CLI::IsMember({3, 4, 8, 16}));
  cmd->add_option("--group-size", opt->group, "Group size along K (0: one group per row)")
      ->check(non_negative_number());
  cmd->add_option("--outliers", opt->outliers,
                  "Outlier channels per linear input (-1: default rule, 0: none)")
      ->check(CLI::Range(std::int64_t{-1}, std::int64_t{1} << 20));
  cmd->add_option("--a-clip", opt->a_clip, "Activation clip ratio in (0, 1]");
  cmd->add_option("--w-clip", opt->w_clip, "Weight clip ratio in (0, 1]");
  cmd->add_flag("--search-clip", opt->search_clip, "Grid-search the weight clip ratio per linear layer");
  cmd->add_flag("--no-gptq", opt->no_gptq, "Round to nearest instead of GPTQ");
  cmd->add_flag("--qk-hadamard", opt->qk_hadamard,
                "Online Hadamard on Q and K after RoPE (any preset; what makes an INT4 KV cache cheap)");
  cmd->add_flag("--down-hadamard", opt->down_hadamard,
                "Online Hadamard on down_proj's input, its inverse folded into the weights (any preset; without "
                "rotating the residual stream, whose outlier channels Atom keeps in INT8)");
  cmd->add_option("--rotation-seed", opt->rotation_seed, "Seed of the random R1/R2 rotations (default 0)");
  cmd->add_option("--kv-bits", opt->kv_bits,
                  "KV cache: 4 or 8 (asymmetric per token, per --kv-group-size channels) or 16 (unquantized)")
      ->check(CLI::IsMember({4, 8, 16}));
  cmd->add_option("--kv-group-size", opt->kv_group_size,
                  "Channels per (scale, minimum) pair of a quantized KV row: 0 = head_dim (default), or a multiple "
                  "of 16 dividing head_dim (32: +0.5 bit per value at 4 bits, lower perplexity)")
      ->check(non_negative_number());
  cmd->add_option("--kv-centering", opt->kv_centering,
                  std::string("Subtract a calibrated mean key row per layer before the quantized KV cache stores a "
                              "key (exact; narrows the range UINT4 must cover): keys | off (default ") +
                      kDefaultKvCentering + " when --kv-bits is 4 or 8 on the CPU quantizer; off for 16 and on the GPU "
                      "quantizer)")
      ->check(CLI::IsMember({"keys", "off"}));
  cmd->add_option("--calib-windows", opt->calib_windows, "Calibration windows (default 128)")
      ->check(positive_number());
  cmd->add_option("--calib-len", opt->calib_len,
                  "Tokens per calibration window (default 2048, capped by the context)")
      ->check(CLI::Range(std::int64_t{2}, std::int64_t{1} << 20));
  cmd->add_option("--seed", opt->seed, "Seed of the calibration windows (default 0)");
  cmd->add_option("--smooth-alpha", opt->smooth_alpha, "SmoothQuant migration strength (turns smoothing on)");
  cmd->add_option("--tensor-parallel", opt->tensor_parallel,
                  "Lay the checkpoint out for N tensor-parallel ranks: o_proj and down_proj get their channel order, "
                  "outliers and groups per shard of their input (docs/FORMAT.md; default 1)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--report", opt->report,
                  "Write the quantization report (per-layer outliers, GPTQ loss) as JSON");
  cmd->add_option("--device", opt->device, "Where the quantizer runs: cpu (default) or cuda (the first GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_flag("--force", opt->force, "Replace an existing output directory");
  cmd->add_flag("--quiet,-q", opt->quiet, "No progress bar");
  cmd->callback([opt] { run_quantize(*opt); });
}

}  // namespace atom::cli
