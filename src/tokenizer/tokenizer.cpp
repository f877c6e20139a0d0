#include "tokenizer/tokenizer.h"

#include <zlib.h>

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "common/error.h"
#include "io/json_file.h"
#include "tokenizer/bpe.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/unicode.h"

namespace atom {

using nlohmann::json;
using namespace tokenizer_detail;

namespace {

std::string read_file_maybe_gzip(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");  // reads plain files unchanged
  if (!file) fail("cannot open '{}'", path);
  std::string out;
  char buffer[1 << 16];
  int n;
  while ((n = gzread(file, buffer, sizeof(buffer))) > 0) out.append(buffer, static_cast<std::size_t>(n));
  int error = Z_OK;
  const char* message = gzerror(file, &error);
  const std::string error_text = message ? message : "";
  gzclose(file);
  if (n < 0 || (error != Z_OK && error != Z_STREAM_END)) fail("cannot read '{}': {}", path, error_text);
  return out;
}

}  // namespace

json read_tokenizer_json(const std::string& path) { return parse_json(read_file_maybe_gzip(path), path); }

namespace {

// A token field of tokenizer_config.json: a string, an AddedToken object {"content": ...}, or null.
std::optional<std::string> config_token(const json& config, const char* key, const std::string& source) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  fail("{}: '{}' must be a string or an object with 'content', got {}", source, key, json_snippet(*it));
}

// One added token of tokenizer.json, as HF's AddedVocabulary holds it.
struct AddedToken {
  std::string content;
  std::string match_content;  // what is matched and decoded: the normalized content for normalized tokens
  std::int32_t id;
  bool single_word, lstrip, rstrip, normalized, special;
};

// Leftmost-longest matching of added tokens (HF uses an Aho-Corasick automaton with the same
// semantics), over a byte trie.
class AddedTokenMatcher {
 public:
  void add(std::string_view content, std::size_t token_index) {
    if (content.empty()) return;
    std::int32_t node = 0;
    for (char c : content) {
      const std::uint64_t key = edge_key(node, c);
      auto it = edges_.find(key);
      if (it == edges_.end()) {
        it = edges_.emplace(key, static_cast<std::int32_t>(values_.size())).first;
        values_.push_back(-1);
      }
      node = it->second;
    }
    values_[static_cast<std::size_t>(node)] = static_cast<std::int64_t>(token_index);
    first_bytes_[static_cast<unsigned char>(content[0])] = true;
  }
  bool empty() const { return edges_.empty(); }
  // Longest token starting at `pos`: (token index, length).
  std::optional<std::pair<std::size_t, std::size_t>> longest_at(std::string_view text,
                                                                std::size_t pos) const {
    if (!first_bytes_[static_cast<unsigned char>(text[pos])]) return std::nullopt;
    std::optional<std::pair<std::size_t, std::size_t>> best;
    std::int32_t node = 0;
    for (std::size_t i = pos; i < text.size(); ++i) {
      const auto it = edges_.find(edge_key(node, text[i]));
      if (it == edges_.end()) break;
      node = it->second;
      if (values_[static_cast<std::size_t>(node)] >= 0) {
        best = {static_cast<std::size_t>(values_[static_cast<std::size_t>(node)]), i + 1 - pos};
      }
    }
    return best;
  }

 private:
  static std::uint64_t edge_key(std::int32_t node, char c) {
    return (std::uint64_t(std::uint32_t(node)) << 8) | static_cast<unsigned char>(c);
  }
  std::unordered_map<std::uint64_t, std::int32_t> edges_;
  std::vector<std::int64_t> values_{-1};  // per node: index of the token ending there, or -1 (node 0 = root)
  bool first_bytes_[256] = {};
};

// A stretch of the input: text still to tokenize, or an added token already recognized.
struct Segment {
  std::string text;
  bool at_start;
  std::int32_t token = -1;
};

bool is_word_char(char32_t cp) {
  // Rust regex's Unicode \w (Alphabetic, marks, decimal digits, connector punctuation, joiners).
  static const Regex word(R"([\p{L}\p{Nl}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])", "word-character class");
  std::string s;
  append_utf8(s, cp);
  return !word.find_all(s).empty();
}

char32_t last_code_point(std::string_view s) {
  std::size_t start = previous_code_point_start(s, s.size());
  return next_code_point(s, start);
}

}  // namespace

