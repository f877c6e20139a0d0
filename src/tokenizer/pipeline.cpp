#include "tokenizer/pipeline.h"

#include <array>
#include <limits>

#include "common/error.h"
#include "io/json_file.h"
#include "tokenizer/unicode.h"

namespace atom::tokenizer_detail {

using nlohmann::json;

JsonWhere JsonWhere::operator/(std::string_view key) const {
  return {source, path.empty() ? std::string(key) : path + "." + std::string(key)};
}
JsonWhere JsonWhere::operator[](std::size_t index) const {
  return {source, fmt::format("{}[{}]", path, index)};
}

const json& require_field(const json& object, const char* key, const JsonWhere& where) {
  if (!object.is_object()) fail("{}: expected a JSON object, got {}", where.str(), object.type_name());
  const auto it = object.find(key);
  if (it == object.end()) fail("{}: missing field '{}'", where.str(), key);
  return *it;
}

std::string require_string(const json& object, const char* key, const JsonWhere& where) {
  const json& value = require_field(object, key, where);
  if (!value.is_string()) fail("{}: '{}' must be a string, got {}", where.str(), key, value.type_name());
  return value.get<std::string>();
}

bool optional_bool(const json& object, const char* key, bool fallback, const JsonWhere& where) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail("{}: '{}' must be true or false, got {}", where.str(), key, json_snippet(*it));
  return it->get<bool>();
}

std::int32_t require_token_id(const json& value, const std::string& what) {
  if (!value.is_number_integer()) fail("{} must be an integer token id, got {}", what, json_snippet(value));
  const bool in_range = value.is_number_unsigned()
                            ? value.get<std::uint64_t>() <= std::numeric_limits<std::int32_t>::max()
                            : value.get<std::int64_t>() >= 0 &&
                                  value.get<std::int64_t>() <= std::numeric_limits<std::int32_t>::max();
  if (!in_range) fail("{}: token id {} is outside [0, 2147483647]", what, json_snippet(value));
  return static_cast<std::int32_t>(value.get<std::int64_t>());
}

namespace {

std::size_t optional_size(const json& object, const char* key, std::size_t fallback, const JsonWhere& where) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_number_integer() || it->get<std::int64_t>() < 0) {
    fail("{}: '{}' must be a non-negative integer, got {}", where.str(), key, json_snippet(*it));
  }
  return it->get<std::size_t>();
}

const json& require_array(const json& object, const char* key, const JsonWhere& where) {
  const json& value = require_field(object, key, where);
  if (!value.is_array()) fail("{}: '{}' must be an array, got {}", where.str(), key, value.type_name());
  return value;
}

// A JSON string holding exactly one character (Metaspace's replacement, Strip's content).
char32_t single_char(const json& object, const char* key, const JsonWhere& where) {
  const std::string text = require_string(object, key, where);
  if (text.empty() || find_invalid_utf8(text))
    fail("{}: '{}' must be one character, got '{}'", where.str(), key, text);
  std::size_t pos = 0;
  const char32_t cp = next_code_point(text, pos);
  if (pos != text.size()) fail("{}: '{}' must be one character, got '{}'", where.str(), key, text);
  return cp;
}

std::string utf8_of(char32_t cp) {
  std::string s;
  append_utf8(s, cp);
  return s;
}

std::string type_of(const json& object, const JsonWhere& where) {
  if (!object.is_object()) fail("{}: expected a JSON object, got {}", where.str(), object.type_name());
  return require_string(object, "type", where);
}

[[noreturn]] void unsupported(const char* stage, const std::string& type, const JsonWhere& where,
                              const char* supported) {
  fail("{}: unsupported {} type '{}' (supported: {})", where.str(), stage, type, supported);
}

}  // namespace

// ---------------------------------------------------------------- patterns and splitting

Pattern Pattern::parse(const json& object, const JsonWhere& where) {
  if (!object.is_object() || object.size() != 1) {
    fail("{}: a pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}, got {}", where.str(),
         json_snippet(object));
  }
  if (object.contains("String")) return literal(require_string(object, "String", where));
  if (object.contains("Regex")) return regex(require_string(object, "Regex", where), where.str());
  fail("{}: a pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}, got {}", where.str(),
       json_snippet(object));
}

