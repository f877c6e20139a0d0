// Multiple-choice scoring: the prompts of each task layout exactly as lm-evaluation-harness builds them,
// every malformed input refused with its file:line, and the scores of SmolLM2 against an independent Python
// implementation run with transformers (scripts/dev/make_mc_refs.py -> tests/data/eval/mc_refs.json).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>

#include "backend/cpu/atom_model_loader.h"
#include "common/error.h"
#include "eval/multiple_choice.h"
#include "io/checkpoint.h"
#include "io/json_file.h"
#include "tokenizer/checkpoint_tokenizer.h"

namespace atom {
namespace {

namespace fs = std::filesystem;

std::string data(const std::string& file) { return std::string(ATOM_TEST_DATA_DIR) + "/eval/" + file; }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(MultipleChoiceLayouts, Piqa) {
  const std::vector<McDoc> docs = read_mc_file(data("piqa.jsonl"));
  ASSERT_EQ(docs.size(), 5u);
  EXPECT_EQ(docs[0].task, McTask::kPiqa);
  ASSERT_EQ(docs[0].choices.size(), 2u);
  EXPECT_EQ(docs[0].choices[0].context, "Question: To keep bread from going stale quickly,\nAnswer:");
  EXPECT_EQ(docs[0].choices[0].continuation, " store it in a sealed bag at room temperature.");
  EXPECT_EQ(docs[0].choices[1].text, "leave it unwrapped on a sunny windowsill.");
  EXPECT_EQ(docs[0].gold, 0);
  EXPECT_EQ(docs[1].gold, 1);
}

TEST(MultipleChoiceLayouts, Arc) {
  const std::vector<McDoc> docs = read_mc_file(data("arc.jsonl"));
  EXPECT_EQ(docs[0].choices[1].context, "Question: Which of these is a source of light?\nAnswer:");
  EXPECT_EQ(docs[0].choices[1].continuation, " the Sun");
  EXPECT_EQ(docs[0].gold, 1);
  EXPECT_EQ(docs[2].gold, 0);  // numeric labels "1".."4"
  EXPECT_EQ(docs[3].choices.size(), 3u);
  EXPECT_EQ(docs[4].choices.size(), 5u);
  EXPECT_EQ(docs[4].gold, 2);
}

TEST(MultipleChoiceLayouts, HellaSwagPreprocessing) {
  const std::vector<McDoc> docs = read_mc_file(data("hellaswag.jsonl"));
  // ctx_a + " " + ctx_b.capitalize(), prefixed by the activity label.
  EXPECT_EQ(docs[0].choices[0].context, "Baking cookies: A woman mixes flour and sugar in a large bowl. She");
  EXPECT_EQ(docs[1].choices[0].context, "Washing a car: A man sprays soapy water over a red car. He then");
  // " [title]" -> ". ", then brackets removed, then double spaces halved.
  EXPECT_EQ(docs[0].choices[2].text, "paints the ceiling. blue.");
  EXPECT_EQ(docs[0].choices[3].text, "reads a newspaper on the couch.");
  EXPECT_EQ(docs[1].choices[3].text, "starts to sing loudly.");
  // Only "ctx" given (no ctx_a/ctx_b), with and without an activity label.
  EXPECT_EQ(docs[2].choices[0].context, "Playing guitar: A boy sits on a chair holding a guitar. He");
  EXPECT_EQ(docs[3].choices[0].context, "People are running along a beach at sunrise. They");
  EXPECT_EQ(docs[4].choices[0].context, "Making tea: How to make tea. Boil water in a kettle.");
  // lm-eval strips before removing "[step]", so the ending keeps a leading space.
  EXPECT_EQ(docs[4].choices[0].continuation, "  Pour the water over a tea bag in a cup.");
  EXPECT_EQ(docs[2].gold, 0);  // integer label
}

TEST(MultipleChoiceLayouts, WinoGrandePartialScoring) {
  const std::vector<McDoc> docs = read_mc_file(data("winogrande.jsonl"));
  ASSERT_EQ(docs[0].choices.size(), 2u);
  EXPECT_EQ(docs[0].choices[0].context, "The trophy does not fit in the suitcase because the trophy");
  EXPECT_EQ(docs[0].choices[1].context, "The trophy does not fit in the suitcase because the suitcase");
  EXPECT_EQ(docs[0].choices[0].continuation, " is too small.");
  EXPECT_EQ(docs[0].choices[1].continuation, " is too small.");
  EXPECT_EQ(docs[0].gold, 1);
  EXPECT_EQ(docs[2].gold, 0);
}

TEST(MultipleChoiceLayouts, BoolQ) {
  const std::vector<McDoc> docs = read_mc_file(data("boolq.jsonl"), 3);
  ASSERT_EQ(docs.size(), 3u);  // --limit
  EXPECT_EQ(
      docs[0].choices[0].context,
      "The Sun is the star at the center of the Solar System. It is a nearly perfect ball of hot plasma.\n"
      "Question: is the sun a star?\nAnswer:");
  EXPECT_EQ(docs[0].choices[0].continuation, " no");
  EXPECT_EQ(docs[0].choices[1].continuation, " yes");
  EXPECT_EQ(docs[0].gold, 1);
  EXPECT_EQ(docs[1].gold, 0);
}

class McBadFile : public ::testing::Test {
 protected:
  std::string write(const std::string& text) {
    path_ = fs::temp_directory_path() / fmt::format("atom_mc_{}_{}.jsonl", ::getpid(), counter_++);
    std::ofstream(path_) << text;
    return path_.string();
  }
  void TearDown() override { fs::remove(path_); }
  fs::path path_;
  static inline int counter_ = 0;
};

TEST_F(McBadFile, ErrorsNameTheLineAndTheField) {
  const std::string piqa = R"({"goal": "g", "sol1": "a", "sol2": "b", "label": 0})";
  const auto expect = [&](const std::string& text, std::vector<std::string> fragments) {
    const std::string path = write(text);
    const std::string e = error_of([&] { read_mc_file(path); });
    for (const std::string& f : fragments)
      EXPECT_NE(e.find(f), std::string::npos) << "'" << f << "' not in: " << e;
  };
  expect(piqa + "\n{\"x\": 1}\n", {":2", "not a known task layout"});
  expect(piqa + "\n" + R"({"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "1"})",
         {":2", "winogrande", "piqa"});
  expect(R"({"goal": "g", "sol1": "a", "sol2": "b", "label": 2})", {":1", "label", "2 choices"});
  expect(R"({"goal": "g", "sol1": "a", "label": 0})", {":1", "sol2"});
  expect(R"({"goal": 5, "sol1": "a", "sol2": "b", "label": 0})", {":1", "goal", "string"});
  expect(R"({"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "B"})",
         {"answerKey 'B'"});
  expect(R"({"sentence": "no blank", "option1": "x", "option2": "y", "answer": "1"})", {"'_'"});
  expect(R"({"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "3"})", {"answer"});
  expect(R"({"passage": "p", "question": "q", "answer": "maybe"})", {"answer"});
  expect(R"({"ctx": "c", "endings": [], "label": 0})", {"endings"});
  expect("{\"goal\": \n", {":1"});
  expect("\n\n", {"no documents"});
  EXPECT_NE(error_of([] { read_mc_file("/nonexistent/tasks.jsonl"); }).find("/nonexistent/tasks.jsonl"),
            std::string::npos);
}

