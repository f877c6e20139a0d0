// Tokenizer encode throughput on one core, per tokenizer, on a text corpus.
// Usage (from the repository root):
//   tokenizer_speed [corpus.txt] [--tokenizer PATH]...
// corpus: default .cache/corpora/kjv/test.txt (scripts/build_corpora.sh). Tokenizers: tokenizer.json(.gz)
// files or GGUF files; default the shared fixtures (../shared/fixtures/tokenizers/{spm32k,llama3,qwen3})
// and the SmolLM2 GGUF (.cache/models), whichever exist.
// Times are CPU time of the one thread. Reports the load time, encode MB/s of the whole corpus as one text (a
// cold cache and a warm one), of the corpus line by line, decode MB/s, and whether decode(encode(text)) gives
// the text back.
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

using namespace atom;
namespace fs = std::filesystem;

namespace {

// Seconds of CPU time of this thread: the figures stay meaningful on a machine shared with other work.
double now() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open corpus '{}' (run scripts/build_corpora.sh)", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Tokenizer load(const std::string& path) {
  if (path.ends_with(".gguf")) return Tokenizer::from_gguf(GgufFile(path));
  const fs::path config = fs::path(path).parent_path() / "tokenizer_config.json";
  return Tokenizer::from_hf_files(path, fs::exists(config) ? config.string() : "");
}

// Runs `f` until at least `min_seconds` passed; returns seconds per run.
template <class F>
double time_per_run(F&& f, double min_seconds = 1.0) {
  int runs = 0;
  const double start = now();
  double elapsed = 0;
  do {
    f();
    ++runs;
    elapsed = now() - start;
  } while (elapsed < min_seconds);
  return elapsed / runs;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string corpus_path = ".cache/corpora/kjv/test.txt";
    std::vector<std::string> tokenizers;
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--tokenizer" && i + 1 < argc) {
        tokenizers.push_back(argv[++i]);
      } else if (arg.starts_with("-")) {
        std::fprintf(stderr, "usage: %s [corpus.txt] [--tokenizer PATH]...\n", argv[0]);
        return 2;
      } else {
        corpus_path = arg;
      }
    }
    if (tokenizers.empty()) {
      for (const char* name : {"spm32k", "llama3", "qwen3"}) {
        const std::string p = std::string("../shared/fixtures/tokenizers/") + name + "/tokenizer.json.gz";
        if (fs::exists(p)) tokenizers.push_back(p);
      }
      if (fs::exists(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")) {
        tokenizers.push_back(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
      }
    }
    const std::string corpus = read_text(corpus_path);
    std::vector<std::string> lines;
    for (std::size_t pos = 0; pos < corpus.size();) {
      const std::size_t end = std::min(corpus.find('\n', pos), corpus.size());
      lines.push_back(corpus.substr(pos, end + 1 - pos));
      pos = end + 1;
    }
    const double mb = corpus.size() / 1e6;
    std::printf("corpus %s: %.2f MB, %zu lines; one thread, CPU time\n", corpus_path.c_str(), mb,
                lines.size());
    std::printf("%-52s %7s %8s %9s %9s %9s %9s %s\n", "tokenizer", "load s", "tokens", "cold MB/s",
                "warm MB/s", "line MB/s", "dec MB/s", "round trip");
    for (const std::string& path : tokenizers) {
      const double t0 = now();
      const Tokenizer tok = load(path);
      const double load_s = now() - t0;
      const double c0 = now();
      const std::vector<std::int32_t> ids = tok.encode(corpus, false);  // first pass fills the word cache
      const double cold = mb / (now() - c0);
      const double warm = mb / time_per_run([&] { tok.encode(corpus, false); });
      const double line = mb / time_per_run([&] {
                            for (const std::string& l : lines) tok.encode(l, false);
                          });
      std::string decoded;
      const double decode = mb / time_per_run([&] { decoded = tok.decode(ids, false); });
      std::printf("%-52s %7.2f %8zu %9.1f %9.1f %9.1f %9.1f %s\n", path.c_str(), load_s, ids.size(), cold,
                  warm, line, decode, decoded == corpus ? "exact" : "differs");
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenizer_speed: %s\n", e.what());
    return 1;
  }
}
