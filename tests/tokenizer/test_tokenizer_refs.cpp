// Encode / decode / streaming decode against HF `tokenizers` on >= 300 strings for the shared fixture
// tokenizers (spm32k, llama3, qwen3), variants of them exercising the other tokenizer.json features,
// and SmolLM2's GGUF-embedded tokenizer (references: scripts/dev/make_tokenizer_refs.py).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <random>

#include "io/gguf.h"
#include "tokenizer/bpe.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/gguf_tokenizer.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer_test_util.h"

namespace atom {
namespace {

using nlohmann::json;
using test::reference;
using test::test_strings;

std::string shown(const std::string& s) {
  std::string out = json(s).dump();
  return out.size() > 100 ? out.substr(0, 100) + "..." : out;
}

std::string shown(const std::vector<std::int32_t>& ids) {
  std::string out = json(ids).dump();
  return out.size() > 200 ? out.substr(0, 200) + "..." : out;
}

// Counts mismatches and reports the first few, so that one bug does not print 300 failures.
class MismatchReport {
 public:
  explicit MismatchReport(std::string what) : what_(std::move(what)) {}
  void add(const std::string& detail) {
    if (++count_ <= 5) ADD_FAILURE() << what_ << ": " << detail;
  }
  ~MismatchReport() { EXPECT_EQ(count_, 0) << what_ << ": mismatches in total"; }

 private:
  std::string what_;
  int count_ = 0;
};

std::vector<std::int32_t> ids_of(const json& j) { return j.get<std::vector<std::int32_t>>(); }

void expect_encodings(const Tokenizer& tok, const json& refs, const std::string& name) {
  const auto& strings = test_strings();
  ASSERT_EQ(refs["ids"].size(), strings.size()) << "reference data out of date: rerun make_tokenizer_refs.py";
  MismatchReport report(name + " encode");
  for (std::size_t i = 0; i < strings.size(); ++i) {
    for (bool special : {false, true}) {
      const auto expected = ids_of(refs[special ? "ids_special" : "ids"][i]);
      const auto got = tok.encode(strings[i], special);
      if (got != expected) {
        report.add(fmt::format("string {} {} add_special_tokens={}:\n  expected {}\n  got      {}", i,
                               shown(strings[i]), special, shown(expected), shown(got)));
      }
    }
  }
}

void expect_decodes(const Tokenizer& tok, const json& refs, const std::string& name) {
  MismatchReport report(name + " decode");
  for (const auto& [ids_key, text_key, skip] : {std::tuple{"ids_special", "decoded", false},
                                                {"ids_special", "decoded_skip", true},
                                                {"random_ids", "random_decoded", false},
                                                {"random_ids", "random_decoded_skip", true}}) {
    for (std::size_t i = 0; i < refs[ids_key].size(); ++i) {
      const auto ids = ids_of(refs[ids_key][i]);
      const std::string expected = refs[text_key][i].get<std::string>();
      const std::string got = tok.decode(ids, skip);
      if (got != expected) {
        report.add(fmt::format("{}[{}] {} skip_special={}:\n  expected {}\n  got      {}", ids_key, i,
                               shown(ids), skip, shown(expected), shown(got)));
      }
    }
  }
}

// Streaming one id at a time gives the full decode, and never half a character.
void expect_streaming(const Tokenizer& tok, const json& refs, const std::string& name) {
  MismatchReport report(name + " stream");
  for (const char* key : {"ids_special", "random_ids"}) {
    for (std::size_t i = 0; i < refs[key].size(); ++i) {
      const auto ids = ids_of(refs[key][i]);
      for (bool skip : {false, true}) {
        const std::string full = tok.decode(ids, skip);
        const bool full_has_replacement = full.find("\xEF\xBF\xBD") != std::string::npos;
        StreamDecoder stream(tok, skip);
        std::string joined;
        for (std::int32_t id : ids) {
          const std::string piece = stream.step(id);
          if (find_invalid_utf8(piece))
            report.add(fmt::format("{}[{}]: step output is not valid UTF-8", key, i));
          if (!full_has_replacement && piece.find("\xEF\xBF\xBD") != std::string::npos) {
            report.add(fmt::format("{}[{}]: a step emitted U+FFFD (half a character)", key, i));
          }
          joined += piece;
        }
        joined += stream.finish();
        // Ill-formed byte sequences (random ids only) may rewrite text already streamed.
        if (joined != full && !(std::string(key) == "random_ids" && full_has_replacement)) {
          report.add(fmt::format("{}[{}] skip={}: streamed {} != decoded {}", key, i, skip, shown(joined),
                                 shown(full)));
        }
      }
    }
  }
}

// The exported tokenizer.json, loaded again, encodes and decodes the same.
void expect_export_round_trip(const Tokenizer& tok, const std::string& name) {
  const Tokenizer again = Tokenizer::from_hf_json(
      tok.to_hf_tokenizer_json(), TokenizerConfig::from_json(tok.to_hf_tokenizer_config_json(), name),
      name + " (exported)");
  MismatchReport report(name + " export round trip");
  for (std::size_t i = 0; i < test_strings().size(); ++i) {
    for (bool special : {false, true}) {
      const auto ids = tok.encode(test_strings()[i], special);
      if (again.encode(test_strings()[i], special) != ids) report.add(fmt::format("encode of string {}", i));
      if (again.decode(ids, false) != tok.decode(ids, false))
        report.add(fmt::format("decode of string {}", i));
    }
  }
  EXPECT_EQ(again.vocab_size(), tok.vocab_size());
  EXPECT_EQ(again.bos_id(), tok.bos_id());
  EXPECT_EQ(again.eos_ids(), tok.eos_ids());
  EXPECT_EQ(again.chat_template(), tok.chat_template());
}

// ---------------------------------------------------------------- fixtures and their variants

json variant_json(const std::string& name) {
  for (const json& v : reference("variants.json")) {
    if (v["name"] != name) continue;
    json tok = test::fixture_json(v["base"].get<std::string>());
    const json top = v.value("set", json::object()), model = v.value("model", json::object());
    const json added = v.value("added_tokens", json::array());
    for (const auto& [key, value] : top.items()) tok[key] = value;
    for (const auto& [key, value] : model.items()) tok["model"][key] = value;
    std::int32_t next_id = 0;
    for (const json& t : tok["added_tokens"]) next_id = std::max(next_id, t["id"].get<std::int32_t>() + 1);
    for (json t : added) {
      t["id"] = next_id++;
      tok["added_tokens"].push_back(t);
    }
    return tok;
  }
  ADD_FAILURE() << "no variant " << name << " in variants.json";
  return json();
}

const Tokenizer& tokenizer_named(const std::string& name) {
  static std::mutex mutex;
  static std::map<std::string, Tokenizer> cache;
  std::lock_guard lock(mutex);
  auto it = cache.find(name);
  if (it == cache.end()) {
    const std::string dir = test::fixture_dir(name);
    Tokenizer tok = std::filesystem::exists(dir)
                        ? Tokenizer::from_hf_files(dir + "/tokenizer.json.gz", dir + "/tokenizer_config.json")
                        : Tokenizer::from_hf_json(variant_json(name), TokenizerConfig{}, name);
    it = cache.emplace(name, std::move(tok)).first;
  }
  return it->second;
}

class HfReference : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string base = GetParam().substr(0, GetParam().find('_'));
    ATOM_REQUIRE_FIXTURE(base);
  }
  const Tokenizer& tok() const { return tokenizer_named(GetParam()); }
  const json& refs() const { return reference("refs_" + GetParam() + ".json"); }
};

