#pragma once
// Chat prompts for the chat formats of Llama-family checkpoints, chosen by looking at the
// checkpoint's Jinja chat_template (like llama.cpp's llm_chat_detect_template) and rendering what
// transformers' apply_chat_template renders for the real templates:
//   ChatML   (<|im_start|>: SmolLM2, Qwen2/2.5/3): a default system prompt written in the template
//            is used, and Qwen3's <think> block for assistant turns after the last user turn;
//   Llama-3  (<|start_header_id|>): contents trimmed, bos_token before the first message;
//   Llama-2  ([INST] with <<SYS>>): system prompt folded into the first user turn;
//   Mistral  ([INST] without <<SYS>>): user/assistant turns only.
// No template at all means ChatML. A template of none of these kinds is an error, except one that
// mentions <|im_start|>, which is taken as ChatML.
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace atom {

class Tokenizer;

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

class ChatTemplate {
 public:
  enum class Style { ChatML, Llama2, Llama3, Mistral };

  // Throws atom::Error naming the template's start when it is of no known kind.
  static ChatTemplate detect(const std::string& template_text, std::string bos_token, std::string eos_token);
  // The tokenizer's chat_template with its bos/eos token strings.
  static ChatTemplate for_tokenizer(const Tokenizer& tokenizer);
  // The token that closes a turn in the template's format (<|im_end|>, <|eot_id|>), if it has one
  // besides eos; nullopt also for a template of no known kind.
  static std::optional<std::string> end_of_turn_marker(const std::string& template_text);

  // The prompt text (to be encoded with add_special_tokens = false: it carries its own BOS where the
  // template writes one). Throws atom::Error where the template raises (Llama-2 / Mistral roles that
  // do not alternate user/assistant; Mistral system messages).
  std::string apply(std::span<const ChatMessage> messages, bool add_generation_prompt) const;

  Style style() const { return style_; }
  const std::string& default_system_prompt() const { return default_system_; }

 private:
  Style style_ = Style::ChatML;
  std::string bos_, eos_;
  std::string default_system_;             // ChatML: system prompt used when the first message is not one
  bool qwen3_thinking_ = false;            // ChatML: Qwen3's <think> block on the latest assistant turns
  bool generation_prompt_always_ = false;  // Llama-3 templates that do not test add_generation_prompt
  bool space_after_eos_ = false;           // Mistral templates writing eos_token + ' '
};

}  // namespace atom
