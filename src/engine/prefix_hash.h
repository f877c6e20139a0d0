#pragma once
// Chain hashes of full KV blocks for automatic prefix caching: block i of a token sequence is named by
// hash(hash of block i-1, token ids of block i), block 0's parent being a fixed root value. Two sequences
// whose block i hashes agree share tokens [0, (i+1) * block_size), so the block's K/V (which depend only
// on those tokens and their positions) are the same for both. 64-bit, for lookup within one process; the
// block manager also compares the token ids, so a collision cannot hand out a wrong block.
#include <cstdint>
#include <span>
#include <vector>

namespace atom {

using BlockHash = std::uint64_t;
inline constexpr BlockHash kRootBlockHash = 0x243f6a8885a308d3ull;

BlockHash hash_block(BlockHash parent, std::span<const std::int32_t> block_tokens);

// Extends `hashes` (the chain hashes of the leading full blocks of `tokens`) to the first `blocks` full
// blocks (no more than `tokens` holds).
void extend_block_hashes(std::vector<BlockHash>& hashes, std::span<const std::int32_t> tokens, int block_size,
                         int blocks);

}  // namespace atom
