#pragma once
// Each `atom` subcommand registers itself on the CLI11 app; its callback does the work.
#include <string>

#include <CLI/CLI.hpp>

namespace atom::cli {

// Number checks whose messages name the bound only (CLI11's NonNegativeNumber / PositiveNumber print the
// largest double, 309 digits, as the upper bound).
inline CLI::Validator non_negative_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(text, value)) return "'" + text + "' is not a number";
        if (!(value >= 0)) return "must be >= 0, got " + text;
        return "";
      },
      "NUMBER >= 0", "NONNEGATIVE");
}
inline CLI::Validator positive_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(text, value)) return "'" + text + "' is not a number";
        if (!(value > 0)) return "must be > 0, got " + text;
        return "";
      },
      "NUMBER > 0", "POSITIVE");
}

void add_info_command(CLI::App& app);
void add_generate_commands(CLI::App& app);  // generate, chat
CLI::App* add_eval_command(CLI::App& app);  // eval ppl; returns `eval` for the other eval subcommands
void add_convert_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_eval_ablation_command(CLI::App* eval);  // eval ablation (eval: the `eval` subcommand)
void add_eval_mc_command(CLI::App* eval);        // eval mc
void add_serve_command(CLI::App& app);
void add_bench_serve_command(CLI::App& bench);  // bench serve (bench: the `bench` subcommand)
void add_tokenize_command(CLI::App& app);

}  // namespace atom::cli
