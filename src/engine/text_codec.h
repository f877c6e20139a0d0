#pragma once
// What the engine and the server need from a tokenizer: encoding, the chat template, end-of-sequence ids
// and incremental decoding. The tokenizer module's adapter implements it; tests use small fakes.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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
  virtual std::unique_ptr<IncrementalDecoder> new_decoder() const = 0;
  // Tokens that end a generation (unless the request ignores them).
  virtual std::vector<std::int32_t> eos_token_ids() const = 0;
  virtual int vocab_size() const = 0;
};

}  // namespace atom
