#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/error.h"

namespace atom {

void SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    fail("sampling: temperature must be a finite number >= 0, got {}", temperature);
  }
  if (top_k < 0) fail("sampling: top_k must be >= 0 (0 = off), got {}", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("sampling: top_p must be in (0, 1], got {}", top_p);
}

std::int32_t argmax(std::span<const float> logits) {
  if (logits.empty()) fail("argmax of an empty logits vector");
  std::size_t best = 0;
  for (std::size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<std::int32_t>(best);
}

std::vector<double> sampling_distribution(std::span<const float> logits, const SamplingParams& params) {
  params.validate();
  const std::size_t n = logits.size();
  if (n == 0) fail("sampling from an empty logits vector");
  std::vector<double> probs(n, 0.0);
  if (params.greedy()) {
    probs[static_cast<std::size_t>(argmax(logits))] = 1.0;
    return probs;
  }
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  // Temperature, in fp32 like HF's TemperatureLogitsWarper.
  std::vector<float> scores(logits.begin(), logits.end());
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
  softmax(scores, probs);
  return probs;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) { params_.validate(); }

std::int32_t Sampler::sample(std::span<const float> logits) {
  if (params_.greedy()) return argmax(logits);
  const std::vector<double> probs = sampling_distribution(logits, params_);
  // 53 random bits -> uniform in [0, 1), identical on every platform.
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
  double cumulative = 0.0;
  std::int32_t last_kept = 0;
  for (std::size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] == 0.0) continue;
    cumulative += probs[i];
    last_kept = static_cast<std::int32_t>(i);
    if (u < cumulative) return last_kept;
  }
  return last_kept;  // u landed in the rounding slack of the cumulative sum
}

}  // namespace atom