TokenizerConfig TokenizerConfig::from_json(const json& config, const std::string& source) {
  if (!config.is_object()) fail("{}: expected a JSON object", source);
  TokenizerConfig out;
  out.bos_token = config_token(config, "bos_token", source);
  out.eos_token = config_token(config, "eos_token", source);
  out.unk_token = config_token(config, "unk_token", source);
  out.pad_token = config_token(config, "pad_token", source);
  for (const auto& [key, target] :
       {std::pair{"add_bos_token", &out.add_bos_token}, {"add_eos_token", &out.add_eos_token}}) {
    const auto it = config.find(key);
    if (it == config.end() || it->is_null()) continue;
    if (!it->is_boolean()) fail("{}: '{}' must be true or false, got {}", source, key, json_snippet(*it));
    *target = it->get<bool>();
  }
  if (const auto it = config.find("chat_template"); it != config.end() && !it->is_null()) {
    if (it->is_string()) {
      out.chat_template = it->get<std::string>();
    } else if (it->is_array()) {
      for (const json& entry : *it) {
        if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") ||
            !entry["name"].is_string() || !entry["template"].is_string()) {
          fail("{}: chat_template list entries must be {{\"name\": ..., \"template\": ...}}, got {}", source,
               json_snippet(entry));
        }
        out.named_chat_templates.emplace_back(entry["name"].get<std::string>(),
                                              entry["template"].get<std::string>());
        if (entry["name"] == "default") out.chat_template = entry["template"].get<std::string>();
      }
    } else {
      fail("{}: chat_template must be a string or a list of named templates, got {}", source,
           it->type_name());
    }
  }
  return out;
}

struct Tokenizer::Impl {
  json normalizer_json, pre_tokenizer_json, post_processor_json, decoder_json;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;
  std::unique_ptr<BpeModel> model;

  std::vector<AddedToken> added;  // in file order
  std::unordered_map<std::int32_t, std::size_t> added_by_id;
  StringMap<std::int32_t> added_by_content;
  std::unordered_set<std::string> special_contents;
  AddedTokenMatcher raw_matcher, normalized_matcher;

  TokenizerConfig config;
  std::optional<std::int32_t> bos;
  std::vector<std::int32_t> eos;
  std::int32_t vocab_size = 0;

  std::optional<std::int32_t> token_to_id(std::string_view token) const {
    if (const auto it = added_by_content.find(token); it != added_by_content.end()) return it->second;
    return model->token_to_id(token);
  }

  // HF AddedVocabulary::find_matches + split_with_indices: `segment` cut around the added tokens
  // that `matcher` finds, honoring single_word / lstrip / rstrip.
  void split_added(const AddedTokenMatcher& matcher, Segment segment, std::vector<Segment>& out) const {
    if (segment.text.empty()) return;
    if (matcher.empty()) {
      out.push_back(std::move(segment));
      return;
    }
    const std::string_view text = segment.text;
    std::size_t start_offset = 0;
    const auto push_text = [&](std::size_t from, std::size_t to) {
      if (from < to)
        out.push_back(Segment{std::string(text.substr(from, to - from)), segment.at_start && from == 0});
    };
    for (std::size_t pos = 0; pos < text.size();) {
      const auto match = matcher.longest_at(text, pos);
      if (!match) {
        ++pos;
        continue;
      }
      const AddedToken& token = added[match->first];
      std::size_t start = pos, stop = pos + match->second;
      pos = stop;  // the automaton resumes after the match, whatever becomes of it
      if (token.single_word) {
        const bool start_space = start == 0 || !is_word_char(last_code_point(text.substr(0, start)));
        std::size_t after = stop;
        const bool stop_space = stop == text.size() || !is_word_char(next_code_point(text, after));
        if (!start_space || !stop_space) continue;
      }
      // As HF: lstrip takes the whitespace before the token (not what an earlier match took), rstrip
      // the whitespace after it.
      if (token.lstrip) {
        const std::size_t space_start =
            trim_code_points(text.substr(0, start), false, true, is_unicode_whitespace).size();
        start = std::max(space_start, start_offset);
      }
      if (token.rstrip) {
        const std::string_view rest = text.substr(stop);
        stop += rest.size() - trim_code_points(rest, true, false, is_unicode_whitespace).size();
      }
      push_text(start_offset, start);
      out.push_back(Segment{std::string(text.substr(start, stop - start)), false, token.id});
      start_offset = stop;
    }
    push_text(start_offset, text.size());
  }
};