Pattern Pattern::literal(std::string text) {
  Pattern p;
  p.literal_ = std::move(text);
  return p;
}

Pattern Pattern::regex(const std::string& pattern, const std::string& context) {
  Pattern p;
  p.regex_ = std::make_shared<const Regex>(pattern, context);
  return p;
}

std::vector<std::pair<std::size_t, std::size_t>> Pattern::find_all(std::string_view text) const {
  if (regex_) return regex_->find_all(text);
  std::vector<std::pair<std::size_t, std::size_t>> matches;
  if (literal_.empty()) return matches;  // HF: an empty literal matches nothing
  for (std::size_t pos = text.find(literal_); pos != std::string_view::npos; pos = text.find(literal_, pos)) {
    matches.emplace_back(pos, pos + literal_.size());
    pos += literal_.size();
  }
  return matches;
}

std::string Pattern::replace_all(std::string_view text, std::string_view content) const {
  std::string out;
  out.reserve(text.size());
  std::size_t previous = 0;
  for (const auto& [start, end] : find_all(text)) {
    out.append(text.substr(previous, start - previous));
    out.append(content);
    previous = end;
  }
  out.append(text.substr(previous));
  return out;
}

void split_piece(const Piece& piece, const std::vector<std::pair<std::size_t, std::size_t>>& matches,
                 SplitBehavior behavior, bool invert, std::vector<Piece>& out) {
  struct Span {
    std::size_t start, end;
    bool is_match;
  };
  // HF Pattern::find_matches: the whole text as alternating non-matches and matches.
  std::vector<Span> spans;
  std::size_t previous = 0;
  for (const auto& [start, end] : matches) {
    if (previous != start) spans.push_back({previous, start, invert});
    spans.push_back({start, end, !invert});
    previous = end;
  }
  if (previous != piece.text.size() || spans.empty()) spans.push_back({previous, piece.text.size(), invert});

  struct Kept {
    std::size_t start, end;
    bool removed;
  };
  std::vector<Kept> kept;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const Span& s : spans) kept.push_back({s.start, s.end, false});
      break;
    case SplitBehavior::Removed:
      for (const Span& s : spans) kept.push_back({s.start, s.end, s.is_match});
      break;
    case SplitBehavior::Contiguous:
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !kept.empty()) {
          kept.back().end = s.end;
        } else {
          kept.push_back({s.start, s.end, false});
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::MergedWithPrevious:
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !kept.empty()) {
          kept.back().end = s.end;
        } else {
          kept.push_back({s.start, s.end, false});
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::MergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) {
          kept.back().start = it->start;
        } else {
          kept.push_back({it->start, it->end, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (const Kept& k : kept) {
    if (k.removed || k.start == k.end) continue;
    out.push_back(Piece{piece.text.substr(k.start, k.end - k.start), piece.at_start && k.start == 0});
  }
}

namespace {

SplitBehavior parse_behavior(const json& object, const JsonWhere& where) {
  const std::string name = require_string(object, "behavior", where);
  if (name == "Removed") return SplitBehavior::Removed;
  if (name == "Isolated") return SplitBehavior::Isolated;
  if (name == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (name == "Contiguous") return SplitBehavior::Contiguous;
  fail("{}: unknown split behavior '{}' (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous)",
       where.str(), name);
}

// ---------------------------------------------------------------- byte-level alphabet

struct ByteLevelTable {
  struct Utf8 {
    char bytes[2];
    std::uint8_t length;
  };
  std::array<Utf8, 256> char_of_byte{};          // the character standing for each byte (U+0021..U+0143)
  std::array<std::int16_t, 512> byte_of_char{};  // indexed by code point, -1 when no byte maps there
};

constexpr ByteLevelTable make_byte_level_table() {
  ByteLevelTable t;
  for (auto& b : t.byte_of_char) b = -1;
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const int cp = printable ? b : 256 + next++;
    if (cp < 0x80) {
      t.char_of_byte[b] = {{static_cast<char>(cp), 0}, 1};
    } else {
      t.char_of_byte[b] = {{static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))}, 2};
    }
    t.byte_of_char[cp] = static_cast<std::int16_t>(b);
  }
  return t;
}

constexpr ByteLevelTable kByteLevel = make_byte_level_table();

// The byte a character of the byte-level alphabet stands for.
std::optional<unsigned char> byte_level_byte(char32_t code_point) {
  if (code_point >= 512 || kByteLevel.byte_of_char[code_point] < 0) return std::nullopt;
  return static_cast<unsigned char>(kByteLevel.byte_of_char[code_point]);
}

}  // namespace

