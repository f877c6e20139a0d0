#include "tokenizer/gguf_tokenizer.h"

#include <algorithm>
#include <array>
#include <unordered_map>

#include "common/error.h"
#include "io/gguf.h"
#include "tokenizer/unicode.h"

namespace atom {

using nlohmann::json;

namespace {

// The split regexes of llama.cpp's pre-tokenizer types, as the HF tokenizer.json files write them.
constexpr const char* kLlama3Split = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3})"
                                     R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Split = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N})"
                                    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

enum class PreKind { Gpt2, Llama3, Qwen2, StarCoder };

struct PreEntry {
  const char* name;
  PreKind kind;
};

// llama.cpp (llama-vocab.cpp) groups these names into pre-tokenizer types sharing one regex set.
constexpr std::array kPreTokenizers = {
    PreEntry{"default", PreKind::Gpt2},
    PreEntry{"gpt-2", PreKind::Gpt2},
    PreEntry{"phi-2", PreKind::Gpt2},
    PreEntry{"jina-es", PreKind::Gpt2},
    PreEntry{"jina-de", PreKind::Gpt2},
    PreEntry{"jina-v1-en", PreKind::Gpt2},
    PreEntry{"jina-v2-es", PreKind::Gpt2},
    PreEntry{"jina-v2-de", PreKind::Gpt2},
    PreEntry{"jina-v2-code", PreKind::Gpt2},
    PreEntry{"roberta-bpe", PreKind::Gpt2},
    PreEntry{"gigachat", PreKind::Gpt2},
    PreEntry{"mpt", PreKind::Gpt2},
    PreEntry{"olmo", PreKind::Gpt2},
    PreEntry{"jais", PreKind::Gpt2},
    PreEntry{"llama3", PreKind::Llama3},
    PreEntry{"llama-v3", PreKind::Llama3},
    PreEntry{"llama-bpe", PreKind::Llama3},
    PreEntry{"falcon3", PreKind::Llama3},
    PreEntry{"falcon-h1", PreKind::Llama3},
    PreEntry{"pixtral", PreKind::Llama3},
    PreEntry{"midm-2.0", PreKind::Llama3},
    PreEntry{"lfm2", PreKind::Llama3},
    PreEntry{"dbrx", PreKind::Llama3},
    PreEntry{"smaug-bpe", PreKind::Llama3},
    PreEntry{"qwen2", PreKind::Qwen2},
    PreEntry{"deepseek-r1-qwen", PreKind::Qwen2},
    PreEntry{"megrez", PreKind::Qwen2},
    PreEntry{"stablelm2", PreKind::Qwen2},
    PreEntry{"starcoder", PreKind::StarCoder},
    PreEntry{"refact", PreKind::StarCoder},
    PreEntry{"command-r", PreKind::StarCoder},
    PreEntry{"smollm", PreKind::StarCoder},
    PreEntry{"codeshell", PreKind::StarCoder},
    PreEntry{"exaone", PreKind::StarCoder},
    PreEntry{"minerva-7b", PreKind::StarCoder},
};

