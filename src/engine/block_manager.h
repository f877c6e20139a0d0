#pragma once
// Hands out the fixed-size blocks of the paged KV cache. A sequence owns a block table (the physical block
// of each run of `block_size` consecutive positions); blocks go back to the pool when the sequence finishes,
// is cancelled or is preempted.
//
// Automatic prefix caching (when on): a full block whose K/V are computed is registered under the hash of
// (its parent block's hash, its token ids), so the hash names the whole prefix up to the block's end and
// with it every position (engine/prefix_hash.h). Blocks are reference-counted: a block in the cache can be
// in the tables of several sequences at once (read only: sequences only write past their cached prefix).
// When no sequence holds a cached block any more it stays in the cache, evictable, and is evicted least
// recently used first when grow() needs a block and no never-cached block is free. A new sequence whose
// tokens start with cached full blocks takes them (match()) and prefills only the rest.
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "engine/prefix_hash.h"

namespace atom {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size, bool prefix_caching = false);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  // Blocks grow() can hand out: free ones and cached ones no sequence holds (evicted on demand).
  int num_free() const { return static_cast<int>(free_.size() + evictable_.size()); }
  // Blocks held by at least one sequence.
  int num_used() const { return num_blocks_ - num_free(); }
  // Blocks in the prefix cache (held by sequences or not), and those of them no sequence holds.
  int num_cached() const { return num_cached_; }
  int num_evictable() const { return static_cast<int>(evictable_.size()); }
  std::int64_t evictions() const { return evictions_; }

  // Blocks needed to hold `tokens` positions.
  int blocks_for(std::int64_t tokens) const {
    return static_cast<int>((tokens + block_size_ - 1) / block_size_);
  }
  // Extra blocks a table of `table_size` blocks needs to hold `tokens` positions.
  int blocks_missing(int table_size, std::int64_t tokens) const;

  // Grows `table` so that it holds `tokens` positions. Returns false (table unchanged) when the pool has
  // too few free blocks.
  bool grow(std::vector<std::int32_t>& table, std::int64_t tokens);
  // Drops the table's hold on each of its blocks and clears it. Blocks no sequence holds any more go back
  // to the pool; cached ones stay cached (evictable), the table's last block first in line for eviction.
  void release(std::vector<std::int32_t>& table);

  // Prefix caching. `hashes[i]` is the chain hash of full block i of `tokens` (prefix_hash.h). Appends to
  // the (empty) `table` the cached blocks of the longest run of leading blocks found, holding each, and
  // returns how many. Always 0 when prefix caching is off.
  int match(std::span<const BlockHash> hashes, std::span<const std::int32_t> tokens,
            std::vector<std::int32_t>& table);
  // Registers `block` (held, full, its K/V computed) as full block `index` of `tokens`, with chain hash
  // `hash`. Ignored when prefix caching is off, or when the cache already has a block for this hash (a
  // duplicate computed at the same time: it is freed as an ordinary block).
  void offer(std::int32_t block, BlockHash hash, std::span<const std::int32_t> tokens, int index,
             BlockHash parent);
  // Evicts every cached block no sequence holds (they become free). Held ones stay cached.
  void clear_cache();

 private:
  struct CacheEntry {
    bool cached = false;
    BlockHash hash = 0;
    BlockHash parent = 0;
    std::vector<std::int32_t> tokens;       // the block's token ids: a hash collision cannot mix up prefixes
    std::list<std::int32_t>::iterator lru;  // in evictable_ while no sequence holds the block
  };
  std::int32_t take_block();  // a free block, or the least recently used evictable one (evicted)
  void evict(std::int32_t block);

  int num_blocks_;
  int block_size_;
  bool prefix_caching_;
  std::vector<std::int32_t> free_;     // stack: the most recently freed block is reused first
  std::vector<std::int32_t> refs_;     // sequences holding each block (guards against double frees)
  std::list<std::int32_t> evictable_;  // cached, held by none; front: least recently used
  std::vector<CacheEntry> entries_;  // per block (prefix caching only); storage reused as blocks come and go
  int num_cached_ = 0;
  std::unordered_map<BlockHash, std::int32_t> by_hash_;  // hash -> block
  std::int64_t evictions_ = 0;
};

}  // namespace atom