// ---- scoring with SmolLM2

const std::string kModelPath =
    std::string(ATOM_SOURCE_DIR) + "/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";

class McSmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(kModelPath)) return;
    checkpoint_ = std::make_unique<Checkpoint>(open_checkpoint(kModelPath));
    tokenizer_ = std::make_unique<Tokenizer>(load_tokenizer(*checkpoint_));
    model_ = cpu::load_cpu_model(*checkpoint_);
  }
  static void TearDownTestSuite() {
    model_.reset();
    tokenizer_.reset();
    checkpoint_.reset();
  }
  void SetUp() override {
    if (model_) return;
    const char* skip = std::getenv("ATOM_SKIP_MODEL_TESTS");
    if (skip && std::string(skip) == "1")
      GTEST_SKIP() << "ATOM_SKIP_MODEL_TESTS=1 and " << kModelPath << " is absent";
    FAIL() << kModelPath << " is missing: run scripts/fetch_model.sh (or set ATOM_SKIP_MODEL_TESTS=1)";
  }
  static inline std::unique_ptr<Checkpoint> checkpoint_;
  static inline std::unique_ptr<Tokenizer> tokenizer_;
  static inline std::unique_ptr<cpu::LlamaModel> model_;
};

TEST_F(McSmolLM2, TrailingContextWhitespaceMovesToTheContinuation) {
  const auto a = encode_mc_pair(*tokenizer_, "Answer: ", "yes");
  const auto b = encode_mc_pair(*tokenizer_, "Answer:", " yes");
  EXPECT_EQ(a, b);
  EXPECT_FALSE(a.second.empty());
  const auto c = encode_mc_pair(*tokenizer_, "", "hello");  // empty context: lm-eval's prefix token
  ASSERT_EQ(c.first.size(), 1u);
  EXPECT_EQ(c.second, tokenizer_->encode("hello", false));
}

