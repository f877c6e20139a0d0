// atom eval mc: zero-shot multiple-choice accuracy (lm-eval's conventions) on jsonl task files.
#include <fmt/format.h>

#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/atom_model_loader.h"
#include "commands.h"
#include "common/error.h"
#include "eval/multiple_choice.h"
#include "io/checkpoint.h"
#include "tokenizer/checkpoint_tokenizer.h"

namespace atom::cli {

namespace {

struct McOptions {
  std::string model;
  std::vector<std::string> tasks;
  std::int64_t limit = 0;
  bool json = false, quiet = false;
};

void run_mc(const McOptions& opt) {
  std::vector<std::vector<McDoc>> files;
  for (const std::string& path : opt.tasks) files.push_back(read_mc_file(path, opt.limit));  // fail early
  const Checkpoint ckpt = open_checkpoint(opt.model);
  const Tokenizer tokenizer = load_tokenizer(ckpt);
  const std::unique_ptr<cpu::LlamaModel> model = cpu::load_cpu_model(ckpt);
  const McScorer scorer(*model, tokenizer);
  nlohmann::json all = nlohmann::json::array();
  fmt::print("{:<32} {:<11} {:>6} {:>16} {:>16} {:>8}\n", "file", "task", "docs", "acc", "acc_norm",
             "seconds");
  for (std::size_t i = 0; i < files.size(); ++i) {
    const McResult r = evaluate_mc(scorer, files[i], !opt.quiet);
    const std::string norm =
        r.acc_norm ? fmt::format("{:.4f} ± {:.4f}", *r.acc_norm, *r.acc_norm_stderr) : "-";
    fmt::print("{:<32} {:<11} {:>6} {:>16} {:>16} {:>8.1f}\n", opt.tasks[i], mc_task_name(r.task), r.docs,
               fmt::format("{:.4f} ± {:.4f}", r.acc, r.acc_stderr), norm, r.seconds);
    nlohmann::json j = to_json(r);
    j["file"] = opt.tasks[i];
    all.push_back(std::move(j));
  }
  if (opt.json) fmt::print("{}\n", nlohmann::json{{"model", opt.model}, {"results", all}}.dump());
}

}  // namespace

void add_eval_mc_command(CLI::App* eval) {
  auto opt = std::make_shared<McOptions>();
  auto* cmd = eval->add_subcommand(
      "mc", "Zero-shot multiple-choice accuracy (PIQA, ARC, HellaSwag, WinoGrande, BoolQ)");
  cmd->add_option("--model,-m", opt->model, "GGUF file, Hugging Face directory or Atom checkpoint")
      ->required();
  cmd->add_option("--tasks", opt->tasks, "jsonl task file(s); the layout is recognized from the keys")
      ->required();
  cmd->add_option("--limit", opt->limit, "Score the first N documents of each file (0: all)")
      ->check(non_negative_number());
  cmd->add_flag("--json", opt->json, "Print one JSON object (with every score) as the last stdout line");
  cmd->add_flag("--quiet,-q", opt->quiet, "No progress bars");
  cmd->callback([opt] { run_mc(*opt); });
}

}  // namespace atom::cli
