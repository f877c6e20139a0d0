// atom eval ppl: perplexity of a checkpoint on a text file (HF's sliding-window recipe).
#include <fmt/format.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "backend/cpu/atom_model_loader.h"
#include "backend/cpu/llama_model.h"
#include "commands.h"
#include "common/error.h"
#include "eval/perplexity.h"
#include "engine/engine.h"
#include "io/checkpoint.h"
#include "serving_backend.h"
#include "text_file.h"
#include "tokenizer/checkpoint_tokenizer.h"

namespace atom::cli {

namespace {

struct PplOptions {
  std::string model, text;
  std::int64_t ctx = 2048, stride = 0, max_windows = 0;
  bool json = false;
  std::string device = "cpu";
  int parallel_windows = 16;
};

void run_ppl(const PplOptions& opt) {
  const std::string text = read_text_file(opt.text, "text file");
  const Checkpoint ckpt = open_checkpoint(opt.model);
  const Tokenizer tokenizer = load_tokenizer(ckpt);
  // The whole file is one document, encoded as HF's tokenizer(text) does (special tokens per the tokenizer).
  const std::vector<std::int32_t> tokens = tokenizer.encode(text, /*add_special_tokens=*/true);
  PerplexityOptions options;
  options.context = std::min<std::int64_t>(opt.ctx, ckpt.config.max_position_embeddings);
  options.stride = opt.stride > 0 ? opt.stride : options.context;
  options.max_windows = opt.max_windows;
  PerplexityResult r;
  if (opt.device == "cpu") {
    const std::unique_ptr<cpu::LlamaModel> model = cpu::load_cpu_model(ckpt);
    r = perplexity(*model, tokens, options);
  } else {
    // The serving path of the device: decode steps over its paged KV cache in the checkpoint's format.
    BackendOptions backend;
    backend.device = opt.device;
    const ServingBackend serving = load_serving_backend(opt.model, backend);
    EngineConfig config;
    config.limits.max_batch = opt.parallel_windows;
    config.limits.max_batched_tokens = opt.parallel_windows;
    config.max_context = static_cast<int>(options.context);
    const std::unique_ptr<ModelRunner> runner = serving.make_runner(config);
    fmt::print("{}: {}\n", opt.device, runner->describe());
    r = perplexity(*runner, tokens, options, opt.parallel_windows);
  }
  fmt::print("perplexity {:.4f}  tokens scored {}  windows {}  (ctx {}, stride {})  {:.1f}s  {:.1f} tok/s\n",
             r.perplexity, r.tokens_scored, r.windows, options.context, options.stride, r.seconds,
             r.tokens_scored / r.seconds);
  if (opt.json) {
    const nlohmann::json j = {{"model", opt.model},         {"text", opt.text},  {"device", opt.device},
                              {"ppl", r.perplexity},        {"nll_sum", r.nll_sum},
                              {"tokens", r.tokens_scored},  {"windows", r.windows},
                              {"ctx", options.context},     {"stride", options.stride},
                              {"seconds", r.seconds}};
    fmt::print("{}\n", j.dump());
  }
}

}  // namespace

CLI::App* add_eval_command(CLI::App& app) {
  auto* eval = app.add_subcommand("eval", "Evaluate a checkpoint (perplexity, ...)");
  eval->require_subcommand(1);

  auto opt = std::make_shared<PplOptions>();
  auto* ppl = eval->add_subcommand("ppl", "Perplexity on a text file");
  ppl->add_option("--model,-m", opt->model, "GGUF file or Hugging Face model directory")->required();
  ppl->add_option("--text", opt->text, "UTF-8 text file, scored as one document")->required();
  ppl->add_option("--ctx", opt->ctx, "Tokens per window (capped by the model's context)")
      ->check(CLI::Range(std::int64_t{2}, std::int64_t{1} << 20));
  ppl->add_option("--stride", opt->stride, "Advance between windows (default: ctx)")
      ->check(non_negative_number());
  ppl->add_option("--max-windows", opt->max_windows, "Stop after N windows (0: all)")
      ->check(non_negative_number());
  ppl->add_flag("--json", opt->json, "Print one JSON object as the last stdout line");
  ppl->add_option("--device", opt->device,
                  "cpu: whole-window forwards (the reference); cuda: the serving path, one token per decode step over "
                  "the paged KV cache")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  ppl->add_option("--parallel-windows", opt->parallel_windows, "cuda: windows run side by side as one batch")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  ppl->callback([opt] { run_ppl(*opt); });
  return eval;
}

}  // namespace atom::cli
