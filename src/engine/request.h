#pragma once
// What a client asks the engine for (one generation request) and what the engine hands back.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/sampler.h"

namespace atom {

// How the next token is chosen and when generation stops.
struct GenerationParams {
  float temperature = 1.0f;  // 0: greedy (argmax)
  int top_k = 0;             // 0: no top-k cut
  float top_p = 1.0f;        // 1: no nucleus cut
  float min_p = 0.0f;        // 0: no min-p cut
  float repetition_penalty = 1.0f;  // 1: off (prompt and output tokens)
  float presence_penalty = 0.0f;    // 0: off (output tokens)
  float frequency_penalty = 0.0f;   // 0: off (output tokens)
  int logprobs = -1;  // -1: none; n: each generated token's logprob and the n most likely (model/sampler.h)
  std::optional<std::uint64_t> seed;  // none: a seed drawn from the engine's random device
  int max_tokens = 16;                // generated tokens at most (>= 1)
  std::vector<std::string> stop;      // stop strings, matched on the decoded text, never part of the output
  std::vector<std::int32_t> stop_token_ids;  // besides the model's end-of-sequence ids (unless ignore_eos)
  bool ignore_eos = false;  // keep generating through end-of-sequence tokens (fixed-length benchmarks)

  // Throws atom::Error naming the field when a value is out of range.
  void validate() const;
  // The sampler's view of these parameters, with the seed the request runs with.
  SamplingParams sampling(std::uint64_t seed_value) const;
};

struct GenerationRequest {
  std::vector<std::int32_t> prompt;  // token ids, at least one
  GenerationParams params;
};

enum class FinishReason { none, length, stop, cancelled, error };
const char* finish_reason_name(FinishReason reason);  // "length", "stop", ... ("" for none)

// One increment of a request's output. `text` is the newly released decoded text: text that could still be
// the start of a stop string is held back until it cannot be (or is dropped when it completes one).
struct RequestOutput {
  std::string text;
  std::vector<std::int32_t> token_ids;  // tokens generated since the previous increment
  // One per token of token_ids when the request asked for logprobs (params.logprobs >= 0), else empty.
  std::vector<SampledToken> logprobs;
  bool finished = false;
  FinishReason finish_reason = FinishReason::none;
  std::string error;          // set when finish_reason is error
  int prompt_tokens = 0;      // on every increment
  int completion_tokens = 0;  // tokens generated so far
};

}  // namespace atom
