#pragma once
// The tokenizer a GGUF file embeds (tokenizer.ggml.*), turned into the equivalent HF tokenizer.json
// so that it runs through the one Tokenizer implementation and can be exported for HF `tokenizers`.
//   tokenizer.ggml.model "gpt2":  byte-level BPE; tokenizer.ggml.pre picks the pre-tokenizer as
//                                 llama.cpp maps it (llama3/llama-bpe, qwen2, smollm/starcoder, gpt-2);
//   tokenizer.ggml.model "llama": SentencePiece-style BPE with byte fallback; merges are derived from
//                                 the scores the way transformers' GGUF loader derives them.
// Control tokens (type 3) and the unknown token become special added tokens, user-defined ones
// (type 4) plain added tokens.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace atom {

class GgufFile;

// llama.cpp's token types (tokenizer.ggml.token_type).
enum class GgufTokenType : std::int32_t {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6
};

struct GgufTokenizerData {
  std::string model;  // tokenizer.ggml.model
  std::string pre;    // tokenizer.ggml.pre ("" when absent)
  std::vector<std::string> tokens;
  std::vector<float> scores;              // empty when absent
  std::vector<std::int32_t> token_types;  // empty when absent
  std::vector<std::string> merges;        // "a b" (gpt2)
  std::optional<std::int32_t> bos_id, eos_id, unk_id, pad_id, eot_id, eom_id;
  std::optional<bool> add_bos, add_eos, add_space_prefix;
  std::string chat_template;  // tokenizer.chat_template ("" when absent)
};

// Reads the tokenizer.* metadata; errors name the file and key.
GgufTokenizerData read_gguf_tokenizer(const GgufFile& file);

// Tokenizer::from_gguf builds the tokenizer through these.
// The HF tokenizer.json and tokenizer_config equivalent to `data`; `source` names it in errors.
nlohmann::json gguf_to_hf_tokenizer_json(const GgufTokenizerData& data, const std::string& source);
TokenizerConfig gguf_tokenizer_config(const GgufTokenizerData& data, const std::string& source);

}  // namespace atom
