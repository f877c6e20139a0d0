#pragma once
// Next-token sampling with vLLM's semantics, in vLLM's order:
//   1. penalties on the raw logits (fp32): repetition_penalty on every token of the prompt or the output
//      (a positive logit divided by it, a negative one multiplied), then OpenAI's frequency_penalty
//      (minus penalty x times the token was generated, one fused multiply-add) and presence_penalty (minus
//      penalty once generated);
//   2. temperature (0: greedy, the argmax of the penalized logits), in fp32 as HF's TemperatureLogitsWarper;
//   3. top-k (ties with the k-th value kept, as HF), top-p over what top-k kept (HF's TopPLogitsWarper),
//      min-p (drops tokens whose probability is below min_p x the most likely token's);
//   4. a draw from the softmax of what is left: inverse CDF over token ids in increasing order, at a uniform
//      from Philox4x32-10 (model/philox.h) keyed by the seed with the index of the generated token as the
//      counter, so the n-th draw of a seed does not depend on what ran before it or on the backend.
// Logprobs are the model's (log-softmax of the raw logits, vLLM's default "raw_logprobs"), not those of the
// processed distribution; the CPU computes them in double.
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

namespace atom {

// OpenAI's limit on top_logprobs (chat) and vLLM's default max_logprobs.
inline constexpr int kMaxLogprobs = 20;

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy; otherwise > 0
  int top_k = 0;             // 0: off; keeps every token whose logit is >= the k-th largest (ties kept, as HF)
  float top_p = 1.0f;        // 1: off; in (0, 1]
  std::uint64_t seed = 0;
  float min_p = 0.0f;               // 0: off; in [0, 1]
  float repetition_penalty = 1.0f;  // 1: off; > 0 (HF / vLLM: > 1 discourages repeats)
  float presence_penalty = 0.0f;    // 0: off; in [-2, 2] (OpenAI)
  float frequency_penalty = 0.0f;   // 0: off; in [-2, 2] (OpenAI)
  // -1: no logprobs; n >= 0: the sampled token's logprob and the n most likely tokens' (n <= kMaxLogprobs).
  int logprobs = -1;

  // Throws atom::Error naming the parameter and value when out of range.
  void validate() const;
  bool greedy() const { return temperature == 0.0f; }
  bool has_penalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
  // Greedy without penalties or logprobs: the plain argmax of the logits.
  bool plain_greedy() const { return greedy() && !has_penalties() && logprobs < 0; }
};

// What the penalties look at: which tokens the prompt holds and how many times each was generated.
// The engine keeps one per request and adds each generated token.
class TokenCounts {
 public:
  struct Entry {
    bool in_prompt = false;
    std::int32_t generated = 0;
  };
  TokenCounts() = default;
  // track_tokens false: only the number of generated tokens is kept (a request without penalties).
  explicit TokenCounts(std::span<const std::int32_t> prompt, bool track_tokens = true);
  void add_generated(std::int32_t token);
  // Tokens generated so far (the index of the next draw).
  std::int64_t num_generated() const { return num_generated_; }
  // Every token of the prompt or the output, once.
  const std::unordered_map<std::int32_t, Entry>& entries() const { return entries_; }

 private:
  std::unordered_map<std::int32_t, Entry> entries_;
  std::int64_t num_generated_ = 0;
  bool track_tokens_ = true;
};

// Index of the largest logit (the first one on ties, as torch.argmax). Throws on an empty span.
std::int32_t argmax(std::span<const float> logits);

// Step 1 in place: the penalties of `params` over the tokens of `history` (ids outside the span ignored).
void apply_penalties(std::span<float> logits, const SamplingParams& params, const TokenCounts& history);

// The distribution a draw comes from (probabilities over the whole vocabulary, zeros for filtered tokens; a
// one-hot at the argmax of the penalized logits for greedy). Computed in double after the fp32 penalties
// and temperature. `history` may be null when there are no penalties.
std::vector<double> sampling_distribution(std::span<const float> logits, const SamplingParams& params,
                                          const TokenCounts* history = nullptr);

struct TokenLogprob {
  std::int32_t token = 0;
  float logprob = 0.0f;
};

struct SampledToken {
  std::int32_t token = 0;
  float logprob = 0.0f;                    // of `token` (when params.logprobs >= 0)
  std::vector<TokenLogprob> top_logprobs;  // the params.logprobs most likely tokens, most likely first
};

// The model's log-probabilities (log-softmax of the raw logits, in double).
std::vector<double> log_softmax(std::span<const float> logits);

// One draw: `step` is the index of the token being generated (0 for the first), Philox's counter.
// `history` may be null when there are no penalties. Fills logprobs when params.logprobs >= 0.
SampledToken sample_token(std::span<const float> logits, const SamplingParams& params,
                          const TokenCounts* history, std::uint64_t step);

// A sampler that keeps its own history and step (generation outside the engine, e.g. `atom generate`).
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params, std::span<const std::int32_t> prompt = {});  // validates
  std::int32_t sample(std::span<const float> logits);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  TokenCounts history_;
};

}  // namespace atom
