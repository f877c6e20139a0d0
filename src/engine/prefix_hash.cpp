#include "engine/prefix_hash.h"

#include <algorithm>

namespace atom {
namespace {

std::uint64_t mix(std::uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

}  // namespace

BlockHash hash_block(BlockHash parent, std::span<const std::int32_t> block_tokens) {
  std::uint64_t h = mix(parent ^ (0x9e3779b97f4a7c15ull * (block_tokens.size() + 1)));
  for (std::int32_t token : block_tokens)
    h = mix(h ^ (static_cast<std::uint64_t>(static_cast<std::uint32_t>(token)) + 0x9e3779b97f4a7c15ull));
  return h;
}

void extend_block_hashes(std::vector<BlockHash>& hashes, std::span<const std::int32_t> tokens, int block_size,
                         int blocks) {
  blocks = std::min(blocks, static_cast<int>(tokens.size()) / block_size);
  for (int i = static_cast<int>(hashes.size()); i < blocks; ++i) {
    const BlockHash parent = i == 0 ? kRootBlockHash : hashes[static_cast<std::size_t>(i) - 1];
    hashes.push_back(
        hash_block(parent, tokens.subspan(static_cast<std::size_t>(i) * block_size, block_size)));
  }
}

}  // namespace atom