namespace {

void add_added_tokens(Tokenizer::Impl& impl, const json& list, const JsonWhere& where) {
  if (list.is_null()) return;
  if (!list.is_array()) fail("{}: 'added_tokens' must be an array", where.str());
  // As HF's AddedVocabulary::add_tokens: a token already in the vocabulary keeps its id, a new one
  // gets the next id after the model's vocabulary.
  std::int32_t next_id = static_cast<std::int32_t>(impl.model->vocab_count());
  for (std::size_t i = 0; i < list.size(); ++i) {
    const JsonWhere at = (where / "added_tokens")[i];
    const json& entry = list[i];
    AddedToken token;
    token.content = require_string(entry, "content", at);
    token.single_word = optional_bool(entry, "single_word", false, at);
    token.lstrip = optional_bool(entry, "lstrip", false, at);
    token.rstrip = optional_bool(entry, "rstrip", false, at);
    token.special = optional_bool(entry, "special", false, at);
    token.normalized = optional_bool(entry, "normalized", !token.special, at);
    if (token.content.empty()) continue;
    if (const auto existing = impl.added_by_content.find(token.content);
        existing != impl.added_by_content.end()) {
      token.id = existing->second;
    } else if (const auto in_vocab = impl.model->token_to_id(token.content)) {
      token.id = *in_vocab;
    } else {
      token.id = next_id++;
    }
    token.match_content = token.content;
    if (token.normalized && impl.normalizer) impl.normalizer->normalize(token.match_content);
    impl.added_by_content[token.content] = token.id;
    if (token.special) impl.special_contents.insert(token.content);
    if (const auto previous = impl.added_by_id.find(token.id); previous != impl.added_by_id.end()) {
      impl.added[previous->second] = std::move(token);
    } else {
      impl.added_by_id[token.id] = impl.added.size();
      impl.added.push_back(std::move(token));
    }
  }
  for (std::size_t i = 0; i < impl.added.size(); ++i) {
    const AddedToken& token = impl.added[i];
    (token.normalized ? impl.normalized_matcher : impl.raw_matcher).add(token.match_content, i);
  }
}

std::unique_ptr<BpeModel> parse_model(const json& model, const JsonWhere& where) {
  if (model.is_null()) fail("{}: missing 'model'", where.str());
  if (!model.is_object()) fail("{}: 'model' must be an object", where.str());
  const auto type_it = model.find("type");
  const std::string type = type_it != model.end() && type_it->is_string() ? type_it->get<std::string>() : "";
  if (type != "BPE") {
    if (type.empty()) fail("{}: model has no 'type' (only BPE models are supported)", where.str());
    fail("{}: unsupported model type '{}' (only BPE models are supported)", where.str(), type);
  }
  const json& vocab_json = require_field(model, "vocab", where);
  if (!vocab_json.is_object()) fail("{}: 'vocab' must be an object of token -> id", where.str());
  StringMap<std::int32_t> vocab;
  vocab.reserve(vocab_json.size());
  std::int64_t max_id = -1;
  for (const auto& [token, id] : vocab_json.items()) {
    const std::string entry =
        fmt::format("{}: vocab['{}']", where.str(), token.size() > 40 ? token.substr(0, 40) + "..." : token);
    const std::int32_t value = require_token_id(id, entry);
    max_id = std::max<std::int64_t>(max_id, value);
    vocab[token] = value;
  }
  // The id -> token table is sized by the largest id: a vocabulary may have gaps, but not a sparse one
  // (a single id of 2^31 - 1 would otherwise ask for a table of two billion entries).
  const std::int64_t id_limit = 2 * static_cast<std::int64_t>(vocab_json.size()) + 1024;
  if (max_id >= id_limit) {
    fail(
        "{}: 'vocab' has {} tokens but an id of {}: ids must stay below {} (twice the vocabulary size + "
        "1024)",
        where.str(), vocab_json.size(), max_id, id_limit);
  }
  const json& merges_json = require_field(model, "merges", where);
  if (!merges_json.is_array()) fail("{}: 'merges' must be an array", where.str());
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(merges_json.size());
  for (std::size_t i = 0; i < merges_json.size(); ++i) {
    const json& m = merges_json[i];
    if (m.is_string()) {
      // The legacy form "a b": exactly one space (HF's BadMerges otherwise).
      const std::string line = m.get<std::string>();
      const std::size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        fail("{}: merges[{}] '{}' is not two tokens separated by one space", where.str(), i, line);
      }
      merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      fail("{}: merges[{}] must be \"a b\" or [\"a\", \"b\"], got {}", where.str(), i, json_snippet(m));
    }
  }
  BpeOptions options;
  const auto optional_string = [&](const char* key) -> std::optional<std::string> {
    const auto it = model.find(key);
    if (it == model.end() || it->is_null()) return std::nullopt;
    if (!it->is_string()) fail("{}: '{}' must be a string or null", where.str(), key);
    return it->get<std::string>();
  };
  options.unk_token = optional_string("unk_token");
  options.continuing_subword_prefix = optional_string("continuing_subword_prefix");
  options.end_of_word_suffix = optional_string("end_of_word_suffix");
  options.fuse_unk = optional_bool(model, "fuse_unk", false, where);
  options.byte_fallback = optional_bool(model, "byte_fallback", false, where);
  options.ignore_merges = optional_bool(model, "ignore_merges", false, where);
  // BPE dropout only matters for training; encoding here is always the deterministic one.
  return std::make_unique<BpeModel>(std::move(vocab), merges, std::move(options), where.str());
}

}  // namespace

