#pragma once
// Next-token sampling with Hugging Face generate() semantics: logits / temperature, then top-k, then top-p
// (nucleus), then a draw from the softmax of what is left. temperature == 0 is greedy (argmax).
// Deterministic for a seed: std::mt19937_64 drives the draws, converted to uniforms without
// implementation-defined distributions.
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace atom {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy; otherwise > 0
  int top_k = 0;             // 0: off; keeps every token whose logit is >= the k-th largest (ties kept, as HF)
  float top_p = 1.0f;        // 1: off; in (0, 1]
  std::uint64_t seed = 0;

  // Throws atom::Error naming the parameter and value when out of range.
  void validate() const;
  bool greedy() const { return temperature == 0.0f; }
};

// Index of the largest logit (the first one on ties, as torch.argmax). Throws on an empty span.
std::int32_t argmax(std::span<const float> logits);

// The distribution sample() draws from (probabilities over the whole vocabulary, zeros for filtered
// tokens; a one-hot at argmax for greedy). Computed in double.
std::vector<double> sampling_distribution(std::span<const float> logits, const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);  // validates params
  std::int32_t sample(std::span<const float> logits);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace atom
