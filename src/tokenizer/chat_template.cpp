#include "tokenizer/chat_template.h"

#include "common/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace atom {
namespace {

bool contains(const std::string& text, const char* needle) { return text.find(needle) != std::string::npos; }

// Python's str.strip() (what Jinja's strip and trim do): Python whitespace off both ends.
std::string python_strip(std::string_view s) {
  return std::string(trim_code_points(s, true, true, is_python_whitespace));
}

// Python's str.strip('\n') / lstrip('\n') / rstrip('\n').
std::string strip_newlines(std::string_view s, bool left, bool right) {
  return std::string(trim_code_points(s, left, right, [](char32_t c) { return c == '\n'; }));
}

// A system prompt a ChatML template writes itself when the conversation has none: the literal
// '<|im_start|>system\n...<|im_end|>' inside one Jinja string.
std::string find_default_system(const std::string& text) {
  static const std::string start = "<|im_start|>system";
  for (std::size_t at = text.find(start); at != std::string::npos; at = text.find(start, at + 1)) {
    std::size_t pos = at + start.size();
    if (text.compare(pos, 1, "\n") == 0) {
      pos += 1;
    } else if (text.compare(pos, 2, "\\n") == 0) {
      pos += 2;
    } else {
      continue;
    }
    const std::size_t end = text.find("<|im_end|>", pos);
    if (end == std::string::npos) continue;
    const std::string body = text.substr(pos, end - pos);
    if (body.find_first_of("'\"{}") != std::string::npos || body.empty()) continue;
    // Undo the Jinja string escapes a template may use.
    std::string out;
    for (std::size_t i = 0; i < body.size(); ++i) {
      if (body[i] == '\\' && i + 1 < body.size()) {
        const char e = body[++i];
        out += e == 'n' ? '\n' : e == 't' ? '\t' : e;
      } else {
        out += body[i];
      }
    }
    return out;
  }
  return "";
}

std::string template_start(const std::string& text) {
  std::string start = text.substr(0, 60);
  for (char& c : start) {
    if (c == '\n') c = ' ';
  }
  return text.size() > 60 ? start + "..." : start;
}

void check_alternation(std::span<const ChatMessage> messages) {
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if ((messages[i].role == "user") != (i % 2 == 0)) {
      fail(
          "chat template: conversation roles must alternate user/assistant/user/assistant/... "
          "(message {} has role '{}')",
          i, messages[i].role);
    }
  }
}

}  // namespace

ChatTemplate ChatTemplate::detect(const std::string& text, std::string bos_token, std::string eos_token) {
  ChatTemplate t;
  t.bos_ = std::move(bos_token);
  t.eos_ = std::move(eos_token);
  if (text.empty() || contains(text, "<|im_start|>")) {
    t.style_ = Style::ChatML;
    t.default_system_ = find_default_system(text);
    t.qwen3_thinking_ = contains(text, "reasoning_content") && contains(text, "<think>");
  } else if (contains(text, "[INST]")) {
    t.style_ = contains(text, "<<SYS>>") ? Style::Llama2 : Style::Mistral;
    t.space_after_eos_ = contains(text, "eos_token + ' '");
  } else if (contains(text, "<|start_header_id|>")) {
    t.style_ = Style::Llama3;
    t.generation_prompt_always_ = !contains(text, "add_generation_prompt");
  } else {
    fail(
        "unrecognized chat template (starts with '{}'): supported are ChatML, Llama-2, Llama-3 and Mistral "
        "templates",
        template_start(text));
  }
  return t;
}

ChatTemplate ChatTemplate::for_tokenizer(const Tokenizer& tokenizer) {
  const TokenizerConfig& config = tokenizer.config();
  return detect(tokenizer.chat_template(), config.bos_token.value_or(""), config.eos_token.value_or(""));
}

std::optional<std::string> ChatTemplate::end_of_turn_marker(const std::string& text) {
  if (text.empty() || contains(text, "<|im_start|>")) return "<|im_end|>";
  if (contains(text, "[INST]")) return std::nullopt;
  if (contains(text, "<|start_header_id|>")) return "<|eot_id|>";
  return std::nullopt;
}

