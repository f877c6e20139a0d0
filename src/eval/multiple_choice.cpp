#include "eval/multiple_choice.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

#include "common/error.h"
#include "common/progress.h"
#include "io/json_file.h"

namespace atom {

const char* mc_task_name(McTask task) {
  switch (task) {
    case McTask::kPiqa:
      return "piqa";
    case McTask::kArc:
      return "arc";
    case McTask::kHellaSwag:
      return "hellaswag";
    case McTask::kWinoGrande:
      return "winogrande";
    case McTask::kBoolQ:
      return "boolq";
  }
  return "?";
}

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string strip(const std::string& s) {
  std::size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// Python's str.replace: non-overlapping occurrences, left to right.
std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  std::size_t pos = 0;
  for (std::size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// re.sub(r"\[.*?\]", "", s): '.' does not match a newline.
std::string remove_brackets(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '[') {
      std::size_t j = i + 1;
      while (j < s.size() && s[j] != ']' && s[j] != '\n') ++j;
      if (j < s.size() && s[j] == ']') {
        i = j;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

// lm-eval's hellaswag preprocess.
std::string hellaswag_preprocess(const std::string& text) {
  std::string t = strip(text);
  t = replace_all(t, " [title]", ". ");
  t = remove_brackets(t);
  return replace_all(t, "  ", " ");
}

// Python's str.capitalize (ASCII letters): first character upper case, the rest lower case.
std::string capitalize(const std::string& s) {
  std::string out = s;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const auto c = static_cast<unsigned char>(out[i]);
    if (c >= 0x80) continue;
    out[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
  }
  return out;
}

const nlohmann::json& field(const nlohmann::json& doc, const char* key, const std::string& where) {
  const auto it = doc.find(key);
  if (it == doc.end()) fail("{}: missing field '{}'", where, key);
  return *it;
}

std::string string_field(const nlohmann::json& doc, const char* key, const std::string& where) {
  const nlohmann::json& v = field(doc, key, where);
  if (!v.is_string()) fail("{}: field '{}' must be a string, found {}", where, key, json_snippet(v));
  return v.get<std::string>();
}

// An integer label given as a number or as a string of digits ("2").
std::int64_t int_field(const nlohmann::json& doc, const char* key, const std::string& where) {
  const nlohmann::json& v = field(doc, key, where);
  if (v.is_number_integer()) return v.get<std::int64_t>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (!s.empty() && s.size() < 10 &&
        std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return std::stoll(s);
    }
  }
  fail("{}: field '{}' must be an integer label, found {}", where, key, json_snippet(v));
}

std::int64_t check_gold(std::int64_t gold, std::size_t choices, const char* key, const std::string& where) {
  if (gold < 0 || gold >= static_cast<std::int64_t>(choices)) {
    fail("{}: field '{}' gives answer {}, but there are {} choices", where, key, gold, choices);
  }
  return gold;
}

std::int64_t utf8_bytes(const std::string& s) { return static_cast<std::int64_t>(s.size()); }

double log_softmax_at(const float* logits, std::int64_t vocab, std::int32_t token) {
  const float max = *std::max_element(logits, logits + vocab);
  double sum = 0.0;
  for (std::int64_t j = 0; j < vocab; ++j) sum += std::exp(static_cast<double>(logits[j]) - max);
  return static_cast<double>(logits[token]) - max - std::log(sum);
}

}  // namespace

McTask detect_mc_task(const nlohmann::json& doc, const std::string& where) {
  if (!doc.is_object()) fail("{}: expected a JSON object, found {}", where, json_snippet(doc));
  const auto has = [&](const char* k) { return doc.contains(k); };
  if (has("goal") && has("sol1")) return McTask::kPiqa;
  if (has("question") && has("choices") && has("answerKey")) return McTask::kArc;
  if (has("endings")) return McTask::kHellaSwag;
  if (has("sentence") && has("option1")) return McTask::kWinoGrande;
  if (has("passage") && has("question") && has("answer")) return McTask::kBoolQ;
  fail(
      "{}: not a known task layout (PIQA goal/sol1/sol2/label, ARC question/choices/answerKey, HellaSwag "
      "ctx/endings/label, WinoGrande sentence/option1/option2/answer, BoolQ passage/question/answer)",
      where);
}

McDoc make_mc_doc(McTask task, const nlohmann::json& doc, const std::string& where) {
  McDoc d;
  d.task = task;
  const auto add = [&](std::string context, std::string text) {
    d.choices.push_back({std::move(context), " " + text, text});  // lm-eval's target_delimiter is " "
  };
  switch (task) {
    case McTask::kPiqa: {
      const std::string context = "Question: " + string_field(doc, "goal", where) + "\nAnswer:";
      add(context, string_field(doc, "sol1", where));
      add(context, string_field(doc, "sol2", where));
      d.gold = check_gold(int_field(doc, "label", where), 2, "label", where);
      break;
    }
    case McTask::kArc: {
      const std::string context = "Question: " + string_field(doc, "question", where) + "\nAnswer:";
      const nlohmann::json& choices = field(doc, "choices", where);
      if (!choices.is_object()) fail("{}: field 'choices' must be an object {{text, label}}", where);
      const nlohmann::json& texts = field(choices, "text", where + " choices");
      const nlohmann::json& labels = field(choices, "label", where + " choices");
      if (!texts.is_array() || !labels.is_array() || texts.size() != labels.size() || texts.empty()) {
        fail("{}: choices.text and choices.label must be arrays of one length", where);
      }
      const std::string key = string_field(doc, "answerKey", where);
      d.gold = -1;
      for (std::size_t i = 0; i < texts.size(); ++i) {
        if (!texts[i].is_string() || !labels[i].is_string())
          fail("{}: choice {} is not a pair of strings", where, i);
        add(context, texts[i].get<std::string>());
        if (labels[i].get<std::string>() == key) d.gold = static_cast<std::int64_t>(i);
      }
      if (d.gold < 0) fail("{}: answerKey '{}' is not one of choices.label", where, key);
      break;
    }
    case McTask::kHellaSwag: {
      std::string ctx;
      if (doc.contains("ctx_a") && doc.contains("ctx_b")) {
        ctx = string_field(doc, "ctx_a", where) + " " + capitalize(string_field(doc, "ctx_b", where));
      } else {
        ctx = string_field(doc, "ctx", where);
      }
      if (doc.contains("activity_label")) ctx = string_field(doc, "activity_label", where) + ": " + ctx;
      const std::string context = hellaswag_preprocess(ctx);
      const nlohmann::json& endings = field(doc, "endings", where);
      if (!endings.is_array() || endings.empty())
        fail("{}: field 'endings' must be a non-empty array", where);
      for (const nlohmann::json& e : endings) {
        if (!e.is_string()) fail("{}: an ending is not a string: {}", where, json_snippet(e));
        add(context, hellaswag_preprocess(e.get<std::string>()));
      }
      d.gold = check_gold(int_field(doc, "label", where), d.choices.size(), "label", where);
      break;
    }
    case McTask::kWinoGrande: {
      const std::string sentence = string_field(doc, "sentence", where);
      const std::size_t blank = sentence.find('_');
      if (blank == std::string::npos) fail("{}: field 'sentence' has no '_' blank", where);
      const std::string target = strip(sentence.substr(blank + 1));
      for (const char* key : {"option1", "option2"}) {
        const std::string context = sentence.substr(0, blank) + string_field(doc, key, where);
        d.choices.push_back({context, " " + target, context});
      }
      d.gold = check_gold(int_field(doc, "answer", where) - 1, 2, "answer", where);
      break;
    }
    case McTask::kBoolQ: {
      const std::string context = string_field(doc, "passage", where) +
                                  "\nQuestion: " + string_field(doc, "question", where) + "?\nAnswer:";
      add(context, "no");
      add(context, "yes");
      const nlohmann::json& answer = field(doc, "answer", where);
      if (answer.is_boolean()) {
        d.gold = answer.get<bool>() ? 1 : 0;
      } else {
        d.gold = check_gold(int_field(doc, "answer", where), 2, "answer", where);
      }
      break;
    }
  }
  return d;
}

std::vector<McDoc> read_mc_file(const std::string& path, std::int64_t limit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open task file '{}'", path);
  std::vector<McDoc> docs;
  std::optional<McTask> task;
  std::string line;
  for (std::int64_t number = 1; std::getline(in, line); ++number) {
    if (strip(line).empty()) continue;
    const std::string where = fmt::format("{}:{}", path, number);
    const nlohmann::json doc = parse_json(line, where);
    const McTask t = detect_mc_task(doc, where);
    if (task && *task != t) {
      fail("{}: a {} document in a file of {} documents (one task per file)", where, mc_task_name(t),
           mc_task_name(*task));
    }
    task = t;
    docs.push_back(make_mc_doc(t, doc, where));
    if (limit > 0 && static_cast<std::int64_t>(docs.size()) == limit) break;
  }
  if (docs.empty()) fail("task file '{}' holds no documents", path);
  return docs;
}

std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>> encode_mc_pair(
    const Tokenizer& tokenizer, const std::string& context, const std::string& continuation) {
  std::string ctx = context, cont = continuation;
  std::size_t end = ctx.size();
  while (end > 0 && is_space(ctx[end - 1])) --end;
  if (end < ctx.size()) {  // trailing whitespace of the context belongs to the continuation
    cont = ctx.substr(end) + cont;
    ctx.resize(end);
  }
  if (ctx.empty()) {  // lm-eval's prefix token: BOS, else the end-of-text token
    std::vector<std::int32_t> prefix;
    if (auto bos = tokenizer.bos_id()) {
      prefix.push_back(*bos);
    } else if (!tokenizer.eos_ids().empty()) {
      prefix.push_back(tokenizer.eos_ids().front());
    } else {
      fail("multiple choice: an empty context needs a BOS or EOS token, and the tokenizer has neither");
    }
    return {prefix, tokenizer.encode(cont, false)};
  }
  const std::vector<std::int32_t> whole = tokenizer.encode(ctx + cont, false);
  std::vector<std::int32_t> ctx_enc = tokenizer.encode(ctx, false);
  std::vector<std::int32_t> cont_enc;
  if (whole.size() > ctx_enc.size())
    cont_enc.assign(whole.begin() + static_cast<std::ptrdiff_t>(ctx_enc.size()), whole.end());
  return {std::move(ctx_enc), std::move(cont_enc)};
}

McScorer::McScorer(const cpu::LlamaModel& model, const Tokenizer& tokenizer)
    : model_(model), tokenizer_(tokenizer), max_length_(model.config().max_position_embeddings) {}

double McScorer::loglikelihood(std::span<const std::int32_t> context,
                               std::span<const std::int32_t> continuation) const {
  if (continuation.empty()) fail("multiple choice: a continuation encodes to no tokens");
  if (static_cast<std::int64_t>(continuation.size()) > max_length_) {
    fail("multiple choice: a continuation of {} tokens does not fit the model's context of {}",
         continuation.size(), max_length_);
  }
  std::vector<std::int32_t> all(context.begin(), context.end());
  all.insert(all.end(), continuation.begin(), continuation.end());
  // lm-eval: (context + continuation)[-(max_length + 1):][:-1]
  const std::size_t keep = std::min<std::size_t>(all.size(), static_cast<std::size_t>(max_length_ + 1));
  const std::vector<std::int32_t> input(all.end() - static_cast<std::ptrdiff_t>(keep), all.end() - 1);
  cpu::KvCache cache = model_.new_cache();
  const std::vector<float> logits = model_.forward(input, cache, /*all_logits=*/true);
  const std::int64_t vocab = model_.vocab_size(), rows = static_cast<std::int64_t>(input.size());
  const auto n = static_cast<std::int64_t>(continuation.size());
  double ll = 0.0;
  for (std::int64_t i = 0; i < n; ++i)
    ll += log_softmax_at(logits.data() + (rows - n + i) * vocab, vocab, continuation[i]);
  return ll;
}

std::vector<double> McScorer::score(const McDoc& doc) const {
  const std::int64_t vocab = model_.vocab_size();
  std::vector<std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>>> pairs;
  for (const McChoice& c : doc.choices)
    pairs.push_back(encode_mc_pair(tokenizer_, c.context, c.continuation));
  std::vector<double> scores(pairs.size());
  for (std::size_t first = 0; first < pairs.size();) {
    std::size_t last = first + 1;  // choices [first, last) share their context tokens
    while (last < pairs.size() && pairs[last].first == pairs[first].first) ++last;
    const std::vector<std::int32_t>& context = pairs[first].first;
    bool fits = true;
    for (std::size_t i = first; i < last; ++i) {
      if (pairs[i].second.empty()) fail("multiple choice: choice {} encodes to no continuation tokens", i);
      fits = fits && static_cast<std::int64_t>(context.size() + pairs[i].second.size()) <= max_length_ + 1;
    }
    if (!fits) {
      for (std::size_t i = first; i < last; ++i) scores[i] = loglikelihood(context, pairs[i].second);
    } else {
      cpu::KvCache cache = model_.new_cache();
      const std::vector<float> last_logits =
          model_.forward(context, cache);  // predicts the first continuation token
      const std::int64_t prefix = cache.length();
      for (std::size_t i = first; i < last; ++i) {
        const std::vector<std::int32_t>& cont = pairs[i].second;
        double ll = log_softmax_at(last_logits.data(), vocab, cont[0]);
        if (cont.size() > 1) {
          cache.truncate(prefix);
          const std::vector<float> rows = model_.forward(
              std::span<const std::int32_t>(cont.data(), cont.size() - 1), cache, /*all_logits=*/true);
          for (std::size_t j = 1; j < cont.size(); ++j)
            ll += log_softmax_at(rows.data() + (j - 1) * vocab, vocab, cont[j]);
        }
        scores[i] = ll;
      }
    }
    first = last;
  }
  return scores;
}

McResult evaluate_mc(const McScorer& scorer, std::span<const McDoc> docs, bool show_progress) {
  if (docs.empty()) fail("multiple choice: no documents");
  McResult r;
  r.task = docs.front().task;
  r.docs = static_cast<std::int64_t>(docs.size());
  const bool with_norm = r.task == McTask::kPiqa || r.task == McTask::kArc || r.task == McTask::kHellaSwag;
  const auto start = std::chrono::steady_clock::now();
  std::int64_t correct = 0, correct_norm = 0;
  Progress progress(mc_task_name(r.task), r.docs, show_progress);
  for (const McDoc& doc : docs) {
    std::vector<double> s = scorer.score(doc);
    std::size_t pred = 0, pred_norm = 0;
    for (std::size_t i = 1; i < s.size(); ++i) {  // first maximum wins, as numpy's argmax
      if (s[i] > s[pred]) pred = i;
      const double bytes_i = static_cast<double>(std::max<std::int64_t>(1, utf8_bytes(doc.choices[i].text)));
      const double bytes_p =
          static_cast<double>(std::max<std::int64_t>(1, utf8_bytes(doc.choices[pred_norm].text)));
      if (s[i] / bytes_i > s[pred_norm] / bytes_p) pred_norm = i;
    }
    correct += static_cast<std::int64_t>(pred) == doc.gold;
    correct_norm += static_cast<std::int64_t>(pred_norm) == doc.gold;
    r.scores.push_back(std::move(s));
    progress.advance(
        1, fmt::format("acc {:.4f}", static_cast<double>(correct) / static_cast<double>(r.scores.size())));
  }
  progress.finish();
  const double n = static_cast<double>(r.docs);
  // lm-eval's mean_stderr: sample standard deviation / sqrt(n).
  const auto stderr_of = [n](double p) { return n > 1 ? std::sqrt(p * (1.0 - p) / (n - 1.0)) : 0.0; };
  r.acc = static_cast<double>(correct) / n;
  r.acc_stderr = stderr_of(r.acc);
  if (with_norm) {
    r.acc_norm = static_cast<double>(correct_norm) / n;
    r.acc_norm_stderr = stderr_of(*r.acc_norm);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

nlohmann::json to_json(const McResult& r) {
  nlohmann::json j = {{"task", mc_task_name(r.task)}, {"docs", r.docs},       {"acc", r.acc},
                      {"acc_stderr", r.acc_stderr},   {"seconds", r.seconds}, {"scores", r.scores}};
  if (r.acc_norm) {
    j["acc_norm"] = *r.acc_norm;
    j["acc_norm_stderr"] = *r.acc_norm_stderr;
  }
  return j;
}

}  // namespace atom