std::string_view byte_level_char(unsigned char byte) {
  return {kByteLevel.char_of_byte[byte].bytes, kByteLevel.char_of_byte[byte].length};
}

// ---------------------------------------------------------------- normalizers

namespace {

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  void normalize(std::string& text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(std::string& text) const override { text = pattern_.replace_all(text, content_); }

 private:
  Pattern pattern_;
  std::string content_;
};

class NfcNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override { text = to_nfc(text); }
};

class NfdNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override { text = to_nfd(text); }
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    text = std::string(trim_code_points(text, left_, right_, is_unicode_whitespace));
  }

 private:
  bool left_, right_;
};

}  // namespace

std::unique_ptr<Normalizer> parse_normalizer(const json& object, const JsonWhere& where) {
  if (object.is_null()) return nullptr;
  const std::string type = type_of(object, where);
  if (type == "Sequence") {
    const json& list = require_array(object, "normalizers", where);
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (std::size_t i = 0; i < list.size(); ++i) {
      if (auto step = parse_normalizer(list[i], (where / "normalizers")[i])) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(require_string(object, "prepend", where));
  if (type == "Replace") {
    return std::make_unique<ReplaceNormalizer>(
        Pattern::parse(require_field(object, "pattern", where), where / "pattern"),
        require_string(object, "content", where));
  }
  if (type == "NFC") return std::make_unique<NfcNormalizer>();
  if (type == "NFD") return std::make_unique<NfdNormalizer>();
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(optional_bool(object, "strip_left", true, where),
                                             optional_bool(object, "strip_right", true, where));
  }
  unsupported("normalizer", type, where, "Sequence, Prepend, Replace, NFC, NFD, Strip");
}

// ---------------------------------------------------------------- pre-tokenizers

namespace {

// GPT-2's split regex, used by ByteLevel with use_regex.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& step : steps_) step->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Pattern pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size());
    for (const Piece& piece : pieces)
      split_piece(piece, pattern_.find_all(piece.text), behavior_, invert_, out);
    pieces = std::move(out);
  }

 private:
  Pattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space),
        regex_(use_regex ? std::optional<Pattern>(Pattern::regex(kGpt2Pattern, "ByteLevel")) : std::nullopt) {
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    if (add_prefix_space_) {
      for (Piece& piece : pieces) {
        if (piece.text.empty() || piece.text[0] != ' ') piece.text.insert(0, " ");
      }
    }
    if (regex_) {
      std::vector<Piece> out;
      out.reserve(pieces.size() * 4);
      for (const Piece& piece : pieces) {
        split_piece(piece, regex_->find_all(piece.text), SplitBehavior::Isolated, false, out);
      }
      pieces = std::move(out);
    }
    std::string mapped;
    for (Piece& piece : pieces) {
      mapped.clear();
      for (char c : piece.text) {
        const ByteLevelTable::Utf8& u = kByteLevel.char_of_byte[static_cast<unsigned char>(c)];
        mapped.append(u.bytes, u.length);
      }
      piece.text.swap(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::optional<Pattern> regex_;
};

enum class PrependScheme { First, Never, Always };

PrependScheme parse_prepend_scheme(const json& object, const JsonWhere& where) {
  PrependScheme scheme = PrependScheme::Always;  // HF's default
  if (const auto it = object.find("prepend_scheme"); it != object.end() && !it->is_null()) {
    const std::string name = require_string(object, "prepend_scheme", where);
    if (name == "first") {
      scheme = PrependScheme::First;
    } else if (name == "never") {
      scheme = PrependScheme::Never;
    } else if (name == "always") {
      scheme = PrependScheme::Always;
    } else {
      fail("{}: unknown prepend_scheme '{}' (first, never, always)", where.str(), name);
    }
  }
  // Files from before prepend_scheme existed say add_prefix_space: false instead.
  if (!optional_bool(object, "add_prefix_space", true, where)) scheme = PrependScheme::Never;
  return scheme;
}

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : replacement_(utf8_of(replacement)),
        space_(Pattern::literal(" ")),
        replacement_pattern_(Pattern::literal(replacement_)),
        scheme_(scheme),
        split_(split) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size());
    for (Piece piece : pieces) {
      piece.text = space_.replace_all(piece.text, replacement_);
      const bool starts_with_replacement = piece.text.starts_with(replacement_);
      if (!starts_with_replacement &&
          (scheme_ == PrependScheme::Always || (scheme_ == PrependScheme::First && piece.at_start))) {
        piece.text.insert(0, replacement_);
      }
      if (split_) {
        split_piece(piece, replacement_pattern_.find_all(piece.text), SplitBehavior::MergedWithNext, false,
                    out);
      } else if (!piece.text.empty()) {
        out.push_back(std::move(piece));
      }
    }
    pieces = std::move(out);
  }

 private:
  std::string replacement_;
  Pattern space_, replacement_pattern_;
  PrependScheme scheme_;
  bool split_;
};

}  // namespace

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const json& object, const JsonWhere& where) {
  if (object.is_null()) return nullptr;
  const std::string type = type_of(object, where);
  if (type == "Sequence") {
    const json& list = require_array(object, "pretokenizers", where);
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (std::size_t i = 0; i < list.size(); ++i) {
      if (auto step = parse_pre_tokenizer(list[i], (where / "pretokenizers")[i]))
        steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Split") {
    return std::make_unique<SplitPreTokenizer>(
        Pattern::parse(require_field(object, "pattern", where), where / "pattern"),
        parse_behavior(object, where), optional_bool(object, "invert", false, where));
  }
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(optional_bool(object, "add_prefix_space", true, where),
                                                   optional_bool(object, "use_regex", true, where));
  }
  if (type == "Metaspace") {
    return std::make_unique<MetaspacePreTokenizer>(single_char(object, "replacement", where),
                                                   parse_prepend_scheme(object, where),
                                                   optional_bool(object, "split", true, where));
  }
  if (type == "Digits") {
    // Rust's char::is_numeric is the N category: each digit alone, or runs of digits.
    const bool individual = optional_bool(object, "individual_digits", false, where);
    return std::make_unique<SplitPreTokenizer>(
        Pattern::regex("\\p{N}", where.str()),
        individual ? SplitBehavior::Isolated : SplitBehavior::Contiguous, false);
  }
  unsupported("pre_tokenizer", type, where, "Sequence, Split, ByteLevel, Metaspace, Digits");
}

