// Building blocks of the tokenizer (UTF-8, normalization, regexes, BPE) on hand-checked cases, and the
// errors that malformed tokenizer.json files and GGUF metadata raise.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/gguf_tokenizer.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace atom {
namespace {

using nlohmann::json;

TEST(Unicode, LossyDecodingReplacesMaximalSubparts) {
  EXPECT_EQ(utf8_lossy("abc"), "abc");
  EXPECT_EQ(utf8_lossy("\xC3\xA9"), "\xC3\xA9");
  EXPECT_EQ(utf8_lossy("\xC3"), "\xEF\xBF\xBD");          // truncated
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98"), "\xEF\xBF\xBD");  // one U+FFFD for the whole prefix
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98x"), "\xEF\xBF\xBDx");
  EXPECT_EQ(utf8_lossy("\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // each stray continuation byte
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(utf8_lossy("\xE0\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong
  EXPECT_EQ(utf8_lossy("\xF4\x90\x80\x80"),
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // > U+10FFFF
  EXPECT_EQ(utf8_lossy("\xFF"), "\xEF\xBF\xBD");
  EXPECT_EQ(find_invalid_utf8("ok\xC3\xA9"), std::nullopt);
  EXPECT_EQ(find_invalid_utf8("ok\xC3"), 2u);
}

TEST(Unicode, CanonicalNormalization) {
  EXPECT_EQ(to_nfc("e\xCC\x81"), "\xC3\xA9");  // e + acute -> é
  EXPECT_EQ(to_nfd("\xC3\xA9"), "e\xCC\x81");
  EXPECT_EQ(to_nfc("\xE1\xB8\x8B\xCC\xA3"), "\xE1\xB8\x8D\xCC\x87");  // ḋ + dot below -> ḍ + dot above
  EXPECT_EQ(to_nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // jamo -> 각
  EXPECT_EQ(to_nfd("\xEA\xB0\x81"), "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8");
  EXPECT_EQ(to_nfc("\xE2\x84\xAB"), "\xC3\x85");                  // Angstrom sign -> Å
  EXPECT_EQ(to_nfc("\xE0\xA5\x98"), "\xE0\xA4\x95\xE0\xA4\xBC");  // excluded: क़ stays decomposed
  EXPECT_EQ(to_nfc("\xEF\xAC\x81"), "\xEF\xAC\x81");              // ﬁ: compatibility only
  EXPECT_EQ(to_nfc("a\xCC\x81\xCC\x82"), "\xC3\xA1\xCC\x82");
  EXPECT_EQ(to_nfc("plain ascii"), "plain ascii");
}

TEST(Regex, OnigurumaCompatibleMatching) {
  using Matches = std::vector<std::pair<std::size_t, std::size_t>>;
  // \s is Unicode White_Space (NEL and no-break space included, U+001C not).
  EXPECT_EQ(Regex(R"(\s+)", "test").find_all("a\xC2\x85\xC2\xA0\x1c"), (Matches{{1, 5}}));
  // (?i:'s) folds the long s, like Oniguruma.
  EXPECT_EQ(Regex(R"((?i:'s))", "test").find_all("'S'\xC5\xBF"), (Matches{{0, 2}, {2, 5}}));
  // \h is a hex digit in Oniguruma's Ruby syntax.
  EXPECT_EQ(Regex(R"(\h+)", "test").find_all("xx0fZ"), (Matches{{2, 4}}));
  EXPECT_EQ(Regex(R"([\h_]+)", "test").find_all("x_a9x"), (Matches{{1, 4}}));
  // Empty matches: one per position, none right after a match (the onig crate's find_iter).
  EXPECT_EQ(Regex("a*", "test").find_all("baab"), (Matches{{0, 0}, {1, 3}, {4, 4}}));
  try {
    Regex("(unclosed", "pre_tokenizer.pattern");
    FAIL() << "a broken regex compiled";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pre_tokenizer.pattern"), std::string::npos) << e.what();
  }
}

StringMap<std::int32_t> vocab_of(std::initializer_list<std::pair<const char*, std::int32_t>> items) {
  StringMap<std::int32_t> vocab;
  for (const auto& [token, id] : items) vocab[token] = id;
  return vocab;
}

std::vector<std::int32_t> bpe(const BpeModel& model, std::string_view word) {
  std::vector<std::int32_t> ids;
  model.tokenize(word, ids);
  return ids;
}

TEST(Bpe, MergesByRankThenLeftmost) {
  const auto vocab = vocab_of({{"a", 0}, {"b", 1}, {"ab", 2}, {"ba", 3}, {"aba", 4}, {"c", 5}});
  const BpeModel model(vocab, {{"b", "a"}, {"a", "b"}, {"ab", "a"}}, {}, "test");
  EXPECT_EQ(bpe(model, "ab"), (std::vector<std::int32_t>{2}));
  EXPECT_EQ(bpe(model, "aba"), (std::vector<std::int32_t>{0, 3}));  // "b a" ranks first
  EXPECT_EQ(bpe(model, "abab"), (std::vector<std::int32_t>{0, 3, 1}));
  EXPECT_EQ(bpe(model, "cabc"), (std::vector<std::int32_t>{5, 2, 5}));
  EXPECT_EQ(bpe(model, "x"), (std::vector<std::int32_t>{}));  // no unk token: dropped, as HF
  const BpeModel second_rank(vocab, {{"a", "b"}, {"ab", "a"}, {"b", "a"}}, {}, "test");
  EXPECT_EQ(bpe(second_rank, "aba"), (std::vector<std::int32_t>{4}));
  EXPECT_EQ(bpe(second_rank, "aba"), (std::vector<std::int32_t>{4}));  // from the cache
}

TEST(Bpe, UnknownTokensByteFallbackAndIgnoreMerges) {
  const auto vocab =
      vocab_of({{"<unk>", 0}, {"a", 1}, {"b", 2}, {"<0xC3>", 3}, {"<0xA9>", 4}, {"ab", 5}, {"aab", 6}});
  BpeOptions options;
  options.unk_token = "<unk>";
  options.fuse_unk = true;
  const BpeModel fused(vocab, {{"a", "b"}}, options, "test");
  EXPECT_EQ(bpe(fused, "axyb"), (std::vector<std::int32_t>{1, 0, 2}));
  options.fuse_unk = false;
  const BpeModel unfused(vocab, {{"a", "b"}}, options, "test");
  EXPECT_EQ(bpe(unfused, "axyb"), (std::vector<std::int32_t>{1, 0, 0, 2}));
  options.byte_fallback = true;
  const BpeModel fallback(vocab, {{"a", "b"}}, options, "test");
  EXPECT_EQ(bpe(fallback,
                "a\xC3\xA9"
                "b"),
            (std::vector<std::int32_t>{1, 3, 4, 2}));
  EXPECT_EQ(bpe(fallback, "\xE2\x82\xAC"), (std::vector<std::int32_t>{0}));  // € has no byte tokens
  BpeOptions ignore;
  ignore.ignore_merges = true;
  const BpeModel whole(vocab, {{"a", "b"}}, ignore, "test");
  EXPECT_EQ(bpe(whole, "aab"), (std::vector<std::int32_t>{6}));  // in the vocabulary: taken whole
  const BpeModel merged(vocab, {{"a", "b"}}, {}, "test");
  EXPECT_EQ(bpe(merged, "aab"), (std::vector<std::int32_t>{1, 5}));
}

TEST(Bpe, ContinuingSubwordPrefix) {
  const auto vocab = vocab_of({{"a", 0}, {"##b", 1}, {"ab", 2}, {"##a", 3}});
  BpeOptions options;
  options.continuing_subword_prefix = "##";
  const BpeModel model(vocab, {{"a", "##b"}}, options, "test");
  EXPECT_EQ(bpe(model, "ab"), (std::vector<std::int32_t>{2}));
  EXPECT_EQ(bpe(model, "aa"), (std::vector<std::int32_t>{0, 3}));
}

// ---------------------------------------------------------------- malformed input

json minimal_tokenizer() {
  return json::parse(R"({
    "version": "1.0", "added_tokens": [{"id": 3, "content": "<s>", "special": true, "normalized": false,
                                        "lstrip": false, "rstrip": false, "single_word": false}],
    "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "post_processor": null, "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3}, "merges": ["a b"]}})");
}

void expect_error(const json& tokenizer_json, const std::string& fragment) {
  try {
    Tokenizer::from_hf_json(tokenizer_json, {}, "bad.json");
    ADD_FAILURE() << "accepted a tokenizer.json that should fail with '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos) << e.what();
  }
}

TEST(TokenizerJson, MinimalTokenizerWorks) {
  const Tokenizer tok = Tokenizer::from_hf_json(minimal_tokenizer(), {}, "ok.json");
  EXPECT_EQ(tok.encode("ab<s>ba", true), (std::vector<std::int32_t>{2, 3, 1, 0}));
  EXPECT_EQ(tok.decode(std::vector<std::int32_t>{2, 3, 1, 0}, true), "abba");
  EXPECT_THROW(tok.encode("bad \xC3", false), Error);
  // From a plain (not gzip-compressed) file too.
  const std::string path = testing::TempDir() + "/atom_minimal_tokenizer.json";
  std::ofstream(path) << minimal_tokenizer().dump();
  EXPECT_EQ(Tokenizer::from_hf_files(path).encode("ab<s>ba", false), (std::vector<std::int32_t>{2, 3, 1, 0}));
  std::filesystem::remove(path);
}

TEST(TokenizerJson, TokenIdsOutOfRangeFailClearly) {
  // An id sizes the id -> token table: a huge one must be an error, not std::bad_alloc; one above 2^32
  // must not be truncated (4294967299 would alias id 3).
  for (const char* id :
       {"2147483647", "1000000000", "4294967299", "-1", "1e9", "3.5", "18446744073709551615"}) {
    json t = minimal_tokenizer();
    t["model"]["vocab"]["b"] = json::parse(id);
    expect_error(t, "vocab");
  }
  json t = minimal_tokenizer();
  t["post_processor"] = json::parse(R"({"type": "TemplateProcessing", "single": "<s> $A",
      "special_tokens": {"<s>": {"id": "<s>", "ids": [4294967299]}}})");
  expect_error(t, "outside");
}

TEST(TokenizerJson, DeepNestingFailsClearly) {
  const std::string path = testing::TempDir() + "/atom_deep_tokenizer.json";
  std::ofstream(path) << std::string(100000, '[') << std::string(100000, ']');
  try {
    Tokenizer::from_hf_files(path);
    ADD_FAILURE() << "accepted a deeply nested tokenizer.json";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nested deeper than"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  // A deep value inside a valid-looking file: the error message must not render all of it.
  std::ofstream(path) << R"({"version": "1.0", "model": )" << std::string(120, '[') << std::string(120, ']')
                      << "}";
  EXPECT_THROW(Tokenizer::from_hf_files(path), Error);
  std::filesystem::remove(path);
}

TEST(TokenizerJson, MalformedFilesFailClearly) {
  json t = minimal_tokenizer();
  t.erase("model");
  expect_error(t, "missing 'model'");
  for (const char* type : {"WordPiece", "Unigram", "WordLevel"}) {
    t = minimal_tokenizer();
    t["model"]["type"] = type;
    expect_error(t, std::string("unsupported model type '") + type + "'");
  }
  t = minimal_tokenizer();
  t["model"]["merges"] = json::array({"a b c"});
  expect_error(t, "merges[0]");
  t["model"]["merges"] = json::array({"ab"});
  expect_error(t, "merges[0]");
  t["model"]["merges"] = json::array({json::array({"a", "x"})});
  expect_error(t, "'x' is not in the vocabulary");
  t["model"]["merges"] = json::array({json::array({"b", "a"})});
  expect_error(t, "merged token 'ba' is not in the vocabulary");
  t["model"]["merges"] = json::array({42});
  expect_error(t, "merges[0]");
  t = minimal_tokenizer();
  t["model"].erase("vocab");
  expect_error(t, "missing field 'vocab'");
  t = minimal_tokenizer();
  t["model"]["unk_token"] = "<unk>";
  expect_error(t, "unk_token '<unk>'");
  t = minimal_tokenizer();
  t["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_error(t, "unsupported pre_tokenizer type 'Whitespace'");
  t = minimal_tokenizer();
  t["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(["}}}, {"behavior", "Isolated"}, {"invert", false}};
  expect_error(t, "does not compile");
  t["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}, {"invert", false}};
  expect_error(t, "unknown split behavior 'Sideways'");
  t = minimal_tokenizer();
  t["normalizer"] = {{"type", "Lowercase"}};
  expect_error(t, "unsupported normalizer type 'Lowercase'");
  t = minimal_tokenizer();
  t["decoder"] = {{"type", "WordPiece"}};
  expect_error(t, "unsupported decoder type 'WordPiece'");
  t = minimal_tokenizer();
  t["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", json::array({{{"SpecialToken", {{"id", "<x>"}}}}})}};
  expect_error(t, "'<x>'");
  t = minimal_tokenizer();
  t["version"] = "2.0";
  expect_error(t, "version");
  t = minimal_tokenizer();
  t["added_tokens"][0].erase("content");
  expect_error(t, "added_tokens[0]");
}

TEST(TokenizerJson, FilesThatCannotBeReadFailClearly) {
  EXPECT_THROW(Tokenizer::from_hf_files("/nonexistent/tokenizer.json"), Error);
  const std::string path = testing::TempDir() + "/atom_not_json.json";
  std::ofstream(path) << "{\"model\": ";
  try {
    Tokenizer::from_hf_files(path);
    FAIL() << "accepted truncated JSON";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
}

TEST(TokenizerConfig, TokensFlagsAndTemplates) {
  const TokenizerConfig plain = TokenizerConfig::from_json(
      json::parse(
          R"({"bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false}, "pad_token": null,
                      "add_bos_token": true, "add_eos_token": false, "chat_template": "{{ x }}"})"),
      "tokenizer_config.json");
  EXPECT_EQ(plain.bos_token, "<s>");
  EXPECT_EQ(plain.eos_token, "</s>");
  EXPECT_EQ(plain.pad_token, std::nullopt);
  EXPECT_EQ(plain.add_bos_token, true);
  EXPECT_EQ(plain.add_eos_token, false);
  EXPECT_EQ(plain.chat_template, "{{ x }}");
  // A list of named templates: "default" is the chat template.
  const TokenizerConfig named = TokenizerConfig::from_json(
      json::parse(
          R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})"),
      "tokenizer_config.json");
  EXPECT_EQ(named.chat_template, "D");
  ASSERT_EQ(named.named_chat_templates.size(), 2u);
  EXPECT_EQ(named.named_chat_templates[0], (std::pair<std::string, std::string>{"tool_use", "T"}));
  try {
    TokenizerConfig::from_json(json::parse(R"({"add_bos_token": "yes"})"), "cfg.json");
    FAIL() << "accepted a string flag";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add_bos_token"), std::string::npos) << e.what();
  }
  // Token strings must exist in the vocabulary.
  try {
    Tokenizer::from_hf_json(minimal_tokenizer(), TokenizerConfig::from_json(json{{"eos_token", "</s>"}}, "c"),
                            "t.json");
    FAIL() << "accepted an eos_token outside the vocabulary";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("eos_token '</s>'"), std::string::npos) << e.what();
  }
}