// One test per tokenizer (ctest runs each test in its own process, which loads the tokenizer).
TEST_P(HfReference, EncodeDecodeStreamAndExport) {
  expect_encodings(tok(), refs(), GetParam());
  expect_decodes(tok(), refs(), GetParam());
  expect_streaming(tok(), refs(), GetParam());
  expect_export_round_trip(tok(), GetParam());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfReference, ::testing::Values("spm32k", "llama3", "qwen3"),
                         [](const auto& info) { return info.param; });
INSTANTIATE_TEST_SUITE_P(Variants, HfReference,
                         ::testing::Values("spm32k_metaspace_first", "spm32k_metaspace_split",
                                           "spm32k_unk_added", "spm32k_unk_unfused", "llama3_gpt2_prefix",
                                           "qwen3_split_behaviors", "qwen3_nfd_strip"),
                         [](const auto& info) { return info.param; });

TEST(HfFixtures, ConfigTokensAndTemplates) {
  for (const char* name : {"spm32k", "llama3", "qwen3"}) ATOM_REQUIRE_FIXTURE(name);
  const Tokenizer& spm = tokenizer_named("spm32k");
  EXPECT_EQ(spm.bos_id(), 1);
  EXPECT_EQ(spm.eos_ids(), std::vector<std::int32_t>{2});
  EXPECT_EQ(spm.config().add_bos_token, true);
  EXPECT_TRUE(spm.is_special(1));
  EXPECT_FALSE(spm.is_special(100));
  EXPECT_EQ(spm.vocab_size(), 32000);
  EXPECT_EQ(spm.token_to_id("<0x0A>"), 13);
  EXPECT_EQ(spm.id_to_token(13), "<0x0A>");
  EXPECT_EQ(spm.id_to_token(32000), std::nullopt);

  const Tokenizer& llama3 = tokenizer_named("llama3");
  EXPECT_EQ(llama3.bos_id(), 128000);
  // <|end_of_text|> from the config, <|eot_id|> closing the template's turns.
  EXPECT_EQ(llama3.eos_ids(), (std::vector<std::int32_t>{128001, 128009}));
  EXPECT_EQ(llama3.vocab_size(), 128256);
  EXPECT_EQ(ChatTemplate::for_tokenizer(llama3).style(), ChatTemplate::Style::Llama3);

  const Tokenizer& qwen3 = tokenizer_named("qwen3");
  EXPECT_EQ(qwen3.bos_id(), std::nullopt);
  EXPECT_EQ(qwen3.eos_ids(), std::vector<std::int32_t>{151645});  // <|im_end|>
  EXPECT_EQ(ChatTemplate::for_tokenizer(qwen3).style(), ChatTemplate::Style::ChatML);
  EXPECT_FALSE(qwen3.is_special(151665));  // <tool_response>: added, not special
  EXPECT_TRUE(qwen3.is_special(151644));
}

