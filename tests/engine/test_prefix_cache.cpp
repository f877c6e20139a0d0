// Automatic prefix caching: the block manager's cache (hashing, reference counts, LRU eviction) and the
// engine with the fake model, whose output depends on every token read back through the block tables.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "engine/block_manager.h"
#include "engine/engine.h"
#include "engine/prefix_hash.h"
#include "fake_model.h"

namespace atom {
namespace {

using testing::FakeCodec;
using testing::FakeRunner;
using testing::reference_generate;

std::vector<BlockHash> hashes_of(const std::vector<std::int32_t>& tokens, int block_size) {
  std::vector<BlockHash> h;
  extend_block_hashes(h, tokens, block_size, static_cast<int>(tokens.size()) / block_size);
  return h;
}

// Computes a sequence's blocks and offers them to the cache, as the scheduler does after a step.
std::vector<std::int32_t> fill(BlockManager& blocks, const std::vector<std::int32_t>& tokens) {
  std::vector<std::int32_t> table;
  EXPECT_TRUE(blocks.grow(table, static_cast<std::int64_t>(tokens.size())));
  const auto h = hashes_of(tokens, blocks.block_size());
  for (std::size_t i = 0; i < h.size(); ++i) {
    blocks.offer(table[i], h[i], tokens, static_cast<int>(i), i == 0 ? kRootBlockHash : h[i - 1]);
  }
  return table;
}

TEST(PrefixHash, NamesTheWholePrefix) {
  const std::vector<std::int32_t> a = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<std::int32_t> b = a;
  b[1] = 9;  // differs in block 0 only
  const auto ha = hashes_of(a, 4), hb = hashes_of(b, 4);
  ASSERT_EQ(ha.size(), 2u);
  EXPECT_NE(ha[0], hb[0]);
  EXPECT_NE(ha[1], hb[1]) << "block 1's tokens agree, its prefix does not";
  EXPECT_EQ(hashes_of({1, 2, 3, 4, 5}, 4).size(), 1u) << "only full blocks";
  EXPECT_EQ(hashes_of({1, 2, 3, 4, 5}, 4)[0], ha[0]);
}

TEST(BlockManager, PrefixCacheSharesHeldBlocksAndEvictsTheLeastRecentlyUsed) {
  BlockManager blocks(6, 4, /*prefix_caching=*/true);
  const std::vector<std::int32_t> a = {1, 2, 3, 4, 5, 6, 7, 8, 9};  // 2 full blocks and 1 partial
  std::vector<std::int32_t> ta = fill(blocks, a);
  EXPECT_EQ(blocks.num_cached(), 2);
  EXPECT_EQ(blocks.num_used(), 3);

  // Held by a and b at once.
  std::vector<std::int32_t> tb;
  const std::vector<std::int32_t> b = {1, 2, 3, 4, 5, 6, 7, 8, 10, 11};
  EXPECT_EQ(blocks.match(hashes_of(b, 4), b, tb), 2);
  EXPECT_EQ(tb, std::vector<std::int32_t>(ta.begin(), ta.begin() + 2));
  EXPECT_EQ(blocks.num_used(), 3);
  blocks.release(ta);
  EXPECT_EQ(blocks.num_used(), 2) << "a's partial block is free, the shared ones still held by b";
  EXPECT_EQ(blocks.num_evictable(), 0);
  blocks.release(tb);
  EXPECT_EQ(blocks.num_used(), 0);
  EXPECT_EQ(blocks.num_evictable(), 2);
  EXPECT_EQ(blocks.num_free(), 6);

  // A different first block shares nothing, even though block 1's tokens agree.
  std::vector<std::int32_t> tc;
  const std::vector<std::int32_t> c = {0, 2, 3, 4, 5, 6, 7, 8, 9};
  EXPECT_EQ(blocks.match(hashes_of(c, 4), c, tc), 0);
  EXPECT_TRUE(tc.empty());

  // Memory pressure: 4 free blocks, then the cached ones, the tail block of the released prefix first.
  const std::int32_t head = blocks.match(hashes_of(a, 4), a, tc) == 2 ? tc[0] : -1;
  const std::int32_t tail = tc[1];
  blocks.release(tc);
  std::vector<std::int32_t> big;
  ASSERT_TRUE(blocks.grow(big, 4 * 5));
  EXPECT_EQ(blocks.evictions(), 1);
  EXPECT_EQ(std::count(big.begin(), big.end(), tail), 1);
  EXPECT_EQ(std::count(big.begin(), big.end(), head), 0);
  EXPECT_EQ(blocks.match(hashes_of(a, 4), a, tc), 1) << "the head is still cached";
  blocks.release(tc);
  EXPECT_FALSE(blocks.grow(big, 4 * 7));
  blocks.release(big);
  blocks.clear_cache();
  EXPECT_EQ(blocks.num_cached(), 0);
  EXPECT_EQ(blocks.num_free(), 6);
  EXPECT_EQ(blocks.evictions(), 1) << "clearing is not eviction";
  EXPECT_EQ(blocks.match(hashes_of(a, 4), a, tc), 0);
}

TEST(BlockManager, PrefixCacheOffCachesNothing) {
  BlockManager blocks(4, 4);
  const std::vector<std::int32_t> a = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<std::int32_t> ta = fill(blocks, a);
  EXPECT_EQ(blocks.num_cached(), 0);
  blocks.release(ta);
  std::vector<std::int32_t> tb;
  EXPECT_EQ(blocks.match(hashes_of(a, 4), a, tb), 0);
  EXPECT_EQ(blocks.num_free(), 4);
}

TEST(BlockManager, PrefixCacheRandomWorkloadNeverLeaksOrSharesAWrittenBlock) {
  BlockManager blocks(48, 4, true);
  std::mt19937 rng(11);
  const std::vector<std::int32_t> stem = {7, 7, 7, 7, 8, 8, 8, 8, 9, 9, 9, 9};
  std::vector<std::vector<std::int32_t>> tables(8);
  for (int it = 0; it < 3000; ++it) {
    auto& table = tables[rng() % tables.size()];
    if (!table.empty()) {
      blocks.release(table);
    } else {
      std::vector<std::int32_t> tokens(stem.begin(), stem.begin() + 4 * (rng() % 4));
      for (int n = 1 + static_cast<int>(rng() % 20); n > 0; --n)
        tokens.push_back(static_cast<std::int32_t>(rng() % 3));
      const auto h = hashes_of(tokens, 4);
      const int hit = blocks.match(std::span<const BlockHash>(h).first(std::min<std::size_t>(h.size(), 2)),
                                   tokens, table);
      if (!blocks.grow(table, static_cast<std::int64_t>(tokens.size()))) {
        blocks.release(table);
        continue;
      }
      for (std::size_t i = hit; i < h.size(); ++i) {
        blocks.offer(table[i], h[i], tokens, static_cast<int>(i), i == 0 ? kRootBlockHash : h[i - 1]);
      }
    }
    std::set<std::int32_t> held;
    for (const auto& t : tables) held.insert(t.begin(), t.end());
    ASSERT_EQ(blocks.num_used(), static_cast<int>(held.size()));
  }
  EXPECT_GT(blocks.evictions(), 0);
  for (auto& t : tables) blocks.release(t);
  blocks.clear_cache();
  EXPECT_EQ(blocks.num_free(), 48);
  EXPECT_EQ(blocks.num_cached(), 0);
}

// ---- the engine

struct Harness {
  explicit Harness(EngineConfig config) {
    auto owned = std::make_unique<FakeRunner>();
    runner = owned.get();
    engine = std::make_unique<Engine>(std::move(owned), std::make_shared<FakeCodec>(), config, &metrics);
  }
  void run_until_idle() {
    while (engine->step()) {
    }
  }
  MetricsRegistry metrics;
  FakeRunner* runner = nullptr;
  std::unique_ptr<Engine> engine;
};

EngineConfig config(bool caching, int max_batch, int max_tokens, int num_blocks, int block_size = 8) {
  EngineConfig c;
  c.limits.max_batch = max_batch;
  c.limits.max_batched_tokens = max_tokens;
  c.num_kv_blocks = num_blocks;
  c.block_size = block_size;
  c.enable_prefix_caching = caching;
  return c;
}

GenerationRequest greedy(std::vector<std::int32_t> prompt, int max_tokens) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.params.temperature = 0.0f;
  r.params.max_tokens = max_tokens;
  r.params.ignore_eos = true;
  return r;
}

TEST(EnginePrefixCache, ASecondRequestPrefillsOnlyWhatIsNotCached) {
  Harness h(config(true, 4, 64, 64));
  std::vector<std::int32_t> prompt(21);
  for (int i = 0; i < 21; ++i) prompt[i] = 1 + i % 50;
  auto first = h.engine->submit(greedy(prompt, 5));
  h.run_until_idle();
  EXPECT_EQ(first->wait().token_ids, reference_generate(prompt, 5));
  EXPECT_EQ(h.engine->stats().kv_blocks_cached, 3)
      << "21 prompt + 4 computed generated tokens: 3 full blocks";
  EXPECT_EQ(h.engine->stats().kv_blocks_used, 0);

  // Same first 16 tokens (2 blocks), then different.
  std::vector<std::int32_t> other(prompt.begin(), prompt.begin() + 16);
  other.insert(other.end(), {40, 41, 42});
  auto second = h.engine->submit(greedy(other, 6));
  h.run_until_idle();
  EXPECT_EQ(second->wait().token_ids, reference_generate(other, 6));
  EXPECT_EQ(h.runner->adopted_tokens(), 16);

  // The whole prompt is cached: its last block is recomputed, so that there are logits to sample from.
  const std::vector<std::int32_t> exact(prompt.begin(), prompt.begin() + 16);
  auto third = h.engine->submit(greedy(exact, 3));
  h.run_until_idle();
  EXPECT_EQ(third->wait().token_ids, reference_generate(exact, 3));
  EXPECT_EQ(h.runner->adopted_tokens(), 16 + 8);

  const EngineStats stats = h.engine->stats();
  EXPECT_EQ(stats.prefix_cache_queried_tokens, 21 + 19 + 16);
  EXPECT_EQ(stats.prefix_cache_hit_tokens, 16 + 8);
  const std::string text = h.metrics.render_prometheus();
  EXPECT_NE(text.find("atom_prefix_cache_queries_total 56\n"), std::string::npos) << text;
  EXPECT_NE(text.find("atom_prefix_cache_hits_total 24\n"), std::string::npos) << text;
  EXPECT_NE(text.find("atom_prefix_cache_misses_total 32\n"), std::string::npos) << text;
  EXPECT_NE(text.find("atom_kv_cache_blocks_cached "), std::string::npos) << text;

  // No leak: nothing held once every request ended, nothing cached once the cache is reset.
  EXPECT_EQ(stats.kv_blocks_used, 0);
  h.engine->reset_prefix_cache();
  EXPECT_FALSE(h.engine->step());
  EXPECT_EQ(h.engine->stats().kv_blocks_cached, 0);
  EXPECT_EQ(h.engine->stats().kv_blocks_used, 0);
}

TEST(EnginePrefixCache, OffReusesNothing) {
  Harness h(config(false, 4, 64, 64));
  const std::vector<std::int32_t> prompt(30, 5);
  for (int i = 0; i < 2; ++i) {
    auto s = h.engine->submit(greedy(prompt, 4));
    h.run_until_idle();
    EXPECT_EQ(s->wait().token_ids, reference_generate(prompt, 4));
  }
  EXPECT_EQ(h.runner->adopted_tokens(), 0);
  EXPECT_EQ(h.engine->stats().prefix_cache_hit_tokens, 0);
  EXPECT_EQ(h.engine->stats().kv_blocks_cached, 0);
}

// Many requests sharing system prompts, a tight pool and small budgets: chunked prefill, preemption and
// eviction all happen, and every output equals the single-request reference, as without the cache.
TEST(EnginePrefixCache, SharedPrefixesUnderEvictionAndPreemptionMatchTheReference) {
  std::mt19937 rng(3);
  std::vector<std::vector<std::int32_t>> systems(3);
  for (auto& s : systems) {
    s.resize(20 + rng() % 30);
    for (auto& t : s) t = 1 + static_cast<std::int32_t>(rng() % 62);
  }
  struct Case {
    std::vector<std::int32_t> prompt;
    int max_tokens;
  };
  std::vector<Case> cases;
  for (int i = 0; i < 40; ++i) {
    Case c;
    c.prompt = systems[rng() % systems.size()];
    for (int n = 1 + static_cast<int>(rng() % 20); n > 0; --n)
      c.prompt.push_back(1 + static_cast<std::int32_t>(rng() % 62));
    c.max_tokens = 5 + static_cast<int>(rng() % 20);
    cases.push_back(c);
  }
  for (const bool caching : {false, true}) {
    Harness h(config(caching, 6, 24, /*num_blocks=*/24));
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (std::size_t i = 0; i < cases.size(); ++i) {
      streams.push_back(h.engine->submit(greedy(cases[i].prompt, cases[i].max_tokens)));
      if (i % 4 == 3) {
        for (int s = 0; s < 6; ++s) h.engine->step();  // arrivals over time
      }
    }
    h.run_until_idle();
    for (std::size_t i = 0; i < cases.size(); ++i) {
      EXPECT_EQ(streams[i]->wait().token_ids, reference_generate(cases[i].prompt, cases[i].max_tokens))
          << "request " << i << (caching ? " with" : " without") << " prefix caching";
    }
    const EngineStats stats = h.engine->stats();
    EXPECT_GT(stats.preemptions, 0);
    EXPECT_EQ(stats.kv_blocks_used, 0);
    if (caching) {
      EXPECT_GT(stats.prefix_cache_hit_tokens, 0);
      EXPECT_GT(stats.prefix_cache_evictions, 0) << "the pool was meant to run dry";
      EXPECT_EQ(h.runner->adopted_tokens(), stats.prefix_cache_hit_tokens);
      h.engine->reset_prefix_cache();
      h.engine->step();
      EXPECT_EQ(h.engine->stats().kv_blocks_cached, 0);
    }
  }
}

}  // namespace
}  // namespace atom