// ---------------------------------------------------------------- post-processors

namespace {

class TemplatePostProcessor final : public PostProcessor {
 public:
  // Each item: the ids of a special token, or an empty optional for the sequence itself.
  explicit TemplatePostProcessor(std::vector<std::optional<std::vector<std::int32_t>>> items)
      : items_(std::move(items)) {}
  void process(std::vector<std::int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<std::int32_t> out;
    out.reserve(ids.size() + items_.size());
    for (const auto& item : items_) {
      if (item) {
        out.insert(out.end(), item->begin(), item->end());
      } else {
        out.insert(out.end(), ids.begin(), ids.end());
      }
    }
    ids = std::move(out);
  }

 private:
  std::vector<std::optional<std::vector<std::int32_t>>> items_;
};

class SequencePostProcessor final : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> steps)
      : steps_(std::move(steps)) {}
  void process(std::vector<std::int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& step : steps_) step->process(ids, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

// Offsets are all ByteLevel post-processing changes: the ids stay as they are.
class IdentityPostProcessor final : public PostProcessor {
 public:
  void process(std::vector<std::int32_t>&, bool) const override {}
};

std::vector<std::int32_t> special_ids(const json& special_tokens, const std::string& name,
                                      const JsonWhere& where) {
  const auto it = special_tokens.find(name);
  if (it == special_tokens.end())
    fail("{}: special token '{}' is used by the template but not defined", where.str(), name);
  const JsonWhere entry = where / name;
  const json& ids = require_array(*it, "ids", entry);
  std::vector<std::int32_t> out;
  for (const json& id : ids) {
    out.push_back(require_token_id(id, entry.str() + ": ids"));
  }
  return out;
}

std::unique_ptr<PostProcessor> parse_template(const json& object, const JsonWhere& where) {
  const json& single = require_field(object, "single", where);
  const json empty_object = json::object();
  const auto special_it = object.find("special_tokens");
  const json& specials = special_it == object.end() ? empty_object : *special_it;
  const JsonWhere special_where = where / "special_tokens";
  std::vector<std::optional<std::vector<std::int32_t>>> items;
  if (single.is_string()) {
    // The string form: "<s> $A" ($A, $B, $0, $1 or $ for a sequence; ":N" type ids are ignored).
    std::string text = single.get<std::string>();
    std::size_t pos = 0;
    while (pos < text.size()) {
      const std::size_t start = text.find_first_not_of(' ', pos);
      if (start == std::string::npos) break;
      const std::size_t end = std::min(text.find(' ', start), text.size());
      std::string item = text.substr(start, end - start);
      pos = end;
      if (const auto colon = item.rfind(':'); colon != std::string::npos && colon > 0) item.resize(colon);
      if (item[0] == '$') {
        if (item != "$" && item != "$A" && item != "$0") {
          fail("{}: template '{}' uses sequence {}; only single sequences are supported", where.str(), text,
               item);
        }
        items.emplace_back(std::nullopt);
      } else {
        items.emplace_back(special_ids(specials, item, special_where));
      }
    }
  } else {
    if (!single.is_array()) fail("{}: 'single' must be an array or a string", where.str());
    for (std::size_t i = 0; i < single.size(); ++i) {
      const JsonWhere item_where = (where / "single")[i];
      const json& item = single[i];
      if (item.contains("Sequence")) {
        items.emplace_back(std::nullopt);
      } else if (item.contains("SpecialToken")) {
        items.emplace_back(
            special_ids(specials, require_string(item["SpecialToken"], "id", item_where), special_where));
      } else {
        fail("{}: expected {{\"Sequence\": ...}} or {{\"SpecialToken\": ...}}, got {}", item_where.str(),
             json_snippet(item));
      }
    }
  }
  return std::make_unique<TemplatePostProcessor>(std::move(items));
}

// RobertaProcessing / BertProcessing: {"cls": [token, id], "sep": [token, id]} -> cls $A sep.
std::unique_ptr<PostProcessor> parse_cls_sep(const json& object, const JsonWhere& where) {
  const auto id_of = [&](const char* key) {
    const json& pair = require_field(object, key, where);
    if (!pair.is_array() || pair.size() != 2 || !pair[1].is_number_integer()) {
      fail("{}: '{}' must be [token, id], got {}", where.str(), key, json_snippet(pair));
    }
    return std::vector<std::int32_t>{require_token_id(pair[1], fmt::format("{}: '{}'", where.str(), key))};
  };
  std::vector<std::optional<std::vector<std::int32_t>>> items;
  items.emplace_back(id_of("cls"));
  items.emplace_back(std::nullopt);
  items.emplace_back(id_of("sep"));
  return std::make_unique<TemplatePostProcessor>(std::move(items));
}

}  // namespace

