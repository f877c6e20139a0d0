#pragma once
// Zero-shot multiple-choice accuracy by log-likelihood, with lm-evaluation-harness's conventions (v0.4
// task configs), on the jsonl layouts of the usual tasks:
//   PIQA        {"goal", "sol1", "sol2", "label"}            "Question: {goal}\nAnswer:" + " {sol}"
//   ARC         {"question", "choices": {"text", "label"}, "answerKey"}
//                                                            "Question: {question}\nAnswer:" + " {text}"
//   HellaSwag   {"ctx" | "ctx_a" + "ctx_b", "endings", "label", ["activity_label"]}
//                                                            preprocess(label + ": " + ctx) + " " +
//                                                            preprocess(ending)
//   WinoGrande  {"sentence", "option1", "option2", "answer"} partial scoring: contexts sentence[:_] + option,
//                                                            one continuation " " + sentence[_+1:].strip()
//   BoolQ       {"passage", "question", "answer"}            "{passage}\nQuestion: {question}?\nAnswer:" + "
//   no"/" yes"
// A choice's score is sum log p(continuation tokens | context), the pair tokenized as lm-eval's _encode_pair
// does (trailing context whitespace moved to the continuation; context and context + continuation encoded
// without special tokens; the continuation is the tail of the whole beyond the context's tokens).
// acc = argmax of the scores; acc_norm = argmax of score / UTF-8 byte length of the choice text (reported
// where lm-eval reports it: PIQA, ARC, HellaSwag).
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/cpu/llama_model.h"
#include "tokenizer/tokenizer.h"

namespace atom {

enum class McTask { kPiqa, kArc, kHellaSwag, kWinoGrande, kBoolQ };
const char* mc_task_name(McTask task);  // "piqa" | "arc" | "hellaswag" | "winogrande" | "boolq"

struct McChoice {
  std::string context;       // as lm-eval builds it (before _encode_pair's whitespace move)
  std::string continuation;  // target delimiter included (" ...")
  std::string text;          // the choice as lm-eval's doc_to_choice gives it (acc_norm's length)
};

struct McDoc {
  McTask task = McTask::kPiqa;
  std::vector<McChoice> choices;
  std::int64_t gold = 0;
};

// The layout of one jsonl object (by its keys); throws atom::Error naming `where` when it fits none.
McTask detect_mc_task(const nlohmann::json& doc, const std::string& where);
// One document in lm-eval's form. Throws atom::Error naming `where` and the field for missing or mistyped
// fields and labels out of range.
McDoc make_mc_doc(McTask task, const nlohmann::json& doc, const std::string& where);
// A jsonl file: one JSON object per non-empty line, all of one layout. Errors name file:line.
std::vector<McDoc> read_mc_file(const std::string& path, std::int64_t limit = 0);

// lm-eval's _encode_pair: (context tokens, continuation tokens).
std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>> encode_mc_pair(
    const Tokenizer& tokenizer, const std::string& context, const std::string& continuation);

// Log-likelihood of continuations after contexts with a CPU model. Choices that share their context tokens
// reuse one prefill (KV cache rewound between them); inputs longer than the model's context are cut from the
// left as lm-eval does.
class McScorer {
 public:
  McScorer(const cpu::LlamaModel& model, const Tokenizer& tokenizer);
  // One score per choice of the document.
  std::vector<double> score(const McDoc& doc) const;
  // Plain single pass over context + continuation (the reference score() is tested against).
  double loglikelihood(std::span<const std::int32_t> context,
                       std::span<const std::int32_t> continuation) const;

 private:
  const cpu::LlamaModel& model_;
  const Tokenizer& tokenizer_;
  std::int64_t max_length_;
};

struct McResult {
  McTask task = McTask::kPiqa;
  std::int64_t docs = 0;
  double acc = 0, acc_stderr = 0;
  std::optional<double> acc_norm, acc_norm_stderr;  // tasks lm-eval reports it for
  std::vector<std::vector<double>> scores;          // per doc, per choice
  double seconds = 0;
};

McResult evaluate_mc(const McScorer& scorer, std::span<const McDoc> docs, bool show_progress = true);
nlohmann::json to_json(const McResult& result);

}  // namespace atom
