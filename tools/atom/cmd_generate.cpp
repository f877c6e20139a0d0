// atom generate / atom chat: text generation on the CPU reference backend, streamed to stdout.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/atom_model_loader.h"
#include "backend/cpu/llama_model.h"
#include "commands.h"
#include "common/error.h"
#include "io/checkpoint.h"
#include "model/sampler.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/checkpoint_tokenizer.h"

namespace atom::cli {

namespace {

struct GenerateOptions {
  std::string model;
  std::string prompt;
  std::string system;
  bool chat = false;
  int max_tokens = 128;
  float temperature = 0.7f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::uint64_t seed = 0;
  bool stats = false;
};

struct LoadedModel {
  Checkpoint checkpoint;
  Tokenizer tokenizer;
  std::unique_ptr<cpu::LlamaModel> model;
};

LoadedModel load(const std::string& path) {
  Checkpoint ckpt = open_checkpoint(path);
  Tokenizer tokenizer = load_tokenizer(ckpt);
  auto model = cpu::load_cpu_model(ckpt);  // fp32 for plain checkpoints, integer kernels for Atom ones
  return {std::move(ckpt), std::move(tokenizer), std::move(model)};
}

bool is_eos(const Tokenizer& tok, std::int32_t id) {
  for (auto e : tok.eos_ids())
    if (e == id) return true;
  return false;
}

// Appends `prompt_ids` to the cache and samples up to max_tokens, streaming text to stdout.
// Returns the generated ids.
std::vector<std::int32_t> stream_completion(const LoadedModel& m, cpu::KvCache& cache,
                                            const std::vector<std::int32_t>& prompt_ids,
                                            const GenerateOptions& opt) {
  SamplingParams params;
  params.temperature = opt.temperature;
  params.top_k = opt.top_k;
  params.top_p = opt.top_p;
  params.min_p = opt.min_p;
  params.repetition_penalty = opt.repetition_penalty;
  params.presence_penalty = opt.presence_penalty;
  params.frequency_penalty = opt.frequency_penalty;
  params.seed = opt.seed;
  Sampler sampler(params, prompt_ids);  // the repetition penalty counts the prompt's tokens
  const int context = m.model->config().max_position_embeddings;
  if (static_cast<int>(cache.length() + prompt_ids.size()) >= context)
    fail("the prompt ({} tokens) does not fit the model's context of {} tokens", cache.length() + prompt_ids.size(),
         context);
  StreamDecoder decoder(m.tokenizer, /*skip_special_tokens=*/true);
  std::vector<std::int32_t> generated;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits = m.model->forward(prompt_ids, cache);
  const auto t1 = std::chrono::steady_clock::now();
  for (int i = 0; i < opt.max_tokens; ++i) {
    const std::int32_t next = sampler.sample(logits);
    if (is_eos(m.tokenizer, next)) break;
    generated.push_back(next);
    const std::string piece = decoder.step(next);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    if (static_cast<int>(cache.length()) + 1 >= context) break;
    const std::int32_t one[1] = {next};
    logits = m.model->forward(one, cache);
  }
  const std::string rest = decoder.finish();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (opt.stats) {
    const auto t2 = std::chrono::steady_clock::now();
    const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
    const double decode_s = std::chrono::duration<double>(t2 - t1).count();
    fmt::print(stderr, "[prompt {} tokens in {:.2f}s ({:.1f} tok/s); generated {} tokens in {:.2f}s ({:.1f} tok/s)]\n",
               prompt_ids.size(), prefill_s, prompt_ids.size() / prefill_s, generated.size(), decode_s,
               generated.empty() ? 0.0 : generated.size() / decode_s);
  }
  return generated;
}

void run_generate(const GenerateOptions& opt) {
  const LoadedModel m = load(opt.model);
  std::vector<std::int32_t> ids;
  if (opt.chat) {
    std::vector<ChatMessage> messages;
    if (!opt.system.empty()) messages.push_back({"system", opt.system});
    messages.push_back({"user", opt.prompt});
    const std::string text = ChatTemplate::for_tokenizer(m.tokenizer).apply(messages, true);
    ids = m.tokenizer.encode(text, /*add_special_tokens=*/false);
  } else {
    ids = m.tokenizer.encode(opt.prompt, /*add_special_tokens=*/true);
  }
  if (ids.empty()) fail("the prompt encodes to no tokens; give a non-empty --prompt");
  cpu::KvCache cache = m.model->new_cache();
  stream_completion(m, cache, ids, opt);
}

void run_chat(const GenerateOptions& opt) {
  const LoadedModel m = load(opt.model);
  const ChatTemplate chat_template = ChatTemplate::for_tokenizer(m.tokenizer);
  std::vector<ChatMessage> messages;
  if (!opt.system.empty()) messages.push_back({"system", opt.system});
  fmt::print(stderr, "Chatting with {} (empty line or Ctrl-D to quit, /reset to start over)\n", opt.model);
  std::string line;
  while (true) {
    fmt::print(stderr, "> ");
    if (!std::getline(std::cin, line) || line.empty()) break;
    if (line == "/reset") {
      messages.resize(opt.system.empty() ? 0 : 1);
      continue;
    }
    messages.push_back({"user", line});
    // A turn that cannot be answered (text that is not UTF-8, a conversation longer than the context) is
    // reported and dropped; the conversation goes on without it.
    try {
      // Re-encode the whole conversation: templates may render earlier turns differently once a turn follows.
      const std::vector<std::int32_t> ids =
          m.tokenizer.encode(chat_template.apply(messages, true), /*add_special_tokens=*/false);
      cpu::KvCache cache = m.model->new_cache();
      const auto reply_ids = stream_completion(m, cache, ids, opt);
      messages.push_back({"assistant", m.tokenizer.decode(reply_ids, /*skip_special_tokens=*/true)});
    } catch (const Error& e) {
      messages.pop_back();
      fmt::print(stderr, "atom chat: {} (this line was dropped; type another, or /reset)\n", e.what());
    }
  }
}

void add_sampling_options(CLI::App* cmd, GenerateOptions& opt) {
  cmd->add_option("--model,-m", opt.model, "GGUF file or Hugging Face model directory")->required();
  cmd->add_option("--max-tokens,-n", opt.max_tokens, "Most tokens to generate")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--temperature,-t", opt.temperature, "0 = greedy")->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-k", opt.top_k, "Keep the k most likely tokens (0 = off)")
      ->check(non_negative_number());
  cmd->add_option("--top-p", opt.top_p, "Nucleus sampling mass in (0, 1]")->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--min-p", opt.min_p, "Drop tokens less likely than min_p x the most likely (0 = off)")
      ->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--repetition-penalty", opt.repetition_penalty,
                  "Divide positive (multiply negative) logits of prompt and output tokens by it (1 = off)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--presence-penalty", opt.presence_penalty, "Subtract from the logits of generated tokens")
      ->check(CLI::Range(-2.0f, 2.0f));
  cmd->add_option("--frequency-penalty", opt.frequency_penalty,
                  "Subtract this x the times a token was generated from its logit")
      ->check(CLI::Range(-2.0f, 2.0f));
  cmd->add_option("--seed", opt.seed, "Random seed");
  cmd->add_option("--system", opt.system, "System prompt (chat)");
  cmd->add_flag("--stats", opt.stats, "Print prompt and generation speed on stderr");
}

}  // namespace

void add_generate_commands(CLI::App& app) {
  auto gen_opt = std::make_shared<GenerateOptions>();
  auto* gen = app.add_subcommand("generate", "Generate text from a prompt, streamed to stdout");
  add_sampling_options(gen, *gen_opt);
  gen->add_option("--prompt,-p", gen_opt->prompt, "Prompt text")->required();
  gen->add_flag("--chat", gen_opt->chat, "Wrap the prompt in the checkpoint's chat template as a user turn");
  gen->callback([gen_opt] { run_generate(*gen_opt); });

  auto chat_opt = std::make_shared<GenerateOptions>();
  auto* chat = app.add_subcommand("chat", "Interactive chat with the checkpoint's chat template");
  add_sampling_options(chat, *chat_opt);
  chat->callback([chat_opt] { run_chat(*chat_opt); });
}

}  // namespace atom::cli