Tokenizer Tokenizer::from_hf_files(const std::string& tokenizer_json_path,
                                   const std::string& tokenizer_config_path) {
  TokenizerConfig config;
  if (!tokenizer_config_path.empty()) {
    config = TokenizerConfig::from_json(read_tokenizer_json(tokenizer_config_path), tokenizer_config_path);
  }
  return from_hf_json(read_tokenizer_json(tokenizer_json_path), config, tokenizer_json_path);
}

Tokenizer Tokenizer::from_hf_json(const json& tokenizer_json, const TokenizerConfig& config,
                                  const std::string& source, std::vector<std::int32_t> extra_eos_ids) {
  const JsonWhere root{source, ""};
  if (!tokenizer_json.is_object()) fail("{}: a tokenizer.json must be a JSON object", source);
  if (const auto it = tokenizer_json.find("version"); it != tokenizer_json.end() && *it != "1.0") {
    fail("{}: unknown tokenizer.json version {}", source, json_snippet(*it));
  }
  auto impl = std::make_shared<Impl>();
  const auto stage = [&](const char* key) {
    return tokenizer_json.contains(key) ? tokenizer_json[key] : json();
  };
  impl->normalizer_json = stage("normalizer");
  impl->pre_tokenizer_json = stage("pre_tokenizer");
  impl->post_processor_json = stage("post_processor");
  impl->decoder_json = stage("decoder");
  impl->normalizer = parse_normalizer(impl->normalizer_json, root / "normalizer");
  impl->pre_tokenizer = parse_pre_tokenizer(impl->pre_tokenizer_json, root / "pre_tokenizer");
  impl->post_processor = parse_post_processor(impl->post_processor_json, root / "post_processor");
  impl->decoder = parse_decoder(impl->decoder_json, root / "decoder");
  impl->model = parse_model(stage("model"), root / "model");
  add_added_tokens(*impl, stage("added_tokens"), root);

  impl->vocab_size = impl->model->max_id() + 1;
  for (const AddedToken& token : impl->added) impl->vocab_size = std::max(impl->vocab_size, token.id + 1);

  impl->config = config;
  const auto id_of = [&](const std::optional<std::string>& token,
                         const char* what) -> std::optional<std::int32_t> {
    if (!token) return std::nullopt;
    const auto id = impl->token_to_id(*token);
    if (!id) fail("{}: the {} '{}' is not in the vocabulary", source, what, *token);
    return id;
  };
  impl->bos = id_of(config.bos_token, "bos_token");
  std::vector<std::int32_t> eos;
  if (const auto id = id_of(config.eos_token, "eos_token")) eos.push_back(*id);
  eos.insert(eos.end(), extra_eos_ids.begin(), extra_eos_ids.end());
  if (!config.chat_template.empty()) {
    if (const auto marker = ChatTemplate::end_of_turn_marker(config.chat_template)) {
      if (const auto id = impl->token_to_id(*marker); id && impl->special_contents.contains(*marker))
        eos.push_back(*id);
    }
  }
  for (std::int32_t id : eos) {
    if (std::find(impl->eos.begin(), impl->eos.end(), id) == impl->eos.end()) impl->eos.push_back(id);
  }
  return Tokenizer(std::move(impl));
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& impl = *impl_;
  if (const auto bad = find_invalid_utf8(text)) {
    fail("encode: the text is not valid UTF-8 (byte {} of {})", *bad, text.size());
  }
  std::vector<std::int32_t> ids;
  std::vector<Segment> raw_segments, normalized_segments;
  std::vector<Piece> pieces;
  impl.split_added(impl.raw_matcher, Segment{std::string(text), true}, raw_segments);
  for (Segment& raw : raw_segments) {
    if (raw.token >= 0) {
      ids.push_back(raw.token);
      continue;
    }
    if (impl.normalizer) impl.normalizer->normalize(raw.text);
    normalized_segments.clear();
    impl.split_added(impl.normalized_matcher, std::move(raw), normalized_segments);
    for (Segment& segment : normalized_segments) {
      if (segment.token >= 0) {
        ids.push_back(segment.token);
        continue;
      }
      pieces.clear();
      pieces.push_back(Piece{std::move(segment.text), segment.at_start});
      if (impl.pre_tokenizer) impl.pre_tokenizer->pre_tokenize(pieces);
      for (const Piece& piece : pieces) impl.model->tokenize(piece.text, ids);
    }
  }
  if (impl.post_processor) impl.post_processor->process(ids, add_special_tokens);
  return ids;
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special_tokens) const {
  const Impl& impl = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (std::int32_t id : ids) {
    const std::string* token = nullptr;
    if (const auto it = impl.added_by_id.find(id); it != impl.added_by_id.end()) {
      token = &impl.added[it->second].match_content;
    } else {
      token = impl.model->id_to_token(id);
    }
    if (!token) continue;
    if (skip_special_tokens && impl.special_contents.contains(*token)) continue;
    tokens.push_back(*token);
  }
  if (!impl.decoder) {
    std::string joined;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (i) joined += ' ';
      joined += tokens[i];
    }
    return joined;
  }
  impl.decoder->decode_chain(tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

std::int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<std::int32_t> Tokenizer::token_to_id(std::string_view token) const {
  return impl_->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(std::int32_t id) const {
  if (const auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end())
    return impl_->added[it->second].content;
  if (const std::string* token = impl_->model->id_to_token(id)) return *token;
  return std::nullopt;
}

bool Tokenizer::is_special(std::int32_t id) const {
  const auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

std::optional<std::int32_t> Tokenizer::bos_id() const { return impl_->bos; }
const std::vector<std::int32_t>& Tokenizer::eos_ids() const { return impl_->eos; }
const std::string& Tokenizer::chat_template() const { return impl_->config.chat_template; }
const TokenizerConfig& Tokenizer::config() const { return impl_->config; }

json Tokenizer::to_hf_tokenizer_json() const {
  const Impl& impl = *impl_;
  const BpeModel& model = *impl.model;
  const BpeOptions& options = model.options();
  const auto optional_string = [](const std::optional<std::string>& s) { return s ? json(*s) : json(); };
  json vocab = json::object();
  for (std::int32_t id = 0; id <= model.max_id(); ++id) {
    if (const std::string* token = model.id_to_token(id)) vocab[*token] = id;
  }
  json merges = json::array();
  for (auto& [a, b] : model.merges()) merges.push_back(json::array({std::move(a), std::move(b)}));
  json added = json::array();
  std::vector<const AddedToken*> by_id;
  for (const AddedToken& token : impl.added) by_id.push_back(&token);
  std::sort(by_id.begin(), by_id.end(),
            [](const AddedToken* a, const AddedToken* b) { return a->id < b->id; });
  for (const AddedToken* token : by_id) {
    added.push_back({{"id", token->id},
                     {"content", token->content},
                     {"single_word", token->single_word},
                     {"lstrip", token->lstrip},
                     {"rstrip", token->rstrip},
                     {"normalized", token->normalized},
                     {"special", token->special}});
  }
  return json{{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", std::move(added)},
              {"normalizer", impl.normalizer_json},
              {"pre_tokenizer", impl.pre_tokenizer_json},
              {"post_processor", impl.post_processor_json},
              {"decoder", impl.decoder_json},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", optional_string(options.unk_token)},
                {"continuing_subword_prefix", optional_string(options.continuing_subword_prefix)},
                {"end_of_word_suffix", optional_string(options.end_of_word_suffix)},
                {"fuse_unk", options.fuse_unk},
                {"byte_fallback", options.byte_fallback},
                {"ignore_merges", options.ignore_merges},
                {"vocab", std::move(vocab)},
                {"merges", std::move(merges)}}}};
}

json Tokenizer::to_hf_tokenizer_config_json() const {
  const TokenizerConfig& config = impl_->config;
  json out = json::object();
  const auto put_token = [&](const char* key, const std::optional<std::string>& token) {
    if (token) out[key] = *token;
  };
  put_token("bos_token", config.bos_token);
  put_token("eos_token", config.eos_token);
  put_token("unk_token", config.unk_token);
  put_token("pad_token", config.pad_token);
  if (config.add_bos_token) out["add_bos_token"] = *config.add_bos_token;
  if (config.add_eos_token) out["add_eos_token"] = *config.add_eos_token;
  if (!config.named_chat_templates.empty()) {
    json list = json::array();
    for (const auto& [name, text] : config.named_chat_templates)
      list.push_back({{"name", name}, {"template", text}});
    out["chat_template"] = std::move(list);
  } else if (!config.chat_template.empty()) {
    out["chat_template"] = config.chat_template;
  }
  out["clean_up_tokenization_spaces"] = false;
  out["tokenizer_class"] = "PreTrainedTokenizerFast";
  return out;
}

// ---------------------------------------------------------------- StreamDecoder

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

namespace {
bool ends_with_replacement_char(const std::string& s) { return s.ends_with("\xEF\xBF\xBD"); }
}  // namespace

// HF's step_decode_stream: decode a window of recent ids, and emit what the newest id adds once the
// text no longer ends in U+FFFD (an incomplete character).
std::string StreamDecoder::step(std::int32_t id) {
  if (prefix_.empty() && !ids_.empty()) {
    std::string new_prefix = tokenizer_.decode(ids_, skip_special_tokens_);
    if (!ends_with_replacement_char(new_prefix)) {
      prefix_ = std::move(new_prefix);
      prefix_index_ = ids_.size();
    }
  }
  ids_.push_back(id);
  const std::string text = tokenizer_.decode(ids_, skip_special_tokens_);
  if (text.size() <= prefix_.size() || ends_with_replacement_char(text)) return "";
  std::string new_text;
  if (text.starts_with(prefix_)) {
    new_text = text.substr(prefix_.size());
  } else {
    // The new id rewrote text already emitted (only possible for ill-formed byte sequences, where HF
    // raises): emit from where the texts part and go on.
    std::size_t common = 0;
    while (common < prefix_.size() && common < text.size() && prefix_[common] == text[common]) ++common;
    new_text = text.substr(common);
  }
  const std::size_t new_prefix_index = ids_.size() - prefix_index_;
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_index_));
  prefix_ = tokenizer_.decode(ids_, skip_special_tokens_);
  prefix_index_ = new_prefix_index;
  return new_text;
}

std::string StreamDecoder::finish() {
  const std::string text = tokenizer_.decode(ids_, skip_special_tokens_);
  std::size_t common = 0;
  while (common < prefix_.size() && common < text.size() && prefix_[common] == text[common]) ++common;
  std::string rest = text.substr(common);
  ids_.clear();
  prefix_.clear();
  prefix_index_ = 0;
  return rest;
}

}  // namespace atom
