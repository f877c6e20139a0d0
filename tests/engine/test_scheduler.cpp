#include <gtest/gtest.h>

#include <memory>

#include "common/error.h"
#include "engine/scheduler.h"

namespace atom {
namespace {

std::unique_ptr<Sequence> make_sequence(std::int64_t id, int prompt_length) {
  auto s = std::make_unique<Sequence>();
  s->id = id;
  s->tokens.assign(prompt_length, 5);
  s->prompt_length = prompt_length;
  return s;
}

// What the engine does after running a step: the chunks are in the cache; sampling chunks get a token.
void run(const ScheduleResult& result) {
  Scheduler::mark_computed(result);
  for (const auto& chunk : result.chunks) {
    if (chunk.samples) chunk.sequence->tokens.push_back(7);
  }
}

TEST(Scheduler, ChunksALongPromptByTheTokenBudget) {
  BlockManager blocks(64, 16);
  Scheduler scheduler({/*max_batch=*/4, /*max_batched_tokens=*/8}, blocks);
  auto a = make_sequence(1, 20);
  scheduler.add(a.get());
  std::vector<int> sizes;
  std::vector<bool> samples;
  for (int step = 0; step < 3; ++step) {
    const ScheduleResult r = scheduler.schedule();
    ASSERT_EQ(r.chunks.size(), 1u);
    sizes.push_back(r.chunks[0].num_tokens);
    samples.push_back(r.chunks[0].samples);
    run(r);
  }
  EXPECT_EQ(sizes, (std::vector<int>{8, 8, 4}));
  EXPECT_EQ(samples, (std::vector<bool>{false, false, true}));
  EXPECT_EQ(a->generated(), 1);
  // Then one decode token per step; blocks follow the length.
  const ScheduleResult r = scheduler.schedule();
  ASSERT_EQ(r.chunks.size(), 1u);
  EXPECT_EQ(r.chunks[0].num_tokens, 1);
  EXPECT_TRUE(r.chunks[0].samples);
  EXPECT_EQ(a->block_table.size(), 2u);  // positions 0..20
}

TEST(Scheduler, DecodesGoFirstThenPrefillChunksShareTheRest) {
  BlockManager blocks(64, 16);
  Scheduler scheduler({4, 8}, blocks);
  auto a = make_sequence(1, 3);
  scheduler.add(a.get());
  run(scheduler.schedule());  // a: prefill of 3, now decoding
  auto b = make_sequence(2, 30);
  auto c = make_sequence(3, 30);
  scheduler.add(b.get());
  scheduler.add(c.get());
  ScheduleResult r = scheduler.schedule();
  ASSERT_EQ(r.chunks.size(), 2u);
  EXPECT_EQ(r.chunks[0].sequence, a.get());
  EXPECT_EQ(r.chunks[0].num_tokens, 1);
  EXPECT_EQ(r.chunks[1].sequence, b.get());
  EXPECT_EQ(r.chunks[1].num_tokens, 7);
  EXPECT_EQ(r.num_tokens, 8);
  run(r);
  // b is running now (partly prefilled): a decodes first, then b's next chunk, c still waits.
  r = scheduler.schedule();
  ASSERT_EQ(r.chunks.size(), 2u);
  EXPECT_EQ(r.chunks[0].sequence, a.get());
  EXPECT_EQ(r.chunks[1].sequence, b.get());
  EXPECT_EQ(r.chunks[1].num_tokens, 7);
  EXPECT_EQ(scheduler.num_waiting(), 1);
}

TEST(Scheduler, RespectsTheBatchLimitAndAdmitsFirstComeFirstServed) {
  BlockManager blocks(64, 16);
  Scheduler scheduler({2, 100}, blocks);
  std::vector<std::unique_ptr<Sequence>> seqs;
  for (int i = 0; i < 4; ++i) {
    seqs.push_back(make_sequence(10 + i, 4));
  }
  // Added out of order: admission follows the ids (arrival order).
  scheduler.add(seqs[2].get());
  scheduler.add(seqs[0].get());
  scheduler.add(seqs[3].get());
  scheduler.add(seqs[1].get());
  ScheduleResult r = scheduler.schedule();
  ASSERT_EQ(r.chunks.size(), 2u);
  EXPECT_EQ(r.chunks[0].sequence->id, 10);
  EXPECT_EQ(r.chunks[1].sequence->id, 11);
  run(r);
  scheduler.remove(seqs[0].get());  // finished: frees its slot and blocks
  r = scheduler.schedule();
  ASSERT_EQ(r.chunks.size(), 2u);
  EXPECT_EQ(r.chunks[0].sequence->id, 11);  // decode
  EXPECT_EQ(r.chunks[1].sequence->id, 12);  // admitted
  EXPECT_EQ(scheduler.num_running(), 2);
  EXPECT_EQ(blocks.num_used(), 2);
}

TEST(Scheduler, PreemptsTheLatestArrivalWhenBlocksRunOutAndRecomputesIt) {
  BlockManager blocks(4, 4);  // 16 positions in all
  Scheduler scheduler({8, 64}, blocks);
  auto a = make_sequence(1, 7);
  auto b = make_sequence(2, 7);
  scheduler.add(a.get());
  scheduler.add(b.get());
  run(scheduler.schedule());  // both prefilled: 2 blocks each, 8 tokens each after sampling
  EXPECT_EQ(blocks.num_free(), 0);
  const ScheduleResult fits = scheduler.schedule();  // position 7: still inside 2 blocks
  EXPECT_TRUE(fits.preempted.empty());
  EXPECT_EQ(fits.chunks.size(), 2u);
  run(fits);
  // Position 8 needs a third block for a: b (the later arrival) is preempted.
  ScheduleResult r = scheduler.schedule();
  ASSERT_EQ(r.preempted.size(), 1u);
  EXPECT_EQ(r.preempted[0], b.get());
  ASSERT_EQ(r.chunks.size(), 1u);
  EXPECT_EQ(r.chunks[0].sequence, a.get());
  EXPECT_EQ(b->num_computed, 0);
  EXPECT_TRUE(b->block_table.empty());
  EXPECT_EQ(b->tokens.size(), 9u) << "generated tokens are kept for the recompute";
  EXPECT_EQ(b->num_preemptions, 1);
  EXPECT_EQ(scheduler.num_waiting(), 1);
  run(r);
  // b is not readmitted in the step that preempted it, nor while the pool is short.
  r = scheduler.schedule();
  ASSERT_EQ(r.chunks.size(), 1u);
  EXPECT_EQ(r.chunks[0].sequence, a.get());
  run(r);
  scheduler.remove(a.get());
  // b comes back and prefills prompt + generated token in one chunk, then samples.
  r = scheduler.schedule();
  ASSERT_EQ(r.chunks.size(), 1u);
  EXPECT_EQ(r.chunks[0].sequence, b.get());
  EXPECT_EQ(r.chunks[0].num_tokens, 9);
  EXPECT_TRUE(r.chunks[0].samples);
}

TEST(Scheduler, PreemptsItselfWhenItIsTheLatestArrival) {
  BlockManager blocks(4, 4);
  Scheduler scheduler({8, 64}, blocks);
  auto a = make_sequence(1, 7);
  auto b = make_sequence(2, 8);  // b fills exactly 2 blocks and needs a third first
  scheduler.add(a.get());
  scheduler.add(b.get());
  run(scheduler.schedule());  // a: 8 tokens, b: 9 tokens
  const ScheduleResult r = scheduler.schedule();
  // a decodes position 7, inside its 2 blocks; b's position 8 needs a third block and b is the latest
  // arrival, so b preempts itself.
  ASSERT_EQ(r.preempted.size(), 1u);
  EXPECT_EQ(r.preempted[0], b.get());
  ASSERT_EQ(r.chunks.size(), 1u);
  EXPECT_EQ(r.chunks[0].sequence, a.get());
  EXPECT_EQ(blocks.num_used(), 2);
}

TEST(Scheduler, RejectsBadLimits) {
  BlockManager blocks(4, 4);
  EXPECT_THROW(Scheduler({0, 8}, blocks), Error);
  EXPECT_THROW(Scheduler({8, 0}, blocks), Error);
  EXPECT_THROW(Scheduler({8, 7}, blocks), Error);
  EXPECT_NO_THROW(Scheduler({8, 8}, blocks));
}

}  // namespace
}  // namespace atom
