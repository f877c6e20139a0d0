#pragma once
// What the engine and the server need from a tokenizer: encoding, the chat template, end-of-sequence ids
// and incremental decoding. The tokenizer module's adapter implements it; tests use small fakes.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "tokenizer/chat_template.h"  // ChatMessage

namespace atom {

// Turns a stream of token ids into text increments; bytes of an incomplete UTF-8 character are held
// until the character completes.
class IncrementalDecoder {
 public:
  virtual ~IncrementalDecoder() = default;
  virtual std::string push(std::int32_t token) = 0;
  // Whatever is still held (an incomplete character at the end of the stream) as text.
  virtual std::string flush() = 0;
};

class TextCodec {
 public:
  virtual ~TextCodec() = default;
  // add_special: the tokenizer's beginning-of-sequence handling for a raw prompt.
  virtual std::vector<std::int32_t> encode(const std::string& text, bool add_special) const = 0;
  // The model's chat template applied to the messages, ending with the assistant's turn opened.
  virtual std::string apply_chat_template(const std::vector<ChatMessage>& messages) const = 0;
  // The chat template applied to the messages, with the assistant's turn opened at the end or not
  // (add_generation_prompt). The default serves only add_generation_prompt = true (apply_chat_template()).
  virtual std::string chat_prompt(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // Token ids (all in [0, vocab_size())) to text, like HF's decode(ids, skip_special_tokens). The default
  // runs the incremental decoder (which skips special tokens) whatever skip_special_tokens says.
  virtual std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens) const;
  virtual std::unique_ptr<IncrementalDecoder> new_decoder() const = 0;
  // Tokens that end a generation (unless the request ignores them).
  virtual std::vector<std::int32_t> eos_token_ids() const = 0;
  virtual int vocab_size() const = 0;
};

inline std::string TextCodec::chat_prompt(const std::vector<ChatMessage>& messages,
                                          bool add_generation_prompt) const {
  if (!add_generation_prompt)
    fail("this tokenizer cannot apply its chat template without the generation prompt");
  return apply_chat_template(messages);
}

inline std::string TextCodec::decode(std::span<const std::int32_t> ids, bool /*skip_special_tokens*/) const {
  const std::unique_ptr<IncrementalDecoder> decoder = new_decoder();
  std::string text;
  for (std::int32_t id : ids) text += decoder->push(id);
  return text + decoder->flush();
}

}  // namespace atom