TEST_F(McSmolLM2, SharedPrefillEqualsSinglePasses) {
  const McScorer scorer(*model_, *tokenizer_);
  for (const char* file : {"arc.jsonl", "winogrande.jsonl"}) {
    for (const McDoc& doc : read_mc_file(data(file), 2)) {
      const std::vector<double> scores = scorer.score(doc);
      for (std::size_t i = 0; i < doc.choices.size(); ++i) {
        const auto [ctx, cont] =
            encode_mc_pair(*tokenizer_, doc.choices[i].context, doc.choices[i].continuation);
        EXPECT_NEAR(scores[i], scorer.loglikelihood(ctx, cont), 1e-3) << file;
        EXPECT_LT(scores[i], 0.0);
      }
    }
  }
}

TEST_F(McSmolLM2, MatchesTransformersReference) {
  const nlohmann::json refs = read_json_file(data("mc_refs.json"));
  const McScorer scorer(*model_, *tokenizer_);
  for (const char* task : {"piqa", "arc", "hellaswag", "winogrande", "boolq"}) {
    const std::vector<McDoc> docs = read_mc_file(data(std::string(task) + ".jsonl"));
    const nlohmann::json& ref = refs.at("files").at(task);
    ASSERT_EQ(ref.at("docs").size(), docs.size()) << task;
    for (std::size_t d = 0; d < docs.size(); ++d) {
      const nlohmann::json& rd = ref.at("docs")[d];
      EXPECT_EQ(rd.at("gold").get<std::int64_t>(), docs[d].gold) << task << " doc " << d;
      const std::vector<double> scores = scorer.score(docs[d]);
      ASSERT_EQ(rd.at("requests").size(), docs[d].choices.size());
      for (std::size_t i = 0; i < docs[d].choices.size(); ++i) {
        const nlohmann::json& rq = rd.at("requests")[i];
        const McChoice& c = docs[d].choices[i];
        EXPECT_EQ(rq.at("context").get<std::string>(), c.context) << task << " doc " << d;
        EXPECT_EQ(rq.at("continuation").get<std::string>(), c.continuation) << task << " doc " << d;
        EXPECT_EQ(rd.at("choices")[i].get<std::string>(), c.text) << task << " doc " << d;
        const auto [ctx, cont] = encode_mc_pair(*tokenizer_, c.context, c.continuation);
        EXPECT_EQ(rq.at("context_ids").get<std::vector<std::int32_t>>(), ctx) << task << " doc " << d;
        EXPECT_EQ(rq.at("continuation_ids").get<std::vector<std::int32_t>>(), cont) << task << " doc " << d;
        const double expected = rd.at("loglikelihoods")[i].get<double>();
        EXPECT_NEAR(scores[i], expected, 5e-4 + 1e-5 * std::fabs(expected))
            << task << " doc " << d << " choice " << i;
      }
    }
    const McResult r = evaluate_mc(scorer, docs, false);
    EXPECT_DOUBLE_EQ(r.acc, ref.at("acc").get<double>()) << task;
    if (r.acc_norm) EXPECT_DOUBLE_EQ(*r.acc_norm, ref.at("acc_norm").get<double>()) << task;
    EXPECT_EQ(r.acc_norm.has_value(),
              std::string(task) == "piqa" || std::string(task) == "arc" || std::string(task) == "hellaswag");
    EXPECT_NEAR(r.acc_stderr, r.docs > 1 ? std::sqrt(r.acc * (1 - r.acc) / (r.docs - 1)) : 0.0, 1e-12);
  }
}

}  // namespace
}  // namespace atom
