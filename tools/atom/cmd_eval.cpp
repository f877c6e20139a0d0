// atom eval ppl: perplexity of a checkpoint on a text file.
#include <fmt/format.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "commands.h"

namespace atom::cli {

void add_eval_command(CLI::App& app) {
  auto* eval = app.add_subcommand("eval", "Evaluate a checkpoint (perplexity, ...)");
  eval->require_subcommand(1);
}

}  // namespace atom::cli
