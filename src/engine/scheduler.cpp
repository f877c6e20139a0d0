#include "engine/scheduler.h"

#include <algorithm>

#include "common/error.h"

namespace atom {
namespace {

template <class Container>
void insert_by_id(Container& container, Sequence* sequence) {
  const auto at = std::lower_bound(container.begin(), container.end(), sequence,
                                   [](const Sequence* a, const Sequence* b) { return a->id < b->id; });
  container.insert(at, sequence);
}

}  // namespace

Scheduler::Scheduler(SchedulerLimits limits, BlockManager& blocks) : limits_(limits), blocks_(blocks) {
  if (limits.max_batch < 1) fail("max batch size must be at least 1, got {}", limits.max_batch);
  if (limits.max_batched_tokens < limits.max_batch) {
    // Otherwise the sequences arriving last could wait for decode slots for as long as others run.
    fail("max batched tokens ({}) must be at least the max batch size ({}): every running sequence decodes "
         "one token per step", limits.max_batched_tokens, limits.max_batch);
  }
}

void Scheduler::add(Sequence* sequence) {
  ATOM_CHECK(sequence->uncomputed() > 0);
  insert_by_id(waiting_, sequence);
}

void Scheduler::remove(Sequence* sequence) {
  if (auto it = std::find(running_.begin(), running_.end(), sequence); it != running_.end()) running_.erase(it);
  if (auto it = std::find(waiting_.begin(), waiting_.end(), sequence); it != waiting_.end()) waiting_.erase(it);
  blocks_.release(sequence->block_table);
}

void Scheduler::preempt(Sequence* victim, ScheduleResult& result, int& budget) {
  auto chunk = std::find_if(result.chunks.begin(), result.chunks.end(),
                            [&](const ScheduledChunk& c) { return c.sequence == victim; });
  if (chunk != result.chunks.end()) {
    budget += chunk->num_tokens;
    result.num_tokens -= chunk->num_tokens;
    result.chunks.erase(chunk);
  }
  running_.erase(std::find(running_.begin(), running_.end(), victim));
  blocks_.release(victim->block_table);
  victim->num_computed = 0;
  victim->num_cached_blocks = 0;
  ++victim->num_preemptions;
  insert_by_id(waiting_, victim);
  result.preempted.push_back(victim);
}

ScheduleResult Scheduler::schedule() {
  ScheduleResult result;
  int budget = limits_.max_batched_tokens;

  // Running sequences: decode tokens first, then prefill chunks. A snapshot, because preemption edits
  // running_ while we walk.
  for (const bool decode_pass : {true, false}) {
    const std::vector<Sequence*> snapshot = running_;
    for (Sequence* sequence : snapshot) {
      if (budget == 0) break;
      if ((sequence->uncomputed() == 1) != decode_pass) continue;
      if (std::find(running_.begin(), running_.end(), sequence) == running_.end()) continue;  // preempted
      const int n = std::min(sequence->uncomputed(), budget);
      bool preempted_self = false;
      while (!blocks_.grow(sequence->block_table, sequence->num_computed + n)) {
        Sequence* victim = running_.back();
        preempt(victim, result, budget);
        if (victim == sequence) {
          preempted_self = true;
          break;
        }
      }
      if (preempted_self) continue;
      result.chunks.push_back({sequence, n, sequence->num_computed + n == static_cast<int>(sequence->tokens.size())});
      result.num_tokens += n;
      budget -= n;
    }
  }

  // Admit waiting sequences, unless the pool just ran dry (they would only be preempted again).
  if (result.preempted.empty()) {
    while (!waiting_.empty() && budget > 0 && static_cast<int>(running_.size()) < limits_.max_batch) {
      Sequence* sequence = waiting_.front();
      const int hit = match_prefix(sequence);
      const int n = std::min(sequence->uncomputed(), budget);
      if (!blocks_.grow(sequence->block_table, sequence->num_computed + n)) {
        blocks_.release(sequence->block_table);  // gives back the cached blocks it took
        sequence->num_computed = 0;
        sequence->num_cached_blocks = 0;
        break;
      }
      if (blocks_.prefix_caching()) {
        result.prefix_queried_tokens += static_cast<std::int64_t>(sequence->tokens.size());
        result.prefix_hit_tokens += hit;
      }
      waiting_.pop_front();
      insert_by_id(running_, sequence);
      result.chunks.push_back({sequence, n, sequence->num_computed + n == static_cast<int>(sequence->tokens.size())});
      result.num_tokens += n;
      budget -= n;
    }
  }
  return result;
}

void Scheduler::mark_computed(const ScheduleResult& result) {
  for (const ScheduledChunk& chunk : result.chunks) chunk.sequence->num_computed += chunk.num_tokens;
}

int Scheduler::match_prefix(Sequence* sequence) {
  if (!blocks_.prefix_caching()) return 0;
  ATOM_CHECK(sequence->num_computed == 0 && sequence->block_table.empty());
  // Leave at least the last token to compute: a prompt of whole cached blocks recomputes its last block.
  const int bs = blocks_.block_size();
  const int max_blocks = (static_cast<int>(sequence->tokens.size()) - 1) / bs;
  extend_block_hashes(sequence->block_hashes, sequence->tokens, bs, max_blocks);
  const int hit = blocks_.match(std::span<const BlockHash>(sequence->block_hashes).first(max_blocks),
                                sequence->tokens, sequence->block_table);
  sequence->num_cached_blocks = hit;
  sequence->num_computed = hit * bs;
  return hit * bs;
}

void Scheduler::cache_computed_blocks(const ScheduleResult& result) {
  if (!blocks_.prefix_caching()) return;
  const int bs = blocks_.block_size();
  for (const ScheduledChunk& chunk : result.chunks) {
    Sequence& sequence = *chunk.sequence;
    const int full = sequence.num_computed / bs;
    if (full <= sequence.num_cached_blocks) continue;
    extend_block_hashes(sequence.block_hashes, sequence.tokens, bs, full);
    for (int i = sequence.num_cached_blocks; i < full; ++i) {
      const BlockHash parent =
          i == 0 ? kRootBlockHash : sequence.block_hashes[static_cast<std::size_t>(i) - 1];
      blocks_.offer(sequence.block_table[static_cast<std::size_t>(i)],
                    sequence.block_hashes[static_cast<std::size_t>(i)], sequence.tokens, i, parent);
    }
    sequence.num_cached_blocks = full;
  }
}

}  // namespace atom
