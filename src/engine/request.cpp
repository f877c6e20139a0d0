#include "engine/request.h"

#include "common/error.h"

namespace atom {

void GenerationParams::validate() const {
  sampling(0).validate();
  if (max_tokens < 1) fail("max_tokens must be at least 1, got {}", max_tokens);
}

SamplingParams GenerationParams::sampling(std::uint64_t seed_value) const {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed_value;
  p.min_p = min_p;
  p.repetition_penalty = repetition_penalty;
  p.presence_penalty = presence_penalty;
  p.frequency_penalty = frequency_penalty;
  p.logprobs = logprobs;
  return p;
}

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::none: return "";
    case FinishReason::length: return "length";
    case FinishReason::stop: return "stop";
    case FinishReason::cancelled: return "cancelled";
    case FinishReason::error: return "error";
  }
  return "";
}

}  // namespace atom
