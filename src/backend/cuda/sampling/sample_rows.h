#pragma once
// Sampling on the GPU: each row of the device logits drawn with its own parameters, as atom::sample_token()
// does on the host (model/sampler.h), so that only token ids and the requested logprobs cross to the host.
// One block per row:
//   1. penalties from the row's slot of the token-count buffer (repetition_penalty on tokens of the prompt
//      or the output, then frequency_penalty x count as one fused multiply-add, then presence_penalty), and
//      temperature, in fp32 with the host's operations: the penalized, tempered scores are bit-identical;
//   2. greedy (temperature 0): the argmax of the penalized logits, the lowest index among equal maxima;
//   3. top-k and top-p as thresholds on the score, found by radix selection on the order-preserving key of
//      the score (four 8-bit digits): over counts for top-k, over probability mass within what top-k kept
//      for top-p (the first token, most likely first, at which the mass reaches top_p is the last kept);
//      min-p per token (exp(score - max) >= min_p);
//   4. the draw: inverse CDF over token ids in increasing order at Philox's uniform of (seed, step)
//      (model/philox.h), the host's uniform.
// Masses are fixed point (exp(score - max) x 2^40 in 64-bit integers), so a row's token does not depend on
// the order of atomics: the same inputs give the same token on every run. A token less likely than 2^-40
// times the most likely one weighs nothing (never drawn here; the host draws it with that probability).
// The token differs from the host's only where the uniform falls within rounding (~1e-7) of a token's
// edge in the cumulative distribution, and where top-p's edge cuts a group of equal scores (kept whole
// here; the host's stable sort keeps part of it).
// Logprobs (rows with logprobs >= 0): log-softmax of the raw logits (fp32, as vLLM's raw_logprobs): the
// sampled token's and the n most likely tokens' (the lowest index first among equal logits).
// NaN logits count as -inf.
#include <cstdint>
#include <span>

#include <cuda_runtime.h>

namespace atom {
struct SamplingParams;
}  // namespace atom

namespace atom::cuda {

inline constexpr int kMaxTopLogprobs = 20;

// One row's parameters as the kernel reads them (model/sampler.h's SamplingParams, resolved by the host).
struct SampleRow {
  int logit_row = 0;  // row of `logits` to sample
  float temperature = 1.0f;
  int top_k = 0;                    // 0 or >= vocab: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // 1: off
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int logprobs = -1;     // -1: none; n in [0, kMaxTopLogprobs]: the sampled token's and the n most likely
  int counts_slot = -1;  // slot of the token-count buffer with this sequence's counts; -1: no penalties
  std::uint64_t seed = 0;
  std::uint64_t step = 0;  // index of the generated token: Philox's counter
};

// A request's settings as a SampleRow (host; logprobs capped at kMaxTopLogprobs). counts_slot: the row's slot
// of the token-count buffer, -1 when it has no penalties; step: the index of the token it generates.
SampleRow sample_row_of(const SamplingParams& params, int logit_row, int counts_slot, std::uint64_t step);

struct SampleRowsParams {
  const float* logits = nullptr;   // device, rows of `vocab` floats
  std::int64_t logits_stride = 0;  // floats between rows (>= vocab)
  int vocab = 0;
  const SampleRow* rows = nullptr;  // device, [num_rows]
  int num_rows = 0;
  // The token-count buffer: slot s holds the generated counts at output_counts + s * vocab and the prompt's
  // flags (1: the token is in the prompt) at prompt_mask + s * vocab. Null when no row has a slot.
  std::int32_t* output_counts = nullptr;
  std::uint8_t* prompt_mask = nullptr;
  int num_slots = 0;
  // Add each row's sampled token to its slot's counts (the engine appends it to the sequence), so the next
  // step needs no upload. Each slot at most once among the rows.
  bool count_sampled = false;
  std::int32_t* tokens = nullptr;      // device, [num_rows]: the sampled tokens
  float* logprobs = nullptr;           // device, [num_rows]: the sampled token's logprob (0 without)
  std::int32_t* top_tokens = nullptr;  // device, [num_rows, kMaxTopLogprobs]: the first `logprobs` entries
  float* top_logprobs = nullptr;       // device, [num_rows, kMaxTopLogprobs]
};

void sample_rows(const SampleRowsParams& p, cudaStream_t stream);

// One token of a sequence's history, for (re)loading its slot.
struct TokenCountEntry {
  std::int32_t slot = 0;
  std::int32_t token = 0;
  std::int32_t generated = 0;  // times generated
  std::int32_t in_prompt = 0;  // 1: in the prompt
};

struct LoadTokenCountsParams {
  std::int32_t* output_counts = nullptr;  // the token-count buffer (as in SampleRowsParams)
  std::uint8_t* prompt_mask = nullptr;
  int vocab = 0;
  int num_slots = 0;
  std::span<const std::int32_t> clear_slots;  // host: slots zeroed first
  const TokenCountEntry* entries = nullptr;   // device, [num_entries]: written after the clearing
  int num_entries = 0;
};

// Zeroes clear_slots, then writes every entry's count and flag (entries outside the buffer are skipped).
void load_token_counts(const LoadTokenCountsParams& p, cudaStream_t stream);

// Host-side checks (sample_rows_check.cpp): throw atom::Error naming the field and value at fault.
void check_params(const SampleRowsParams& p);
void check_params(const LoadTokenCountsParams& p);

}  // namespace atom::cuda
