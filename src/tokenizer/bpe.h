#pragma once
// The BPE model of HF `tokenizers` (models/bpe): merges applied by rank with a priority queue,
// continuing-subword prefix / end-of-word suffix, byte fallback (<0xXX>), unknown-token fusing,
// ignore_merges, and a cache of frequent words.
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace atom {

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::optional<std::string> continuing_subword_prefix;
  std::optional<std::string> end_of_word_suffix;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class BpeModel {
 public:
  // `vocab` maps token -> id; `merges` are in rank order. Throws atom::Error naming `source` for a
  // merge whose parts or result are not in the vocabulary, or an unknown token missing from it.
  BpeModel(StringMap<std::int32_t> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
           BpeOptions options, const std::string& source);

  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<std::int32_t>& out) const;
  // The same by the plain algorithm: the whole word in one merge queue, no cache, no cutting of long
  // words (the reference that tests hold the fast paths of tokenize() to).
  void tokenize_whole(std::string_view word, std::vector<std::int32_t>& out) const;

  std::optional<std::int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(std::int32_t id) const;  // nullptr for an id not in the vocabulary
  std::size_t vocab_count() const { return vocab_.size(); }
  std::int32_t max_id() const { return static_cast<std::int32_t>(id_to_token_.size()) - 1; }
  const BpeOptions& options() const { return options_; }
  // The merges by rank, as token pairs (for export).
  std::vector<std::pair<std::string, std::string>> merges() const;

 private:
  struct MergeTarget {
    std::uint32_t rank;
    std::int32_t new_id;
  };
  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
    return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
  }
  // The initial symbols of `word` (one token per character, byte tokens, unknown tokens) and the byte
  // offset where each ends. True when each stretch of them is what the same stretch of text alone
  // gives (no unknown tokens, no prefix/suffix), so that the word may be merged piece by piece.
  bool initial_units(std::string_view word, std::vector<std::int32_t>& units,
                     std::vector<std::uint32_t>& ends) const;
  void merge_units(std::span<const std::int32_t> units, std::vector<std::int32_t>& out) const;
  bool cached(std::string_view text, std::vector<std::int32_t>& out) const;
  void remember(std::string_view text, std::span<const std::int32_t> ids) const;
  std::uint64_t boundary_key(std::int32_t left, std::int32_t right) const {
    return (std::uint64_t(last_code_point_[static_cast<std::size_t>(left)]) << 32) |
           first_code_point_[static_cast<std::size_t>(right)];
  }

  StringMap<std::int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> id_present_;
  std::unordered_map<std::uint64_t, MergeTarget> merges_;
  BpeOptions options_;
  std::optional<std::int32_t> unk_id_;
  std::int32_t byte_ids_[256];  // id of "<0xXX>", or -1
  // Two adjacent symbols can only ever merge if some merge joins a left part ending with the left
  // one's last character to a right part starting with the right one's first character.
  std::vector<char32_t> first_code_point_, last_code_point_;  // per id
  std::unordered_set<std::uint64_t> mergeable_boundaries_;

  // Word -> ids, for words shorter than kCacheMaxWordBytes, up to kCacheCapacity entries (HF's limits).
  static constexpr std::size_t kCacheCapacity = 10000;
  static constexpr std::size_t kCacheMaxWordBytes = 256;
  mutable std::mutex cache_mutex_;
  mutable StringMap<std::vector<std::int32_t>> cache_;
};

}  // namespace atom
