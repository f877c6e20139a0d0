#pragma once
// An exact BPE tokenizer for Llama-family checkpoints: encodes and decodes like HF `tokenizers` does
// with the checkpoint's tokenizer.json (byte-level BPE as in GPT-2 / Llama-3 / Qwen / SmolLM, and
// SentencePiece-style BPE with byte fallback as in Llama-2 / Mistral), or with the tokenizer a GGUF
// file embeds (see gguf_tokenizer.h).
//
//   Tokenizer tok = Tokenizer::from_hf_files("tokenizer.json", "tokenizer_config.json");
//   std::vector<int32_t> ids = tok.encode("Hello", /*add_special_tokens=*/true);
//   std::string text = tok.decode(ids, /*skip_special_tokens=*/true);
//
// A Tokenizer is immutable and cheap to copy (copies share one state); encode/decode may run on
// several threads at once.
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace atom {

class GgufFile;
struct GgufTokenizerData;

// What tokenizer_config.json (or a GGUF's metadata) says around the tokenizer itself.
struct TokenizerConfig {
  std::optional<std::string> bos_token, eos_token, unk_token, pad_token;
  std::optional<bool> add_bos_token, add_eos_token;
  std::string chat_template;  // empty when there is none; the "default" one of a named list
  std::vector<std::pair<std::string, std::string>> named_chat_templates;  // a list's (name, template)s

  // Parses tokenizer_config.json; `source` names it in errors.
  static TokenizerConfig from_json(const nlohmann::json& json, const std::string& source);
};

class Tokenizer {
 public:
  // tokenizer.json (a ".gz" file is read through gzip) and, unless empty, tokenizer_config.json.
  static Tokenizer from_hf_files(const std::string& tokenizer_json_path,
                                 const std::string& tokenizer_config_path = "");
  // `source` names the JSON in errors.
  static Tokenizer from_hf_json(const nlohmann::json& tokenizer_json, const TokenizerConfig& config,
                                const std::string& source, std::vector<std::int32_t> extra_eos_ids = {});
  // The tokenizer a GGUF file embeds (gguf_tokenizer.h says how it maps to tokenizer.json).
  static Tokenizer from_gguf(const GgufFile& file);
  static Tokenizer from_gguf(const GgufTokenizerData& data, const std::string& source);

  // HF `Tokenizer.encode(text, add_special_tokens).ids`. Throws atom::Error for invalid UTF-8.
  std::vector<std::int32_t> encode(std::string_view text, bool add_special_tokens) const;
  // HF `Tokenizer.decode(ids, skip_special_tokens)`: ids outside the vocabulary are skipped.
  std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens) const;

  std::int32_t vocab_size() const;  // 1 + the largest id of the vocabulary and the added tokens
  std::optional<std::int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(std::int32_t id) const;  // the token as stored (e.g. "Ġthe")
  bool is_special(std::int32_t id) const;                         // a special added token
  std::optional<std::int32_t> bos_id() const;
  // Ids that end generation: the eos token, a GGUF's eot/eom tokens, and the end-of-turn token of the
  // chat template (<|im_end|>, <|eot_id|>) when it is a special token.
  const std::vector<std::int32_t>& eos_ids() const;
  const std::string& chat_template() const;
  const TokenizerConfig& config() const;

  // A tokenizer.json that HF `tokenizers` loads and that encodes and decodes like this tokenizer,
  // and the matching tokenizer_config.json.
  nlohmann::json to_hf_tokenizer_json() const;
  nlohmann::json to_hf_tokenizer_config_json() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
  friend class StreamDecoder;
};

// Reads a JSON file, through gzip when it is compressed (tokenizer.json.gz); errors name the path.
nlohmann::json read_tokenizer_json(const std::string& path);

// Incremental decoding for generation: feed one id at a time, get back only text that is complete
// (never half a UTF-8 character; byte-fallback and byte-level sequences are assembled across tokens;
// leading-space rules applied as in a full decode). The concatenation of every step() and finish()
// equals decode() of all the ids (HF's DecodeStream, plus finish()).
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);
  std::string step(std::int32_t id);
  // Whatever is still held back (an incomplete sequence decodes to U+FFFD); starts a new stream.
  std::string finish();

 private:
  Tokenizer tokenizer_;
  bool skip_special_tokens_;
  std::vector<std::int32_t> ids_;  // the ids whose text is not final yet, after some context ids
  std::string prefix_;             // decode() of ids_[0, prefix_index_)
  std::size_t prefix_index_ = 0;
};

}  // namespace atom