// The fast paths of BpeModel::tokenize (word cache, long words cut where no merge can join) give what
// the plain whole-word algorithm gives, on long texts and on every word of them.
TEST(BpeFastPaths, MatchWholeWordMerging) {
  for (const char* name : {"spm32k", "llama3"}) ATOM_REQUIRE_FIXTURE(name);
  for (const char* name : {"spm32k", "llama3"}) {
    SCOPED_TRACE(name);
    const json tok = test::fixture_json(name);
    StringMap<std::int32_t> vocab;
    for (const auto& [token, id] : tok["model"]["vocab"].items()) vocab[token] = id.get<std::int32_t>();
    std::vector<std::pair<std::string, std::string>> merges;
    for (const json& m : tok["model"]["merges"]) {
      if (m.is_array()) {
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        const std::string line = m.get<std::string>();
        merges.emplace_back(line.substr(0, line.find(' ')), line.substr(line.find(' ') + 1));
      }
    }
    BpeOptions options;
    options.byte_fallback = tok["model"].value("byte_fallback", false);
    const BpeModel model(vocab, merges, options, name);
    // Texts in the model's alphabet: SentencePiece spaces, or GPT-2's byte characters.
    const auto spelled = [&](const std::string& s) {
      std::string out;
      if (std::string(name) == "spm32k") {
        for (char c : s) out += c == ' ' ? std::string("\u2581") : std::string(1, c);
      } else {
        for (unsigned char c : s) out += tokenizer_detail::byte_level_char(c);
      }
      return out;
    };
    std::mt19937 rng(7);
    std::uniform_int_distribution<std::size_t> pick(0, test_strings().size() - 1);
    int compared = 0;
    for (int round = 0; round < 40; ++round) {
      std::string text;
      while (text.size() < 2000) text += spelled(" " + test_strings()[pick(rng)]);
      std::vector<std::int32_t> fast, whole;
      model.tokenize(text, fast);
      model.tokenize_whole(text, whole);
      ASSERT_EQ(fast, whole) << shown(text);
      // Short words go through the cache: twice each.
      for (std::size_t pos = 0; pos < text.size(); pos += 37) {
        const std::string_view word =
            std::string_view(text).substr(pos, std::min<std::size_t>(60, text.size() - pos));
        if (find_invalid_utf8(word)) continue;
        for (int pass = 0; pass < 2; ++pass) {
          fast.clear();
          whole.clear();
          model.tokenize(word, fast);
          model.tokenize_whole(word, whole);
          ASSERT_EQ(fast, whole) << shown(std::string(word));
          ++compared;
        }
      }
    }
    EXPECT_GT(compared, 1000);
  }
}

// ---------------------------------------------------------------- GGUF-embedded tokenizers

const Tokenizer& smollm2() {
  static const Tokenizer tok = Tokenizer::from_gguf(GgufFile(test::smollm2_gguf_path()));
  return tok;
}

