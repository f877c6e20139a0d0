#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/error.h"
#include "model/philox.h"

namespace atom {

void SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    fail("temperature must be a finite number >= 0, got {}", temperature);
  }
  if (top_k < 0) fail("top_k must be >= 0 (0 = off), got {}", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("top_p must be in (0, 1], got {}", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) fail("min_p must be in [0, 1], got {}", min_p);
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) {
    fail("repetition_penalty must be a finite number > 0 (1 = off), got {}", repetition_penalty);
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    fail("presence_penalty must be in [-2, 2], got {}", presence_penalty);
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    fail("frequency_penalty must be in [-2, 2], got {}", frequency_penalty);
  }
  if (logprobs < -1 || logprobs > kMaxLogprobs) {
    fail("logprobs must be in [0, {}] top tokens (or -1 = none), got {}", kMaxLogprobs, logprobs);
  }
}

TokenCounts::TokenCounts(std::span<const std::int32_t> prompt, bool track_tokens)
    : track_tokens_(track_tokens) {
  if (!track_tokens_) return;
  for (std::int32_t token : prompt) entries_[token].in_prompt = true;
}

void TokenCounts::add_generated(std::int32_t token) {
  if (track_tokens_) ++entries_[token].generated;
  ++num_generated_;
}

std::int32_t argmax(std::span<const float> logits) {
  if (logits.empty()) fail("argmax of an empty logits vector");
  std::size_t best = 0;
  for (std::size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<std::int32_t>(best);
}

void apply_penalties(std::span<float> logits, const SamplingParams& params, const TokenCounts& history) {
  if (!params.has_penalties()) return;
  for (const auto& [token, entry] : history.entries()) {
    if (token < 0 || static_cast<std::size_t>(token) >= logits.size()) continue;
    float& logit = logits[static_cast<std::size_t>(token)];
    // vLLM's apply_penalties(): repetition over prompt and output, then frequency and presence over the
    // output.
    if (params.repetition_penalty != 1.0f) {
      logit = logit > 0.0f ? logit / params.repetition_penalty : logit * params.repetition_penalty;
    }
    // One fused multiply-add, spelled out: the compiler may not contract it differently here than on the GPU.
    logit = std::fma(-params.frequency_penalty, static_cast<float>(entry.generated), logit);
    if (entry.generated > 0) logit -= params.presence_penalty;
  }
}

namespace {

// The penalized logits (a copy only when there is something to apply).
std::span<const float> penalized(std::span<const float> logits, const SamplingParams& params,
                                 const TokenCounts* history, std::vector<float>& storage) {
  if (!params.has_penalties() || !history) return logits;
  storage.assign(logits.begin(), logits.end());
  apply_penalties(storage, params, *history);
  return storage;
}

}  // namespace

std::vector<double> sampling_distribution(std::span<const float> logits, const SamplingParams& params,
                                          const TokenCounts* history) {
  params.validate();
  const std::size_t n = logits.size();
  if (n == 0) fail("sampling from an empty logits vector");
  if (params.has_penalties() && !history) fail("sampling with penalties needs the request's token history");
  std::vector<float> penalized_storage;
  const std::span<const float> penalized_logits = penalized(logits, params, history, penalized_storage);
  std::vector<double> probs(n, 0.0);
  if (params.greedy()) {
    probs[static_cast<std::size_t>(argmax(penalized_logits))] = 1.0;
    return probs;
  }
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  // Temperature, in fp32 like HF's TemperatureLogitsWarper.
  std::vector<float> scores(penalized_logits.begin(), penalized_logits.end());
  for (float& s : scores) s = s / params.temperature;

  // Top-k: drop every score below the k-th largest.
  if (params.top_k > 0 && static_cast<std::size_t>(params.top_k) < n) {
    std::vector<float> sorted = scores;
    std::nth_element(sorted.begin(), sorted.begin() + (params.top_k - 1), sorted.end(), std::greater<float>());
    const float kth = sorted[static_cast<std::size_t>(params.top_k - 1)];
    for (float& s : scores) {
      if (s < kth) s = kMinusInf;
    }
  }

  auto softmax = [&](const std::vector<float>& s, std::vector<double>& p) {
    const double max = *std::max_element(s.begin(), s.end());
    double sum = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      p[i] = s[i] == kMinusInf ? 0.0 : std::exp(static_cast<double>(s[i]) - max);
      sum += p[i];
    }
    for (double& v : p) v /= sum;
  };

  // Top-p, as HF's TopPLogitsWarper: sort ascending, drop tokens whose cumulative probability (from the
  // least likely up) is <= 1 - top_p; the most likely token always stays.
  if (params.top_p < 1.0f) {
    softmax(scores, probs);
    std::vector<std::int32_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return scores[a] < scores[b]; });
    const double threshold = 1.0 - static_cast<double>(params.top_p);
    double cumulative = 0.0;
    for (std::size_t r = 0; r + 1 < n; ++r) {
      cumulative += probs[static_cast<std::size_t>(order[r])];
      if (cumulative <= threshold) scores[static_cast<std::size_t>(order[r])] = kMinusInf;
    }
  }

  // Min-p: a token stays when its probability is at least min_p x the largest (a ratio that renormalizing
  // over what top-k and top-p kept does not change).
  if (params.min_p > 0.0f) {
    softmax(scores, probs);
    const double cut = static_cast<double>(params.min_p) * *std::max_element(probs.begin(), probs.end());
    for (std::size_t i = 0; i < n; ++i) {
      if (probs[i] < cut) scores[i] = kMinusInf;
    }
  }
  softmax(scores, probs);
  return probs;
}

