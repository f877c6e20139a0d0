// atom tokenize: a checkpoint's tokenizer (or a tokenizer.json) on text from stdin or a file.
//   atom tokenize --model PATH [--file F] [--no-special-tokens]       text -> ids (one line, space separated)
//   atom tokenize --tokenizer tokenizer.json --ids [--file F] [--skip-special-tokens]   ids -> text
// Text is taken as is (a trailing newline is text too); ids may be separated by spaces, commas or newlines,
// with optional [ ] around them (a JSON list).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "commands.h"
#include "common/error.h"
#include "io/checkpoint.h"
#include "tokenizer/checkpoint_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace atom::cli {
namespace {

struct TokenizeOptions {
  std::string model;
  std::string tokenizer;
  std::string file;
  bool ids = false;
  bool no_special_tokens = false;
  bool skip_special_tokens = false;
};

std::string read_input(const std::string& file) {
  if (file.empty()) {
    return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("cannot open '{}'", file);
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail("error reading '{}'", file);
  return text.str();
}

Tokenizer open_tokenizer(const TokenizeOptions& opt) {
  if (opt.model.empty() == opt.tokenizer.empty())
    fail("give one of --model PATH or --tokenizer tokenizer.json");
  if (!opt.model.empty()) return load_tokenizer(open_checkpoint(opt.model));
  if (!std::filesystem::is_regular_file(opt.tokenizer)) fail("tokenizer '{}' is not a file", opt.tokenizer);
  // tokenizer_config.json next to it (BOS handling, special tokens), when there is one.
  const std::filesystem::path config =
      std::filesystem::path(opt.tokenizer).parent_path() / "tokenizer_config.json";
  return Tokenizer::from_hf_files(opt.tokenizer,
                                  std::filesystem::is_regular_file(config) ? config.string() : "");
}

std::vector<std::int32_t> parse_ids(const std::string& text, const std::string& source, std::int32_t vocab) {
  std::vector<std::int32_t> ids;
  std::size_t i = 0;
  const auto separator = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ','; };
  std::string body = text;
  // An optional JSON-style list: [1, 2, 3]
  const std::size_t first = body.find_first_not_of(" \t\r\n");
  const std::size_t last = body.find_last_not_of(" \t\r\n");
  if (first != std::string::npos && body[first] == '[') {
    if (body[last] != ']') fail("{}: a list opened with '[' must end with ']'", source);
    body[first] = ' ';
    body[last] = ' ';
  }
  while (i < body.size()) {
    if (separator(body[i])) {
      ++i;
      continue;
    }
    std::size_t end = i;
    while (end < body.size() && !separator(body[end])) ++end;
    const std::string word = body.substr(i, end - i);
    const std::size_t index = ids.size();
    long long value = 0;
    std::size_t used = 0;
    try {
      value = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || word.empty()) fail("{}: id {} is '{}', not an integer", source, index, word);
    if (value < 0 || value >= vocab) {
      fail("{}: id {} is {}, outside the vocabulary [0, {})", source, index, value, vocab);
    }
    ids.push_back(static_cast<std::int32_t>(value));
    i = end;
  }
  return ids;
}

void run_tokenize(const TokenizeOptions& opt) {
  const Tokenizer tokenizer = open_tokenizer(opt);
  const std::string input = read_input(opt.file);
  const std::string source = opt.file.empty() ? std::string("stdin") : opt.file;
  if (opt.ids) {
    const std::vector<std::int32_t> ids = parse_ids(input, source, tokenizer.vocab_size());
    const std::string text = tokenizer.decode(ids, opt.skip_special_tokens);
    std::fwrite(text.data(), 1, text.size(), stdout);
    return;
  }
  const std::vector<std::int32_t> ids = tokenizer.encode(input, !opt.no_special_tokens);
  std::string line;
  for (std::size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  std::printf("%s\n", line.c_str());
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto opt = std::make_shared<TokenizeOptions>();
  auto* cmd =
      app.add_subcommand("tokenize", "Text (stdin or --file) to token ids, or with --ids token ids to text");
  auto* model =
      cmd->add_option("--model,-m", opt->model, "GGUF file, Hugging Face directory or Atom checkpoint");
  auto* tok = cmd->add_option("--tokenizer", opt->tokenizer,
                              "A tokenizer.json (its directory's tokenizer_config.json is read too)");
  model->excludes(tok);
  cmd->add_option("--file,-f", opt->file, "Read from this file instead of stdin");
  cmd->add_flag("--ids", opt->ids, "Read token ids (spaces, commas or a [list]) and print their text");
  cmd->add_flag("--no-special-tokens", opt->no_special_tokens,
                "Text to ids: no BOS or other added special tokens");
  cmd->add_flag("--skip-special-tokens", opt->skip_special_tokens, "Ids to text: leave special tokens out");
  cmd->callback([opt] { run_tokenize(*opt); });
}

}  // namespace atom::cli
