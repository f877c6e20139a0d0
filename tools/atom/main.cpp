// atom: command-line front end. Each subcommand lives in its own file (tools/atom/cmd_*.cpp).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "common/error.h"

int main(int argc, char** argv) {
  CLI::App app{"Atom: 4-bit weight and activation quantization and serving for Llama-family LLMs"};
  app.require_subcommand(1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const atom::Error& e) {
    std::fprintf(stderr, "atom: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
