#include "engine/block_manager.h"

#include <algorithm>

#include "common/error.h"

namespace atom {

BlockManager::BlockManager(int num_blocks, int block_size)
    : num_blocks_(num_blocks), block_size_(block_size) {
  if (num_blocks < 1) fail("KV cache: number of blocks must be at least 1, got {}", num_blocks);
  if (block_size < 1) fail("KV cache: block size must be at least 1, got {}", block_size);
  free_.resize(num_blocks);
  // Block 0 on top of the stack, so a fresh pool hands out 0, 1, 2, ...
  for (int i = 0; i < num_blocks; ++i) free_[i] = num_blocks - 1 - i;
  in_use_.assign(num_blocks, 0);
}

int BlockManager::blocks_missing(int table_size, std::int64_t tokens) const {
  return std::max(0, blocks_for(tokens) - table_size);
}

bool BlockManager::grow(std::vector<std::int32_t>& table, std::int64_t tokens) {
  const int missing = blocks_missing(static_cast<int>(table.size()), tokens);
  if (missing > num_free()) return false;
  for (int i = 0; i < missing; ++i) {
    const std::int32_t block = free_.back();
    free_.pop_back();
    ATOM_CHECK(!in_use_[block]);
    in_use_[block] = 1;
    table.push_back(block);
  }
  return true;
}

void BlockManager::release(std::vector<std::int32_t>& table) {
  for (std::int32_t block : table) {
    ATOM_CHECK(block >= 0 && block < num_blocks_ && in_use_[block]);
    in_use_[block] = 0;
    free_.push_back(block);
  }
  table.clear();
}

}  // namespace atom
