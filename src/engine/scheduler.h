#pragma once
// Iteration-level (continuous) batching: every step picks, first come first served, the tokens to run
// next within the batch limits. Running sequences' decode tokens go first, then the running prefills
// (in chunks), then waiting sequences are admitted while blocks and the token budget last. When the KV
// pool runs dry, the sequence that arrived last is preempted: its blocks are freed and it goes back to
// waiting, to be recomputed (prompt and generated tokens prefilled again) when it is admitted again.
// With prefix caching on (BlockManager), a sequence being admitted first takes the cached blocks of its
// leading full blocks and prefills only the rest; at least its last token is always computed, so that there
// are logits to sample from (and the block it is written to is the sequence's own).
#include <cstdint>
#include <deque>
#include <vector>

#include "engine/block_manager.h"

namespace atom {

struct Sequence {
  std::int64_t id = 0;               // increases with arrival: the FCFS order
  std::vector<std::int32_t> tokens;  // the prompt, then the generated tokens
  int prompt_length = 0;
  int num_computed = 0;              // leading tokens whose K/V are in the cache
  std::vector<std::int32_t> block_table;
  int num_preemptions = 0;
  std::vector<BlockHash> block_hashes;  // chain hashes of the leading full blocks (prefix caching)
  int num_cached_blocks = 0;            // leading blocks of block_table that are in the prefix cache

  int generated() const { return static_cast<int>(tokens.size()) - prompt_length; }
  int uncomputed() const { return static_cast<int>(tokens.size()) - num_computed; }
};

struct SchedulerLimits {
  int max_batch = 64;             // sequences in the running set
  int max_batched_tokens = 512;   // tokens run in one step (decode tokens plus prefill chunks)
};

struct ScheduledChunk {
  Sequence* sequence = nullptr;
  int num_tokens = 0;            // tokens [num_computed, num_computed + num_tokens) run in this step
  bool samples = false;          // reaches the sequence's last token: a new token is sampled
};

struct ScheduleResult {
  std::vector<ScheduledChunk> chunks;  // decodes first, then prefill chunks
  std::vector<Sequence*> preempted;    // sent back to waiting during this step
  int num_tokens = 0;
  // Prefix caching, over the sequences admitted in this step: tokens looked up, and found in the cache.
  std::int64_t prefix_queried_tokens = 0;
  std::int64_t prefix_hit_tokens = 0;
};

class Scheduler {
 public:
  Scheduler(SchedulerLimits limits, BlockManager& blocks);

  void add(Sequence* sequence);     // a new arrival waits at the back
  // Drops a sequence wherever it is (finished or cancelled) and frees its blocks.
  void remove(Sequence* sequence);
  ScheduleResult schedule();
  // The step ran: every chunk's tokens are now in the cache.
  static void mark_computed(const ScheduleResult& result);
  // After mark_computed(): offers the newly computed full blocks of the step's sequences to the prefix
  // cache (no-op when prefix caching is off).
  void cache_computed_blocks(const ScheduleResult& result);

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  bool idle() const { return running_.empty() && waiting_.empty(); }
  const SchedulerLimits& limits() const { return limits_; }

 private:
  void preempt(Sequence* victim, ScheduleResult& result, int& budget);
  // Takes the cached blocks of the sequence's leading full blocks; returns the tokens they hold.
  int match_prefix(Sequence* sequence);

  SchedulerLimits limits_;
  BlockManager& blocks_;
  std::vector<Sequence*> running_;  // ordered by id
  std::deque<Sequence*> waiting_;   // ordered by id
};

}  // namespace atom
