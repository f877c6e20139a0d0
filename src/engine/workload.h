#pragma once
// Offline benchmark workloads (`atom bench serve`): a synthetic ShareGPT-like mix of prompt and output
// lengths drawn from a fixed seed, or a JSONL trace.
//
// The synthetic mix: log-normal lengths whose means are those reported for ShareGPT conversations in the
// vLLM paper (Kwon et al., 2023: prompts 161 tokens, outputs 338 tokens on average), with log-space standard
// deviations 1.0 (prompts) and 0.9 (outputs) for their long tails; clamped to [min_length, max_*_length].
// Prompt tokens are uniform random ids. Draws use std::mt19937_64 and explicit transforms (no
// implementation-defined std:: distributions), so a seed gives the same workload everywhere.
#include <cstdint>
#include <string>
#include <vector>

#include "engine/text_codec.h"

namespace atom {

struct WorkloadRequest {
  std::vector<std::int32_t> prompt;
  int output_length = 0;  // max_tokens (exact when the benchmark ignores EOS)
};

struct SyntheticWorkload {
  int num_requests = 64;
  std::uint64_t seed = 0;
  double prompt_mean = 161.0, prompt_log_sigma = 1.0;
  double output_mean = 338.0, output_log_sigma = 0.9;
  int min_length = 4;
  int max_prompt_length = 1024;
  int max_output_length = 1024;
  int fixed_prompt_length = 0;  // > 0: every prompt this long (no distribution)
  int fixed_output_length = 0;  // > 0: every output this long
  // > 0: every prompt starts with the same this many random tokens (a shared system prompt), followed by
  // its own prompt drawn as above.
  int shared_prefix_length = 0;
};

// Token ids are drawn from [first_token, vocab_size).
std::vector<WorkloadRequest> synthetic_workload(const SyntheticWorkload& spec, int vocab_size, int first_token = 0);

// JSONL, one request a line: {"prompt": "text"} (tokenized with the codec, BOS added) or
// {"prompt_length": N} (random ids from `seed`), and {"output_length": M} (default: `default_output`).
// Lengths are clamped to max_prompt_length / max_output_length when those are > 0. Throws atom::Error naming
// the file and line at fault.
// Puts the same `length` random token ids (from `seed`, in [first_token, vocab_size)) in front of every
// request's prompt: a shared system prompt, for prefix caching.
void add_shared_prefix(std::vector<WorkloadRequest>& requests, int length, int vocab_size, std::uint64_t seed,
                       int first_token = 0);

std::vector<WorkloadRequest> load_trace_workload(const std::string& path, const TextCodec& codec, int vocab_size,
                                                 int default_output, std::uint64_t seed, int max_prompt_length = 0,
                                                 int max_output_length = 0);

}  // namespace atom
