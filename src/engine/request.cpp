#include "engine/request.h"

#include <cmath>

#include "common/error.h"

namespace atom {

void GenerationParams::validate() const {
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    fail("temperature must be a finite number >= 0, got {}", temperature);
  }
  if (top_k < 0) fail("top_k must be >= 0 (0 = off), got {}", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("top_p must be in (0, 1], got {}", top_p);
  if (max_tokens < 1) fail("max_tokens must be at least 1, got {}", max_tokens);
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
