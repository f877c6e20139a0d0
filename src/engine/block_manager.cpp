#include "engine/block_manager.h"

#include <algorithm>

#include "common/error.h"

namespace atom {

BlockManager::BlockManager(int num_blocks, int block_size, bool prefix_caching)
    : num_blocks_(num_blocks), block_size_(block_size), prefix_caching_(prefix_caching) {
  if (num_blocks < 1) fail("KV cache: number of blocks must be at least 1, got {}", num_blocks);
  if (block_size < 1) fail("KV cache: block size must be at least 1, got {}", block_size);
  free_.resize(num_blocks);
  // Block 0 on top of the stack, so a fresh pool hands out 0, 1, 2, ...
  for (int i = 0; i < num_blocks; ++i) free_[i] = num_blocks - 1 - i;
  refs_.assign(num_blocks, 0);
  if (prefix_caching_) {
    entries_.resize(num_blocks);
    by_hash_.reserve(num_blocks);
  }
}

int BlockManager::blocks_missing(int table_size, std::int64_t tokens) const {
  return std::max(0, blocks_for(tokens) - table_size);
}

void BlockManager::evict(std::int32_t block) {
  CacheEntry& entry = entries_[block];
  ATOM_CHECK(entry.cached);
  evictable_.erase(entry.lru);
  by_hash_.erase(entry.hash);
  entry.cached = false;
  --num_cached_;
  ++evictions_;
}

std::int32_t BlockManager::take_block() {
  std::int32_t block;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else {
    ATOM_CHECK(!evictable_.empty());
    block = evictable_.front();
    evict(block);
  }
  ATOM_CHECK(refs_[block] == 0);
  refs_[block] = 1;
  return block;
}

bool BlockManager::grow(std::vector<std::int32_t>& table, std::int64_t tokens) {
  const int missing = blocks_missing(static_cast<int>(table.size()), tokens);
  if (missing > num_free()) return false;
  for (int i = 0; i < missing; ++i) table.push_back(take_block());
  return true;
}

void BlockManager::release(std::vector<std::int32_t>& table) {
  // Last block first: of a released prefix, the tail is evicted before the head (which more sequences share).
  for (auto b = table.rbegin(); b != table.rend(); ++b) {
    const std::int32_t block = *b;
    ATOM_CHECK(block >= 0 && block < num_blocks_ && refs_[block] > 0);
    if (--refs_[block] > 0) continue;
    if (prefix_caching_ && entries_[block].cached) {
      entries_[block].lru = evictable_.insert(evictable_.end(), block);
    } else {
      free_.push_back(block);
    }
  }
  table.clear();
}

int BlockManager::match(std::span<const BlockHash> hashes, std::span<const std::int32_t> tokens,
                        std::vector<std::int32_t>& table) {
  ATOM_CHECK(table.empty());
  if (!prefix_caching_) return 0;
  for (std::size_t i = 0; i < hashes.size(); ++i) {
    const auto found = by_hash_.find(hashes[i]);
    if (found == by_hash_.end()) break;
    const std::int32_t block = found->second;
    CacheEntry& entry = entries_[block];
    ATOM_CHECK(entry.cached);
    const BlockHash parent = i == 0 ? kRootBlockHash : hashes[i - 1];
    const auto block_tokens = tokens.subspan(i * static_cast<std::size_t>(block_size_), block_size_);
    if (entry.parent != parent ||
        !std::equal(block_tokens.begin(), block_tokens.end(), entry.tokens.begin())) {
      break;  // a hash collision: not this prefix
    }
    if (refs_[block]++ == 0) evictable_.erase(entry.lru);
    table.push_back(block);
  }
  return static_cast<int>(table.size());
}

void BlockManager::offer(std::int32_t block, BlockHash hash, std::span<const std::int32_t> tokens, int index,
                         BlockHash parent) {
  if (!prefix_caching_) return;
  ATOM_CHECK(block >= 0 && block < num_blocks_ && refs_[block] > 0);
  CacheEntry& entry = entries_[block];
  if (entry.cached || !by_hash_.emplace(hash, block).second) return;
  entry.cached = true;
  entry.hash = hash;
  entry.parent = parent;
  const auto block_tokens = tokens.subspan(static_cast<std::size_t>(index) * block_size_, block_size_);
  entry.tokens.assign(block_tokens.begin(), block_tokens.end());
  ++num_cached_;
}

void BlockManager::clear_cache() {
  while (!evictable_.empty()) {
    const std::int32_t block = evictable_.front();
    evict(block);
    --evictions_;  // dropped on request, not under memory pressure
    free_.push_back(block);
  }
}

}  // namespace atom
