#pragma once
// Hands out the fixed-size blocks of the paged KV cache. A sequence owns a block table (the physical block
// of each run of `block_size` consecutive positions); blocks go back to the pool when the sequence finishes,
// is cancelled or is preempted.
#include <cstdint>
#include <vector>

namespace atom {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_used() const { return num_blocks_ - num_free(); }

  // Blocks needed to hold `tokens` positions.
  int blocks_for(std::int64_t tokens) const {
    return static_cast<int>((tokens + block_size_ - 1) / block_size_);
  }
  // Extra blocks a table of `table_size` blocks needs to hold `tokens` positions.
  int blocks_missing(int table_size, std::int64_t tokens) const;

  // Grows `table` so that it holds `tokens` positions. Returns false (table unchanged) when the pool has
  // too few free blocks.
  bool grow(std::vector<std::int32_t>& table, std::int64_t tokens);
  // Returns all blocks of `table` to the pool and clears it.
  void release(std::vector<std::int32_t>& table);

 private:
  int num_blocks_;
  int block_size_;
  std::vector<std::int32_t> free_;  // stack: the most recently freed block is reused first
  std::vector<std::uint8_t> in_use_;  // guards against double frees (a bug, not an input error)
};

}  // namespace atom