std::vector<double> log_softmax(std::span<const float> logits) {
  if (logits.empty()) fail("log_softmax of an empty logits vector");
  double max = -std::numeric_limits<double>::infinity();
  for (float x : logits) max = std::max(max, static_cast<double>(x));
  double sum = 0.0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - max);
  const double log_z = max + std::log(sum);
  std::vector<double> out(logits.size());
  for (std::size_t i = 0; i < logits.size(); ++i) out[i] = static_cast<double>(logits[i]) - log_z;
  return out;
}

SampledToken sample_token(std::span<const float> logits, const SamplingParams& params,
                          const TokenCounts* history, std::uint64_t step) {
  SampledToken out;
  if (params.greedy()) {
    if (params.has_penalties() && !history) fail("sampling with penalties needs the request's token history");
    std::vector<float> storage;
    out.token = argmax(penalized(logits, params, history, storage));
  } else {
    const std::vector<double> probs = sampling_distribution(logits, params, history);
    const double u = philox_uniform(params.seed, step);
    double cumulative = 0.0;
    out.token = -1;
    for (std::size_t i = 0; i < probs.size(); ++i) {
      if (probs[i] == 0.0) continue;
      out.token = static_cast<std::int32_t>(i);
      cumulative += probs[i];
      if (u < cumulative) break;
    }
    // Past the loop without a break, u landed in the rounding slack of the sum: the last kept token.
    ATOM_CHECK(out.token >= 0);
  }
  if (params.logprobs >= 0) {
    const std::vector<double> lp = log_softmax(logits);
    out.logprob = static_cast<float>(lp[static_cast<std::size_t>(out.token)]);
    const std::size_t n = std::min<std::size_t>(static_cast<std::size_t>(params.logprobs), lp.size());
    std::vector<std::int32_t> order(lp.size());
    std::iota(order.begin(), order.end(), 0);
    // Most likely first; the lower id first among equals.
    std::partial_sort(
        order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n), order.end(),
        [&](std::int32_t a, std::int32_t b) { return lp[a] > lp[b] || (lp[a] == lp[b] && a < b); });
    for (std::size_t i = 0; i < n; ++i)
      out.top_logprobs.push_back({order[i], static_cast<float>(lp[order[i]])});
  }
  return out;
}

Sampler::Sampler(const SamplingParams& params, std::span<const std::int32_t> prompt)
    : params_(params), history_(prompt) {
  params_.validate();
}

std::int32_t Sampler::sample(std::span<const float> logits) {
  if (logits.empty()) fail("sampling from an empty logits vector");
  const SampledToken drawn =
      sample_token(logits, params_, &history_, static_cast<std::uint64_t>(history_.num_generated()));
  history_.add_generated(drawn.token);
  return drawn.token;
}

}  // namespace atom
