// atom: command-line front end. Each subcommand lives in its own file (tools/atom/cmd_*.cpp).
#include <cstdio>
#include <exception>
#include <string>

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
  // CLI11 calls an unknown first word an "extra argument"; name it and the commands instead.
  if (argc > 1 && argv[1][0] != '-') {
    std::string commands;
    bool known = false;
    for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
      known = known || sub->check_name(argv[1]);
      commands += (commands.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::fprintf(stderr, "atom: unknown command '%s' (commands: %s; see atom --help)\n", argv[1],
                   commands.c_str());
      return 109;  // CLI11's exit code for unexpected arguments
    }
  }
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
