// Chat templates: detection from the checkpoint's template string, and the prompts against transformers'
// apply_chat_template on the real templates (scripts/dev/make_tokenizer_refs.py -> chat_refs.json).
#include <gtest/gtest.h>

#include "common/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer_test_util.h"

namespace atom {
namespace {

using nlohmann::json;

std::vector<ChatMessage> conversation(const json& messages) {
  std::vector<ChatMessage> out;
  for (const json& m : messages)
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

TEST(ChatTemplate, MatchesTransformersOnRealTemplates) {
  const json& refs = test::reference("chat_refs.json");
  int checked = 0, raised = 0;
  for (const json& c : refs["cases"]) {
    const json& t = refs["templates"][c["template"].get<std::string>()];
    const ChatTemplate chat =
        ChatTemplate::detect(t["template"].get<std::string>(), t["bos_token"].get<std::string>(),
                             t["eos_token"].get<std::string>());
    const auto messages = conversation(refs["conversations"][c["conversation"].get<std::size_t>()]);
    const bool generation = c["add_generation_prompt"].get<bool>();
    SCOPED_TRACE(c.dump());
    if (c.contains("error")) {
      EXPECT_THROW(chat.apply(messages, generation), Error);
      ++raised;
    } else {
      EXPECT_EQ(chat.apply(messages, generation), c["text"].get<std::string>());
    }
    ++checked;
  }
  EXPECT_GE(checked, 100);
  EXPECT_GE(raised, 4);  // Llama-2 / Mistral reject conversations whose roles do not alternate
}

TEST(ChatTemplate, DetectsTheFormat) {
  const json& refs = test::reference("chat_refs.json");
  const auto style_of = [&](const char* name) {
    return ChatTemplate::detect(refs["templates"][name]["template"].get<std::string>(), "", "").style();
  };
  EXPECT_EQ(style_of("smollm2"), ChatTemplate::Style::ChatML);
  EXPECT_EQ(style_of("qwen3"), ChatTemplate::Style::ChatML);
  EXPECT_EQ(style_of("llama3"), ChatTemplate::Style::Llama3);
  EXPECT_EQ(style_of("llama2"), ChatTemplate::Style::Llama2);
  EXPECT_EQ(style_of("mistral"), ChatTemplate::Style::Mistral);
  // No template: ChatML without a system prompt.
  const ChatTemplate none = ChatTemplate::detect("", "", "");
  EXPECT_EQ(none.style(), ChatTemplate::Style::ChatML);
  const std::vector<ChatMessage> hi{{"user", "hi"}};
  EXPECT_EQ(none.apply(hi, true), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  // Unknown formats: ChatML only when the template speaks it.
  EXPECT_EQ(
      ChatTemplate::detect("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}", "", "").style(),
      ChatTemplate::Style::ChatML);
  try {
    ChatTemplate::detect("{% for message in messages %}<start_of_turn>{{ message['role'] }}\n{% endfor %}",
                         "", "");
    FAIL() << "an unknown template was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("<start_of_turn>"), std::string::npos) << e.what();
  }
}

// Found by fuzz_chat_template: content ending in a truncated UTF-8 sequence was read past its end while the
// template stripped it (heap-buffer-overflow). Every style now refuses text that is not UTF-8, naming it.
TEST(ChatTemplate, RefusesInvalidUtf8InsteadOfReadingPastIt) {
  const json& refs = test::reference("chat_refs.json");
  for (const char* name : {"smollm2", "qwen3", "llama3", "llama2", "mistral"}) {
    const ChatTemplate t =
        ChatTemplate::detect(refs["templates"][name]["template"].get<std::string>(), "<s>", "</s>");
    for (const std::string bad :
         {std::string("caf\xe9"), std::string("\xf0\x9f"), std::string("a\xc3"), std::string("\xff x")}) {
      const std::vector<ChatMessage> messages{{"system", "be brief"}, {"user", " " + bad}};
      try {
        t.apply(messages, true);
        ADD_FAILURE() << name << ": accepted invalid UTF-8";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("chat message 1 (user): the content is not valid UTF-8"),
                  std::string::npos)
            << e.what();
      }
    }
  }
}

TEST(ChatTemplate, EndOfTurnMarker) {
  EXPECT_EQ(ChatTemplate::end_of_turn_marker(""), "<|im_end|>");
  EXPECT_EQ(ChatTemplate::end_of_turn_marker("x<|start_header_id|>y"), "<|eot_id|>");
  EXPECT_EQ(ChatTemplate::end_of_turn_marker("[INST]"), std::nullopt);
  EXPECT_EQ(ChatTemplate::end_of_turn_marker("<start_of_turn>"), std::nullopt);
}

}  // namespace
}  // namespace atom
