#pragma once
// The stages of an HF tokenizer.json around its model: normalizers, pre-tokenizers, post-processors
// and decoders, each parsed from its JSON and behaving like HF `tokenizers` does. Only what
// Llama-family checkpoints use is supported; any other type is a clear atom::Error.
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/regex.h"

namespace atom::tokenizer_detail {

// Where a JSON value sits, for error messages: "<file>: pre_tokenizer.pretokenizers[0].pattern".
struct JsonWhere {
  std::string source;
  std::string path;
  JsonWhere operator/(std::string_view key) const;
  JsonWhere operator[](std::size_t index) const;
  std::string str() const { return path.empty() ? source : source + ": " + path; }
};

const nlohmann::json& require_field(const nlohmann::json& object, const char* key, const JsonWhere& where);
std::string require_string(const nlohmann::json& object, const char* key, const JsonWhere& where);
bool optional_bool(const nlohmann::json& object, const char* key, bool fallback, const JsonWhere& where);
// A token id: a JSON integer in [0, 2^31) (never truncated); errors say `what` and show the value.
std::int32_t require_token_id(const nlohmann::json& value, const std::string& what);

// A stretch of text on its way through normalization and pre-tokenization.
struct Piece {
  std::string text;
  bool at_start;  // begins at offset 0 of the original input (Metaspace prepend_scheme "first")
};

// HF SplitPattern / ReplacePattern: {"String": literal} or {"Regex": pattern}.
class Pattern {
 public:
  static Pattern parse(const nlohmann::json& json, const JsonWhere& where);
  static Pattern literal(std::string text);
  static Pattern regex(const std::string& pattern, const std::string& context);
  std::vector<std::pair<std::size_t, std::size_t>> find_all(std::string_view text) const;
  // Every match replaced by `content`.
  std::string replace_all(std::string_view text, std::string_view content) const;

 private:
  std::string literal_;
  std::shared_ptr<const Regex> regex_;
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// HF NormalizedString::split: the pieces of `piece` around the matches, per `behavior`; empty
// pieces are dropped (as PreTokenizedString::split does).
void split_piece(const Piece& piece, const std::vector<std::pair<std::size_t, std::size_t>>& matches,
                 SplitBehavior behavior, bool invert, std::vector<Piece>& out);

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<std::int32_t>& ids, bool add_special_tokens) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// Each returns nullptr for a JSON null (the stage is absent).
std::unique_ptr<Normalizer> parse_normalizer(const nlohmann::json& json, const JsonWhere& where);
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const nlohmann::json& json, const JsonWhere& where);
std::unique_ptr<PostProcessor> parse_post_processor(const nlohmann::json& json, const JsonWhere& where);
std::unique_ptr<Decoder> parse_decoder(const nlohmann::json& json, const JsonWhere& where);

// The printable character GPT-2's byte-level alphabet writes for a byte (ByteLevel pre-tokenizer).
std::string_view byte_level_char(unsigned char byte);  // UTF-8 of the char for a byte

}  // namespace atom::tokenizer_detail
