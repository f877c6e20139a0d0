#include "engine/tokenizer_codec.h"

#include "common/error.h"

namespace atom {
namespace {

class StreamDecoderAdapter final : public IncrementalDecoder {
 public:
  explicit StreamDecoderAdapter(const Tokenizer& tokenizer) : decoder_(tokenizer, /*skip_special_tokens=*/true) {}
  std::string push(std::int32_t token) override { return decoder_.step(token); }
  std::string flush() override { return decoder_.finish(); }

 private:
  StreamDecoder decoder_;
};

}  // namespace

TokenizerCodec::TokenizerCodec(Tokenizer tokenizer) : tokenizer_(std::move(tokenizer)) {
  try {
    chat_template_ = ChatTemplate::for_tokenizer(tokenizer_);
  } catch (const Error& e) {
    chat_template_error_ = e.what();  // completions still work; chat requests get this message
  }
}

std::vector<std::int32_t> TokenizerCodec::encode(const std::string& text, bool add_special) const {
  return tokenizer_.encode(text, add_special);
}

std::string TokenizerCodec::apply_chat_template(const std::vector<ChatMessage>& messages) const {
  return chat_prompt(messages, /*add_generation_prompt=*/true);
}

std::string TokenizerCodec::chat_prompt(const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt) const {
  if (!chat_template_) fail("this model has no usable chat template: {}", chat_template_error_);
  return chat_template_->apply(messages, add_generation_prompt);
}

std::unique_ptr<IncrementalDecoder> TokenizerCodec::new_decoder() const {
  return std::make_unique<StreamDecoderAdapter>(tokenizer_);
}

}  // namespace atom
