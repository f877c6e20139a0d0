// Argument checks of the sampling kernels: every bad field becomes an atom::Error naming it.
#include "backend/cuda/sampling/sample_rows.h"
#include "common/error.h"
#include "model/sampler.h"

namespace atom::cuda {

void check_params(const SampleRowsParams& p) {
  constexpr const char* what = "sample_rows";
  if (p.num_rows < 0) fail("{}: num_rows {} is negative", what, p.num_rows);
  if (p.num_rows == 0) return;
  if (p.vocab <= 0) fail("{}: vocab {} must be positive", what, p.vocab);
  if (p.logits_stride < p.vocab)
    fail("{}: logits_stride {} is below vocab {}", what, p.logits_stride, p.vocab);
  if (!p.logits) fail("{}: logits is null", what);
  if (!p.rows) fail("{}: rows is null", what);
  if (!p.tokens) fail("{}: tokens is null", what);
  if (!p.logprobs) fail("{}: logprobs is null", what);
  if (!p.top_tokens) fail("{}: top_tokens is null", what);
  if (!p.top_logprobs) fail("{}: top_logprobs is null", what);
  if (p.num_slots < 0) fail("{}: num_slots {} is negative", what, p.num_slots);
  if (p.num_slots > 0 && (!p.output_counts || !p.prompt_mask)) {
    fail("{}: {} token-count slots but output_counts or prompt_mask is null", what, p.num_slots);
  }
}

void check_params(const LoadTokenCountsParams& p) {
  constexpr const char* what = "load_token_counts";
  if (p.vocab <= 0) fail("{}: vocab {} must be positive", what, p.vocab);
  if (p.num_slots <= 0) fail("{}: num_slots {} must be positive", what, p.num_slots);
  if (!p.output_counts || !p.prompt_mask) fail("{}: output_counts or prompt_mask is null", what);
  if (p.num_entries < 0) fail("{}: num_entries {} is negative", what, p.num_entries);
  if (p.num_entries > 0 && !p.entries) fail("{}: entries is null for {} entries", what, p.num_entries);
  for (std::int32_t slot : p.clear_slots) {
    if (slot < 0 || slot >= p.num_slots) fail("{}: clear_slots names slot {} of {}", what, slot, p.num_slots);
  }
}

SampleRow sample_row_of(const SamplingParams& params, int logit_row, int counts_slot, std::uint64_t step) {
  SampleRow row;
  row.logit_row = logit_row;
  row.temperature = params.temperature;
  row.top_k = params.top_k;
  row.top_p = params.top_p;
  row.min_p = params.min_p;
  row.repetition_penalty = params.repetition_penalty;
  row.presence_penalty = params.presence_penalty;
  row.frequency_penalty = params.frequency_penalty;
  row.logprobs = params.logprobs < kMaxTopLogprobs ? params.logprobs : kMaxTopLogprobs;
  row.counts_slot = counts_slot;
  row.seed = params.seed;
  row.step = step;
  return row;
}

}  // namespace atom::cuda
