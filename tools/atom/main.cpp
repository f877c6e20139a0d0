// atom: command-line front end. Each subcommand lives in its own file (tools/atom/cmd_*.cpp).
#include <cstdio>
#include <exception>

#include "commands.h"
#include "common/error.h"

int main(int argc, char** argv) {
  CLI::App app{"Atom: 4-bit weight and activation quantization and serving for Llama-family LLMs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "atom 0.1.0");
  atom::cli::add_info_command(app);
  atom::cli::add_generate_commands(app);
  CLI::App* eval = atom::cli::add_eval_command(app);
  atom::cli::add_eval_ablation_command(eval);
  atom::cli::add_eval_mc_command(eval);
  atom::cli::add_convert_command(app);
  atom::cli::add_quantize_command(app);
  atom::cli::add_serve_command(app);
  atom::cli::add_tokenize_command(app);
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks (serve: offline serving throughput)");
  bench->require_subcommand(1);
  atom::cli::add_bench_serve_command(*bench);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const atom::Error& e) {
    std::fprintf(stderr, "atom: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "atom: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