TEST(GgufTokenizerData, MalformedMetadataFailsClearly) {
  GgufTokenizerData data;
  data.model = "gpt2";
  data.tokens = {"a", "b", "ab"};
  data.merges = {"a b"};
  EXPECT_EQ(Tokenizer::from_gguf(data, "t.gguf").encode("abba", false), (std::vector<std::int32_t>{2, 1, 0}));
  const auto expect_gguf_error = [](const GgufTokenizerData& d, const std::string& fragment) {
    try {
      Tokenizer::from_gguf(d, "t.gguf");
      ADD_FAILURE() << "accepted GGUF metadata that should fail with '" << fragment << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  GgufTokenizerData bad = data;
  bad.model = "bert";
  expect_gguf_error(bad, "tokenizer.ggml.model 'bert'");
  bad = data;
  bad.pre = "no-such-pre";
  expect_gguf_error(bad, "tokenizer.ggml.pre 'no-such-pre'");
  bad = data;
  bad.bos_id = 7;
  expect_gguf_error(bad, "bos_token_id 7");
  bad = data;
  bad.tokens.push_back("a");
  expect_gguf_error(bad, "repeats token 0");
  bad = data;
  bad.token_types = {1};
  expect_gguf_error(bad, "token_type has 1 entries");
  bad = data;
  bad.merges = {"a c"};
  expect_gguf_error(bad, "'c' is not in the vocabulary");
}

}  // namespace
}  // namespace atom