std::unique_ptr<PostProcessor> parse_post_processor(const json& object, const JsonWhere& where) {
  if (object.is_null()) return nullptr;
  const std::string type = type_of(object, where);
  if (type == "TemplateProcessing") return parse_template(object, where);
  if (type == "ByteLevel") return std::make_unique<IdentityPostProcessor>();
  if (type == "RobertaProcessing" || type == "BertProcessing") return parse_cls_sep(object, where);
  if (type == "Sequence") {
    const json& list = require_array(object, "processors", where);
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (std::size_t i = 0; i < list.size(); ++i) {
      if (auto step = parse_post_processor(list[i], (where / "processors")[i]))
        steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePostProcessor>(std::move(steps));
  }
  unsupported("post_processor", type, where,
              "TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence");
}

// ---------------------------------------------------------------- decoders

namespace {

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& token : tokens) {
      // A token with any character outside the byte alphabet (an added token) passes as raw bytes.
      const std::size_t mark = bytes.size();
      bool mapped = true;
      for (std::size_t pos = 0; pos < token.size();) {
        const auto b = byte_level_byte(next_code_point(token, pos));
        if (!b) {
          mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(*b));
      }
      if (!mapped) {
        bytes.resize(mark);
        bytes += token;
      }
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, PrependScheme scheme) : replacement_(replacement), scheme_(scheme) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& token = tokens[i];
      for (std::size_t pos = 0; pos < token.size();) {
        const std::size_t start = pos;
        const char32_t cp = next_code_point(token, pos);
        if (cp != replacement_) {
          out.append(token, start, pos - start);
        } else if (i != 0 || scheme_ == PrependScheme::Never) {
          out.push_back(' ');
        }
        // As HF: in the first token every replacement character is dropped.
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  char32_t replacement_;
  PrependScheme scheme_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Pattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) token = pattern_.replace_all(token, content_);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string bytes;
    const auto flush = [&] {
      if (bytes.empty()) return;
      if (!find_invalid_utf8(bytes)) {
        out.push_back(bytes);
      } else {
        // As HF: one U+FFFD per byte of an invalid run.
        for (std::size_t i = 0; i < bytes.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      bytes.clear();
    };
    for (std::string& token : tokens) {
      if (const auto byte = parse_byte_token(token)) {
        bytes.push_back(static_cast<char>(*byte));
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    tokens = std::move(out);
  }

 private:
  // "<0xAB>" -> 0xAB (either hex case, like Rust's from_str_radix).
  static std::optional<unsigned char> parse_byte_token(const std::string& token) {
    if (token.size() != 6 || !token.starts_with("<0x") || token[5] != '>') return std::nullopt;
    const auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    const int hi = hex(token[3]), lo = hex(token[4]);
    if (hi < 0 || lo < 0) return std::nullopt;
    return static_cast<unsigned char>(hi * 16 + lo);
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const std::string& token : tokens) joined += token;
    tokens.assign(1, std::move(joined));
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, std::size_t start, std::size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) {
      std::vector<std::pair<std::size_t, char32_t>> chars;  // (byte offset, code point)
      for (std::size_t pos = 0; pos < token.size();) {
        const std::size_t at = pos;
        chars.emplace_back(at, next_code_point(token, pos));
      }
      std::size_t begin = 0, end = chars.size();
      while (begin < std::min(start_, chars.size()) && chars[begin].second == content_) ++begin;
      for (std::size_t i = 0; i < stop_ && end > begin && chars[end - 1].second == content_; ++i) --end;
      const std::size_t byte_begin = begin < chars.size() ? chars[begin].first : token.size();
      const std::size_t byte_end = end < chars.size() ? chars[end].first : token.size();
      token = token.substr(byte_begin, byte_end - byte_begin);
    }
  }

 private:
  char32_t content_;
  std::size_t start_, stop_;
};

}  // namespace

std::unique_ptr<Decoder> parse_decoder(const json& object, const JsonWhere& where) {
  if (object.is_null()) return nullptr;
  const std::string type = type_of(object, where);
  if (type == "Sequence") {
    const json& list = require_array(object, "decoders", where);
    std::vector<std::unique_ptr<Decoder>> steps;
    for (std::size_t i = 0; i < list.size(); ++i) {
      if (auto step = parse_decoder(list[i], (where / "decoders")[i])) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    return std::make_unique<MetaspaceDecoder>(single_char(object, "replacement", where),
                                              parse_prepend_scheme(object, where));
  }
  if (type == "Replace") {
    return std::make_unique<ReplaceDecoder>(
        Pattern::parse(require_field(object, "pattern", where), where / "pattern"),
        require_string(object, "content", where));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    return std::make_unique<StripDecoder>(single_char(object, "content", where),
                                          optional_size(object, "start", 0, where),
                                          optional_size(object, "stop", 0, where));
  }
  unsupported("decoder", type, where, "Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip");
}

}  // namespace atom::tokenizer_detail
