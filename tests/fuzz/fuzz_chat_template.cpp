// Chat-template rendering: a template text (recognized or not) and messages of arbitrary content. The input
// is "template\0role\0content\0role\0content...".
#include <string>
#include <vector>

#include "common/error.h"
#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> parts(1);
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      parts.emplace_back();
    } else {
      parts.back() += static_cast<char>(data[i]);
    }
  }
  try {
    const atom::ChatTemplate chat = atom::ChatTemplate::detect(parts[0], "<s>", "</s>");
    std::vector<atom::ChatMessage> messages;
    for (std::size_t i = 1; i + 1 < parts.size(); i += 2) messages.push_back({parts[i], parts[i + 1]});
    (void)chat.apply(messages, true);
    (void)chat.apply(messages, false);
  } catch (const atom::Error&) {
  }
  return 0;
}