// llama.cpp sets ignore_merges and BOS for its LLAMA3 group only.
bool is_llama3_group(const std::string& pre) {
  for (const char* name :
       {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"}) {
    if (pre == name) return true;
  }
  return false;
}

json byte_level(bool use_regex) {
  return {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

json pre_tokenizer_for(const std::string& pre, const std::string& source) {
  const std::string name = pre.empty() ? "default" : pre;
  const auto it = std::find_if(kPreTokenizers.begin(), kPreTokenizers.end(),
                               [&](const PreEntry& e) { return name == e.name; });
  if (it == kPreTokenizers.end()) {
    std::string names;
    for (const PreEntry& e : kPreTokenizers) names += std::string(names.empty() ? "" : ", ") + e.name;
    fail("{}: tokenizer.ggml.pre '{}' is not supported (supported: {})", source, pre, names);
  }
  const auto split = [](const char* regex) {
    return json{
        {"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}};
  };
  switch (it->kind) {
    case PreKind::Gpt2:
      return byte_level(true);
    case PreKind::Llama3:
      return {{"type", "Sequence"}, {"pretokenizers", json::array({split(kLlama3Split), byte_level(false)})}};
    case PreKind::Qwen2:
      return {{"type", "Sequence"}, {"pretokenizers", json::array({split(kQwen2Split), byte_level(false)})}};
    case PreKind::StarCoder:
      return {{"type", "Sequence"},
              {"pretokenizers",
               json::array({{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)})}};
  }
  ATOM_CHECK(false);
}

const std::string& token_at(const GgufTokenizerData& data, std::int32_t id, const char* key,
                            const std::string& source) {
  if (id < 0 || static_cast<std::size_t>(id) >= data.tokens.size()) {
    fail("{}: {} {} is outside the vocabulary of {} tokens", source, key, id, data.tokens.size());
  }
  return data.tokens[static_cast<std::size_t>(id)];
}

GgufTokenType type_of(const GgufTokenizerData& data, std::size_t id) {
  return data.token_types.empty() ? GgufTokenType::Normal : static_cast<GgufTokenType>(data.token_types[id]);
}

// transformers' generate_merges (tokenization_utils_base.py) for a vocabulary with scores: every
// split of a token into two vocabulary tokens, best score first, then longer left part, then longer
// right part; ties keep token order and, within a token, (left id, right id) order.
json merges_from_scores(const GgufTokenizerData& data) {
  std::unordered_map<std::string_view, std::int32_t> ids;
  for (std::size_t i = 0; i < data.tokens.size(); ++i) ids[data.tokens[i]] = static_cast<std::int32_t>(i);
  struct Candidate {
    std::int32_t left, right;
    float score;
    std::size_t left_chars, right_chars;
  };
  std::vector<Candidate> candidates;
  std::vector<Candidate> local;
  for (std::size_t t = 0; t < data.tokens.size(); ++t) {
    const std::string_view token = data.tokens[t];
    // Skip later duplicates: a dict keeps one entry per token text.
    if (ids[token] != static_cast<std::int32_t>(t)) continue;
    const std::size_t chars =
        std::count_if(token.begin(), token.end(), [](char c) { return !is_utf8_continuation(c); });
    local.clear();
    std::size_t left_chars = 0;
    for (std::size_t cut = 1; cut < token.size(); ++cut) {
      if (is_utf8_continuation(token[cut])) continue;  // not a character boundary
      ++left_chars;
      const auto l = ids.find(token.substr(0, cut)), r = ids.find(token.substr(cut));
      if (l != ids.end() && r != ids.end()) {
        local.push_back({l->second, r->second, data.scores.empty() ? 0.0f : data.scores[t], left_chars,
                         chars - left_chars});
      }
    }
    std::sort(local.begin(), local.end(), [](const Candidate& a, const Candidate& b) {
      return a.left != b.left ? a.left < b.left : a.right < b.right;
    });
    candidates.insert(candidates.end(), local.begin(), local.end());
  }
  std::stable_sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.left_chars != b.left_chars) return a.left_chars > b.left_chars;
    return a.right_chars > b.right_chars;
  });
  json merges = json::array();
  for (const Candidate& c : candidates) {
    merges.push_back(json::array(
        {data.tokens[static_cast<std::size_t>(c.left)], data.tokens[static_cast<std::size_t>(c.right)]}));
  }
  return merges;
}

json special_template(const GgufTokenizerData& data, bool add_bos, bool add_eos, const std::string& source) {
  json single = json::array();
  json specials = json::object();
  const auto special = [&](std::int32_t id, const char* key) {
    const std::string& token = token_at(data, id, key, source);
    single.push_back({{"SpecialToken", {{"id", token}, {"type_id", 0}}}});
    specials[token] = {{"id", token}, {"ids", json::array({id})}, {"tokens", json::array({token})}};
  };
  if (add_bos) {
    if (!data.bos_id)
      fail("{}: tokenizer.ggml.add_bos_token is set but there is no tokenizer.ggml.bos_token_id", source);
    special(*data.bos_id, "tokenizer.ggml.bos_token_id");
  }
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (add_eos) {
    if (!data.eos_id)
      fail("{}: tokenizer.ggml.add_eos_token is set but there is no tokenizer.ggml.eos_token_id", source);
    special(*data.eos_id, "tokenizer.ggml.eos_token_id");
  }
  json pair = single;
  for (const json& item : single) pair.push_back(item);
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
}

}  // namespace

json gguf_to_hf_tokenizer_json(const GgufTokenizerData& data, const std::string& source) {
  if (data.tokens.empty()) fail("{}: tokenizer.ggml.tokens is empty", source);
  if (!data.token_types.empty() && data.token_types.size() != data.tokens.size()) {
    fail("{}: tokenizer.ggml.token_type has {} entries for {} tokens", source, data.token_types.size(),
         data.tokens.size());
  }
  if (!data.scores.empty() && data.scores.size() != data.tokens.size()) {
    fail("{}: tokenizer.ggml.scores has {} entries for {} tokens", source, data.scores.size(),
         data.tokens.size());
  }
  const bool byte_level_bpe = data.model == "gpt2";
  const bool sentencepiece = data.model == "llama";
  if (!byte_level_bpe && !sentencepiece) {
    fail("{}: tokenizer.ggml.model '{}' is not supported (supported: gpt2, llama)", source, data.model);
  }

  json vocab = json::object();
  for (std::size_t i = 0; i < data.tokens.size(); ++i) {
    if (data.tokens[i].empty()) fail("{}: tokenizer.ggml.tokens[{}] is empty", source, i);
    if (find_invalid_utf8(data.tokens[i]))
      fail("{}: tokenizer.ggml.tokens[{}] is not valid UTF-8", source, i);
    auto [it, inserted] = vocab.emplace(data.tokens[i], static_cast<std::int32_t>(i));
    if (!inserted)
      fail("{}: tokenizer.ggml.tokens[{}] '{}' repeats token {}", source, i, data.tokens[i], it->get<int>());
  }

  json added = json::array();
  for (std::size_t i = 0; i < data.tokens.size(); ++i) {
    const GgufTokenType type = type_of(data, i);
    const bool is_unk = data.unk_id && static_cast<std::size_t>(*data.unk_id) == i;
    const bool special =
        type == GgufTokenType::Control || (sentencepiece && (type == GgufTokenType::Unknown || is_unk));
    if (!special && type != GgufTokenType::UserDefined) continue;
    added.push_back({{"id", i},
                     {"content", data.tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", special}});
  }

  json out{
      {"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", std::move(added)}};
  json model{{"type", "BPE"},
             {"dropout", nullptr},
             {"continuing_subword_prefix", nullptr},
             {"end_of_word_suffix", nullptr},
             {"vocab", std::move(vocab)}};
  if (byte_level_bpe) {
    json merges = json::array();
    for (const std::string& m : data.merges) merges.push_back(m);
    model["merges"] = std::move(merges);
    model["unk_token"] = nullptr;
    model["fuse_unk"] = false;
    model["byte_fallback"] = false;
    model["ignore_merges"] = is_llama3_group(data.pre);
    out["normalizer"] = nullptr;
    out["pre_tokenizer"] = pre_tokenizer_for(data.pre, source);
    out["decoder"] = {
        {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
    const bool add_bos = data.add_bos.value_or(is_llama3_group(data.pre));
    const bool add_eos = data.add_eos.value_or(false);
    out["post_processor"] = add_bos || add_eos ? special_template(data, add_bos, add_eos, source)
                                               : json{{"type", "ByteLevel"},
                                                      {"add_prefix_space", true},
                                                      {"trim_offsets", false},
                                                      {"use_regex", true}};
  } else {
    model["merges"] = merges_from_scores(data);
    model["unk_token"] =
        data.unk_id ? json(token_at(data, *data.unk_id, "tokenizer.ggml.unknown_token_id", source)) : json();
    model["fuse_unk"] = true;
    model["byte_fallback"] = true;
    model["ignore_merges"] = false;
    // SentencePiece's "add dummy prefix": a space before every text stretch (also after special
    // tokens, as llama.cpp and the original Llama tokenizer.json do), spaces spelled U+2581.
    const bool add_space_prefix = data.add_space_prefix.value_or(true);
    json normalizers = json::array();
    if (add_space_prefix) normalizers.push_back({{"type", "Prepend"}, {"prepend", "\u2581"}});
    normalizers.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}});
    out["normalizer"] = {{"type", "Sequence"}, {"normalizers", std::move(normalizers)}};
    out["pre_tokenizer"] = nullptr;
    json decoders = json::array({{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                                 {{"type", "ByteFallback"}},
                                 {{"type", "Fuse"}}});
    if (add_space_prefix)
      decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    out["decoder"] = {{"type", "Sequence"}, {"decoders", std::move(decoders)}};
    const bool add_bos = data.add_bos.value_or(true);
    const bool add_eos = data.add_eos.value_or(false);
    out["post_processor"] = add_bos || add_eos ? special_template(data, add_bos, add_eos, source) : json();
  }
  out["model"] = std::move(model);
  return out;
}

TokenizerConfig gguf_tokenizer_config(const GgufTokenizerData& data, const std::string& source) {
  TokenizerConfig config;
  const auto token = [&](const std::optional<std::int32_t>& id,
                         const char* key) -> std::optional<std::string> {
    if (!id) return std::nullopt;
    return token_at(data, *id, key, source);
  };
  config.bos_token = token(data.bos_id, "tokenizer.ggml.bos_token_id");
  config.eos_token = token(data.eos_id, "tokenizer.ggml.eos_token_id");
  config.unk_token = token(data.unk_id, "tokenizer.ggml.unknown_token_id");
  config.pad_token = token(data.pad_id, "tokenizer.ggml.padding_token_id");
  config.add_bos_token = data.add_bos;
  config.add_eos_token = data.add_eos;
  config.chat_template = data.chat_template;
  return config;
}

Tokenizer Tokenizer::from_gguf(const GgufTokenizerData& data, const std::string& source) {
  std::vector<std::int32_t> extra_eos;
  for (const auto& [id, key] : {std::pair{data.eot_id, "tokenizer.ggml.eot_token_id"},
                                {data.eom_id, "tokenizer.ggml.eom_token_id"}}) {
    if (id) {
      token_at(data, *id, key, source);
      extra_eos.push_back(*id);
    }
  }
  return Tokenizer::from_hf_json(gguf_to_hf_tokenizer_json(data, source), gguf_tokenizer_config(data, source),
                                 source, std::move(extra_eos));
}

namespace {

std::optional<std::int64_t> optional_integer(const GgufFile& file, const char* key) {
  const GgufValue* v = file.find(key);
  if (!v) return std::nullopt;
  const std::string what = fmt::format("GGUF file '{}': key '{}'", file.path(), key);
  switch (v->type) {
    case GgufType::U8:
      return v->as<std::uint8_t>(what);
    case GgufType::I8:
      return v->as<std::int8_t>(what);
    case GgufType::U16:
      return v->as<std::uint16_t>(what);
    case GgufType::I16:
      return v->as<std::int16_t>(what);
    case GgufType::U32:
      return v->as<std::uint32_t>(what);
    case GgufType::I32:
      return v->as<std::int32_t>(what);
    case GgufType::U64:
      return static_cast<std::int64_t>(v->as<std::uint64_t>(what));
    case GgufType::I64:
      return v->as<std::int64_t>(what);
    default:
      fail("{} must be an integer, found {}", what, gguf_type_name(v->type));
  }
}

std::optional<std::int32_t> optional_token_id(const GgufFile& file, const char* key) {
  const auto v = optional_integer(file, key);
  if (!v) return std::nullopt;
  // llama.cpp writes "no such token" as -1 (or its u32 spelling).
  if (*v < 0 || *v == 0xFFFFFFFFll) return std::nullopt;
  if (*v > INT32_MAX) fail("GGUF file '{}': key '{}' = {} is not a token id", file.path(), key, *v);
  return static_cast<std::int32_t>(*v);
}

std::optional<bool> optional_flag(const GgufFile& file, const char* key) {
  if (!file.find(key)) return std::nullopt;
  return file.get_bool(key);
}

}  // namespace

GgufTokenizerData read_gguf_tokenizer(const GgufFile& file) {
  GgufTokenizerData data;
  data.model = std::string(file.get_string("tokenizer.ggml.model"));
  if (file.find("tokenizer.ggml.pre")) data.pre = std::string(file.get_string("tokenizer.ggml.pre"));
  for (std::string_view token : file.get_string_array("tokenizer.ggml.tokens"))
    data.tokens.emplace_back(token);
  if (file.find("tokenizer.ggml.scores")) data.scores = file.get_array_values<float>("tokenizer.ggml.scores");
  if (file.find("tokenizer.ggml.token_type")) {
    data.token_types = file.get_array_values<std::int32_t>("tokenizer.ggml.token_type");
  }
  if (file.find("tokenizer.ggml.merges")) {
    for (std::string_view m : file.get_string_array("tokenizer.ggml.merges")) data.merges.emplace_back(m);
  }
  data.bos_id = optional_token_id(file, "tokenizer.ggml.bos_token_id");
  data.eos_id = optional_token_id(file, "tokenizer.ggml.eos_token_id");
  data.unk_id = optional_token_id(file, "tokenizer.ggml.unknown_token_id");
  data.pad_id = optional_token_id(file, "tokenizer.ggml.padding_token_id");
  data.eot_id = optional_token_id(file, "tokenizer.ggml.eot_token_id");
  data.eom_id = optional_token_id(file, "tokenizer.ggml.eom_token_id");
  data.add_bos = optional_flag(file, "tokenizer.ggml.add_bos_token");
  data.add_eos = optional_flag(file, "tokenizer.ggml.add_eos_token");
  data.add_space_prefix = optional_flag(file, "tokenizer.ggml.add_space_prefix");
  if (file.find("tokenizer.chat_template"))
    data.chat_template = std::string(file.get_string("tokenizer.chat_template"));
  return data;
}

Tokenizer Tokenizer::from_gguf(const GgufFile& file) {
  return from_gguf(read_gguf_tokenizer(file), fmt::format("GGUF file '{}'", file.path()));
}

}  // namespace atom