TEST(GgufTokenizer, SmolLM2MatchesHfReference) {
  ATOM_REQUIRE_SMOLLM2();
  const json& refs = reference("refs_smollm2.json");
  expect_encodings(smollm2(), refs, "smollm2");
  expect_decodes(smollm2(), refs, "smollm2");
  expect_streaming(smollm2(), refs, "smollm2");
}

TEST(GgufTokenizer, SmolLM2Metadata) {
  ATOM_REQUIRE_SMOLLM2();
  const Tokenizer& tok = smollm2();
  EXPECT_EQ(tok.vocab_size(), 49152);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_ids(), std::vector<std::int32_t>{2});  // <|im_end|>
  EXPECT_EQ(tok.config().add_bos_token, false);
  EXPECT_TRUE(tok.is_special(0));
  const ChatTemplate chat = ChatTemplate::for_tokenizer(tok);
  EXPECT_EQ(chat.style(), ChatTemplate::Style::ChatML);
  EXPECT_EQ(chat.default_system_prompt(),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  // A prompt with special tokens in it encodes them as single ids.
  const std::vector<ChatMessage> messages{{"user", "Hi"}};
  const auto ids = tok.encode(chat.apply(messages, true), false);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(tok.decode(ids, false), chat.apply(messages, true));
}

// Writes the export where make_tokenizer_refs.py asks (ATOM_TOKENIZER_EXPORT_DIR), and checks that the
// exported files load back into the same tokenizer.
TEST(GgufTokenizer, SmolLM2ExportsAnHfTokenizerJson) {
  ATOM_REQUIRE_SMOLLM2();
  const Tokenizer& tok = smollm2();
  if (const char* dir = std::getenv("ATOM_TOKENIZER_EXPORT_DIR")) {
    std::ofstream(std::string(dir) + "/tokenizer.json") << tok.to_hf_tokenizer_json().dump();
    std::ofstream(std::string(dir) + "/tokenizer_config.json") << tok.to_hf_tokenizer_config_json().dump(2);
  }
  const json exported = tok.to_hf_tokenizer_json();
  EXPECT_EQ(exported["pre_tokenizer"]["type"], "Sequence");
  EXPECT_EQ(exported["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
  EXPECT_EQ(exported["model"]["merges"].size(), 48900u);
  expect_export_round_trip(tok, "smollm2");
}

// A SentencePiece-style GGUF (tokenizer.ggml.model "llama"), built from the spm32k fixture as a
// converter writes one: no merges, a score per token, byte/control/unknown token types. SentencePiece
// scores order the merges; here each token scores minus the rank of the first merge that makes it.
// Its merges are recovered from the scores and it must encode like the original tokenizer.json.
GgufTokenizerData spm32k_as_gguf() {
  const json tok = test::fixture_json("spm32k");
  std::map<std::string, std::size_t> first_rank;
  const json& merges = tok["model"]["merges"];
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string line = merges[rank].get<std::string>();
    const std::size_t space = line.find(' ');
    first_rank.emplace(line.substr(0, space) + line.substr(space + 1), rank);
  }
  GgufTokenizerData data;
  data.model = "llama";
  std::map<std::int32_t, std::string> by_id;
  for (const auto& [token, id] : tok["model"]["vocab"].items()) by_id[id.get<std::int32_t>()] = token;
  for (const auto& [id, token] : by_id) {
    data.tokens.push_back(token);
    const bool byte = token.size() == 6 && token.starts_with("<0x");
    const GgufTokenType type = id == 0   ? GgufTokenType::Unknown
                               : id <= 2 ? GgufTokenType::Control
                               : byte    ? GgufTokenType::Byte
                                         : GgufTokenType::Normal;
    data.token_types.push_back(static_cast<std::int32_t>(type));
    const auto rank = first_rank.find(token);
    data.scores.push_back(rank == first_rank.end() ? -1e9f : -static_cast<float>(rank->second));
  }
  data.bos_id = 1;
  data.eos_id = 2;
  data.unk_id = 0;
  return data;
}

TEST(GgufTokenizer, SentencePieceFromScoresMatchesTokenizerJson) {
  ATOM_REQUIRE_FIXTURE("spm32k");
  const Tokenizer tok = Tokenizer::from_gguf(spm32k_as_gguf(), "spm32k as GGUF");
  const json& refs = reference("refs_spm32k.json");
  expect_encodings(tok, refs, "spm32k-gguf");
  expect_decodes(tok, refs, "spm32k-gguf");
  EXPECT_EQ(tok.bos_id(), 1);
  expect_export_round_trip(tok, "spm32k-gguf");
}

}  // namespace
}  // namespace atom
