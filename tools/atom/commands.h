#pragma once
// Each `atom` subcommand registers itself on the CLI11 app; its callback does the work.
#include <CLI/CLI.hpp>

namespace atom::cli {

void add_info_command(CLI::App& app);
void add_generate_commands(CLI::App& app);  // generate, chat
void add_eval_command(CLI::App& app);       // eval ppl | ...
void add_convert_command(CLI::App& app);

}  // namespace atom::cli