std::string ChatTemplate::apply(std::span<const ChatMessage> messages, bool add_generation_prompt) const {
  // The rendering walks code points (Python's strip()): it needs valid UTF-8.
  for (std::size_t i = 0; i < messages.size(); ++i) {
    for (const std::string* field : {&messages[i].role, &messages[i].content}) {
      if (const auto bad = find_invalid_utf8(*field)) {
        fail("chat message {} ({}): the {} is not valid UTF-8 (byte {} of {})", i,
             find_invalid_utf8(messages[i].role) ? "?" : messages[i].role,
             field == &messages[i].role ? "role" : "content", *bad, field->size());
      }
    }
  }
  std::string out;
  switch (style_) {
    case Style::ChatML: {
      if (!default_system_.empty() && (messages.empty() || messages[0].role != "system")) {
        out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
      }
      // Qwen3: the last user turn that is not a tool response.
      std::size_t last_query = messages.empty() ? 0 : messages.size() - 1;
      for (std::size_t i = messages.size(); i-- > 0;) {
        const std::string& c = messages[i].content;
        if (messages[i].role == "user" &&
            !(c.starts_with("<tool_response>") && c.ends_with("</tool_response>"))) {
          last_query = i;
          break;
        }
      }
      for (std::size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (!qwen3_thinking_ || m.role != "assistant") {
          out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
          continue;
        }
        // Qwen3 splits "<think>reasoning</think>content" and shows the reasoning only after the last query.
        static constexpr std::string_view kOpen = "<think>", kClose = "</think>";
        std::string content = m.content, reasoning;
        if (const std::size_t close = content.rfind(kClose); close != std::string::npos) {
          std::string before =
              strip_newlines(std::string_view(m.content).substr(0, m.content.find(kClose)), false, true);
          if (const std::size_t open = before.rfind(kOpen); open != std::string::npos) {
            before = before.substr(open + kOpen.size());
          }
          reasoning = strip_newlines(before, true, false);
          content = strip_newlines(std::string_view(m.content).substr(close + kClose.size()), true, false);
        }
        const bool last = i + 1 == messages.size();
        if (i > last_query && (last || !reasoning.empty())) {
          out += "<|im_start|>assistant\n<think>\n" + strip_newlines(reasoning, true, true) +
                 "\n</think>\n\n" + strip_newlines(content, true, false);
        } else {
          out += "<|im_start|>assistant\n" + content;
        }
        out += "<|im_end|>\n";
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      break;
    }
    case Style::Llama3: {
      for (std::size_t i = 0; i < messages.size(); ++i) {
        if (i == 0) out += bos_;
        out += "<|start_header_id|>" + messages[i].role + "<|end_header_id|>\n\n" +
               python_strip(messages[i].content) + "<|eot_id|>";
      }
      if (add_generation_prompt || generation_prompt_always_)
        out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    }
    case Style::Llama2: {
      std::span<const ChatMessage> turns = messages;
      std::optional<std::string> system;
      if (!messages.empty() && messages[0].role == "system") {
        system = messages[0].content;
        turns = messages.subspan(1);
      }
      check_alternation(turns);
      for (std::size_t i = 0; i < turns.size(); ++i) {
        std::string content = turns[i].content;
        if (i == 0 && system) content = "<<SYS>>\n" + *system + "\n<</SYS>>\n\n" + content;
        if (turns[i].role == "user") {
          out += bos_ + "[INST] " + python_strip(content) + " [/INST]";
        } else if (turns[i].role == "assistant") {
          out += " " + python_strip(content) + " " + eos_;
        }
      }
      break;
    }
    case Style::Mistral: {
      check_alternation(messages);
      out += bos_;
      for (const ChatMessage& m : messages) {
        if (m.role == "user") {
          out += "[INST] " + m.content + " [/INST]";
        } else if (m.role == "assistant") {
          out += m.content + eos_ + (space_after_eos_ ? " " : "");
        } else {
          fail("chat template: the Mistral format supports only user and assistant roles, not '{}'", m.role);
        }
      }
      break;
    }
  }
  return out;
}

}  // namespace atom
