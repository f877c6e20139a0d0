#pragma once
// The seam between the engine (scheduler, block manager, sampling) and a backend's model.
// One call runs one scheduled batch: every sequence brings its new tokens (a prefill chunk or one decode
// token), their positions and its KV block table; the runner writes the new tokens' K/V into the paged
// cache and returns the logits of each sequence's last new token when asked for them.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/sampler.h"

namespace atom {

struct SequenceChunk {
  std::int64_t sequence_id = 0;             // stable for the sequence's lifetime (for runners that cache)
  std::span<const std::int32_t> tokens;     // the new tokens, at least one
  std::int32_t start_position = 0;          // position of tokens[0]; earlier positions are in the cache
  std::span<const std::int32_t> block_table;  // physical block of positions [i*block_size, (i+1)*block_size)
  bool wants_logits = false;                // the chunk ends at the sequence's last token: sample from it
};

// How one chunk with wants_logits is sampled: the request's parameters and its token history (penalties;
// history->num_generated() is the index of the draw, the RNG's counter). Both outlive the call.
struct SamplingRow {
  const SamplingParams* params = nullptr;
  const TokenCounts* history = nullptr;
};

// KV cache geometry: the engine sizes the pool, the runner owns the storage.
struct KvCacheSpec {
  int num_blocks = 0;
  int block_size = 16;
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual int vocab_size() const = 0;
  // Longest context (positions) the model supports.
  virtual int max_context() const = 0;
  // Bytes one KV block takes over all layers (K and V), for sizing the pool from a memory budget.
  virtual std::size_t kv_block_bytes(int block_size) const = 0;
  // (Re)allocates the paged KV cache. Called once before the first execute().
  virtual void allocate_kv_cache(const KvCacheSpec& spec) = 0;
  // Runs the batch. `logits` holds vocab_size() floats per chunk with wants_logits, in batch order.
  virtual void execute(std::span<const SequenceChunk> batch, std::span<float> logits) = 0;
  // Greedy decoding without logits on the host: `tokens` receives the argmax token of each chunk with
  // wants_logits, in batch order (same choice as atom::argmax). Runners that can do it on the device say so
  // (the engine then uses it for steps whose sampled requests are all greedy); the default runs execute().
  virtual bool samples_greedy_on_device() const { return false; }
  virtual void execute_greedy(std::span<const SequenceChunk> batch, std::span<std::int32_t> tokens);
  // Runs the batch and samples every chunk with wants_logits with its row's parameters (rows and `out` in
  // batch order of those chunks), as sample_token() does (model/sampler.h): the same distribution, the
  // same Philox uniform. Runners that do it on the device (no logits to the host) say so; the engine then
  // uses it for every step. The default runs execute() and samples on the host.
  virtual bool samples_on_device() const { return false; }
  virtual void execute_sample(std::span<const SequenceChunk> batch, std::span<const SamplingRow> rows,
                              std::span<SampledToken> out);
  // The sequence finished, was cancelled or preempted: drop whatever the runner keeps for it besides the
  // blocks (which the engine hands out again).
  virtual void release(std::int64_t sequence_id) {}
  // A short description for logs ("cpu, kv int8, 30 layers").
  virtual std::string describe() const = 0;
};

inline void ModelRunner::execute_greedy(std::span<const SequenceChunk> batch, std::span<std::int32_t> tokens) {
  const std::size_t vocab = static_cast<std::size_t>(vocab_size());
  std::vector<float> logits(tokens.size() * vocab);
  execute(batch, logits);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = argmax(std::span<const float>(logits).subspan(i * vocab, vocab));
  }
}

inline void ModelRunner::execute_sample(std::span<const SequenceChunk> batch,
                                        std::span<const SamplingRow> rows, std::span<SampledToken> out) {
  const std::size_t vocab = static_cast<std::size_t>(vocab_size());
  const std::size_t n = rows.size() * vocab;
  const std::unique_ptr<float[]> storage = std::make_unique_for_overwrite<float[]>(n);  // execute() fills it
  const std::span<float> logits(storage.get(), n);
  execute(batch, logits);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const SamplingRow& row = rows[i];
    const std::uint64_t step = row.history ? static_cast<std::uint64_t>(row.history->num_generated()) : 0;
    out[i] = sample_token(logits.subspan(i * vocab, vocab), *row.params, row.history, step);
  }
}

}  // namespace atom
