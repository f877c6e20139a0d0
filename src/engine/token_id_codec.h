#pragma once
// The TextCodec of a model without a tokenizer (the random-weight benchmark shapes of `atom bench serve`):
// requests bring token ids, generated tokens decode to no text. Text prompts and chat are refused with an
// error that says why.
#include "engine/text_codec.h"

namespace atom {

class TokenIdCodec final : public TextCodec {
 public:
  TokenIdCodec(int vocab_size, std::string model_name)
      : vocab_size_(vocab_size), model_name_(std::move(model_name)) {}
  std::vector<std::int32_t> encode(const std::string& text, bool add_special) const override;
  std::string apply_chat_template(const std::vector<ChatMessage>& messages) const override;
  std::unique_ptr<IncrementalDecoder> new_decoder() const override;
  std::vector<std::int32_t> eos_token_ids() const override { return {}; }
  int vocab_size() const override { return vocab_size_; }

 private:
  int vocab_size_;
  std::string model_name_;
};

}  // namespace atom
