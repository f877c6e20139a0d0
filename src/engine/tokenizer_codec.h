#pragma once
// TextCodec over the tokenizer module: encode/decode like HF tokenizers, the checkpoint's chat template,
// streaming detokenization through StreamDecoder (special tokens skipped, as OpenAI servers do).
#include <optional>
#include <string>

#include "engine/text_codec.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace atom {

class TokenizerCodec final : public TextCodec {
 public:
  explicit TokenizerCodec(Tokenizer tokenizer);

  std::vector<std::int32_t> encode(const std::string& text, bool add_special) const override;
  // Throws atom::Error when the checkpoint's chat template is of no supported kind.
  std::string apply_chat_template(const std::vector<ChatMessage>& messages) const override;
  std::string chat_prompt(const std::vector<ChatMessage>& messages,
                          bool add_generation_prompt) const override;
  std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens) const override {
    return tokenizer_.decode(ids, skip_special_tokens);
  }
  std::unique_ptr<IncrementalDecoder> new_decoder() const override;
  std::vector<std::int32_t> eos_token_ids() const override { return tokenizer_.eos_ids(); }
  int vocab_size() const override { return tokenizer_.vocab_size(); }
  const Tokenizer& tokenizer() const { return tokenizer_; }

 private:
  Tokenizer tokenizer_;
  std::optional<ChatTemplate> chat_template_;
  std::string chat_template_error_;  // why there is none
};

}  // namespace atom
