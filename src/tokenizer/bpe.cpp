#include "tokenizer/bpe.h"

#include <algorithm>
#include <queue>
#include <span>

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace atom {

BpeModel::BpeModel(StringMap<std::int32_t> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
                   const std::string& source)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  std::int32_t max_id = -1;
  for (const auto& [token, id] : vocab_) {
    if (id < 0) fail("{}: model.vocab: token '{}' has negative id {}", source, token, id);
    max_id = std::max(max_id, id);
  }
  id_to_token_.resize(static_cast<std::size_t>(max_id + 1));
  id_present_.assign(id_to_token_.size(), false);
  for (const auto& [token, id] : vocab_) {
    id_to_token_[static_cast<std::size_t>(id)] = token;
    id_present_[static_cast<std::size_t>(id)] = true;
  }

  // As HF: the merged token is a + b without b's continuing-subword prefix; a later duplicate pair
  // overrides an earlier one.
  const std::size_t prefix_len =
      options_.continuing_subword_prefix ? options_.continuing_subword_prefix->size() : 0;
  merges_.reserve(merges.size());
  std::string merged;
  for (std::size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const auto a_id = token_to_id(a), b_id = token_to_id(b);
    if (!a_id || !b_id) {
      fail("{}: model.merges[{}] ('{}' '{}'): token '{}' is not in the vocabulary", source, rank, a, b,
           a_id ? b : a);
    }
    merged.assign(a);
    merged.append(b, std::min(prefix_len, b.size()));
    const auto new_id = token_to_id(merged);
    if (!new_id) {
      fail("{}: model.merges[{}] ('{}' '{}'): merged token '{}' is not in the vocabulary", source, rank, a, b,
           merged);
    }
    merges_[pair_key(*a_id, *b_id)] = MergeTarget{static_cast<std::uint32_t>(rank), *new_id};
  }

  // Which (last character of a left part, first character of a right part) pairs some merge joins.
  first_code_point_.assign(id_to_token_.size(), 0);
  last_code_point_.assign(id_to_token_.size(), 0);
  for (std::size_t id = 0; id < id_to_token_.size(); ++id) {
    const std::string& token = id_to_token_[id];
    if (token.empty()) continue;
    std::size_t first = 0, last = previous_code_point_start(token, token.size());
    first_code_point_[id] = next_code_point(token, first);
    last_code_point_[id] = next_code_point(token, last);
  }
  for (const auto& [key, target] : merges_) {
    mergeable_boundaries_.insert(
        boundary_key(static_cast<std::int32_t>(key >> 32), static_cast<std::int32_t>(key & 0xFFFFFFFFu)));
  }

  if (options_.unk_token) {
    unk_id_ = token_to_id(*options_.unk_token);
    if (!unk_id_) fail("{}: model.unk_token '{}' is not in the vocabulary", source, *options_.unk_token);
  }
  for (int b = 0; b < 256; ++b) {
    const auto id = token_to_id(fmt::format("<0x{:02X}>", b));
    byte_ids_[b] = id ? *id : -1;
  }
}

std::optional<std::int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= id_to_token_.size() ||
      !id_present_[static_cast<std::size_t>(id)]) {
    return nullptr;
  }
  return &id_to_token_[static_cast<std::size_t>(id)];
}

std::vector<std::pair<std::string, std::string>> BpeModel::merges() const {
  std::vector<std::pair<std::uint32_t, std::uint64_t>> by_rank;
  by_rank.reserve(merges_.size());
  for (const auto& [key, target] : merges_) by_rank.emplace_back(target.rank, key);
  std::sort(by_rank.begin(), by_rank.end());
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(by_rank.size());
  for (const auto& [rank, key] : by_rank) {
    out.emplace_back(*id_to_token(static_cast<std::int32_t>(key >> 32)),
                     *id_to_token(static_cast<std::int32_t>(key & 0xFFFFFFFFu)));
  }
  return out;
}

bool BpeModel::cached(std::string_view text, std::vector<std::int32_t>& out) const {
  std::lock_guard lock(cache_mutex_);
  const auto it = cache_.find(text);
  if (it == cache_.end()) return false;
  out.insert(out.end(), it->second.begin(), it->second.end());
  return true;
}

void BpeModel::remember(std::string_view text, std::span<const std::int32_t> ids) const {
  std::lock_guard lock(cache_mutex_);
  if (cache_.size() < kCacheCapacity)
    cache_.emplace(std::string(text), std::vector<std::int32_t>(ids.begin(), ids.end()));
}

// The ids of a word are a function of the word: cache them (also the ignore_merges lookups, which
// are slower than a hit in the small cache).
void BpeModel::tokenize(std::string_view word, std::vector<std::int32_t>& out) const {
  if (word.empty()) return;
  const bool cacheable = word.size() < kCacheMaxWordBytes;
  if (cacheable && cached(word, out)) return;
  if (options_.ignore_merges) {
    if (const auto id = token_to_id(word)) {
      out.push_back(*id);
      if (cacheable) remember(word, std::span(out).last(1));
      return;
    }
  }
  std::vector<std::int32_t> units;
  std::vector<std::uint32_t> ends;
  const std::size_t first = out.size();
  if (!initial_units(word, units, ends)) {
    merge_units(units, out);
    if (cacheable) remember(word, std::span(out).subspan(first));
    return;
  }
  // Cut the word where no merge can ever join the two sides and merge the pieces alone: the same
  // result, in linear time for long words (a whole text, for tokenizers without a pre-tokenizer), and
  // the pieces of a long text (its words) are cached.
  std::size_t chunk = 0;
  for (std::size_t i = 1; i <= units.size(); ++i) {
    if (i < units.size() && mergeable_boundaries_.contains(boundary_key(units[i - 1], units[i]))) continue;
    const std::uint32_t begin = chunk == 0 ? 0 : ends[chunk - 1];
    const std::string_view text = word.substr(begin, ends[i - 1] - begin);
    const bool whole_word = chunk == 0 && i == units.size();
    if (whole_word || !(text.size() < kCacheMaxWordBytes && cached(text, out))) {
      const std::size_t chunk_first = out.size();
      merge_units(std::span(units).subspan(chunk, i - chunk), out);
      if (text.size() < kCacheMaxWordBytes) remember(text, std::span(out).subspan(chunk_first));
    }
    chunk = i;
  }
}

void BpeModel::tokenize_whole(std::string_view word, std::vector<std::int32_t>& out) const {
  std::vector<std::int32_t> units;
  std::vector<std::uint32_t> ends;
  initial_units(word, units, ends);
  merge_units(units, out);
}

// HF models/bpe/model.rs merge_word: the initial symbols of a word.
bool BpeModel::initial_units(std::string_view word, std::vector<std::int32_t>& units,
                             std::vector<std::uint32_t>& ends) const {
  units.reserve(word.size());
  ends.reserve(word.size());
  bool plain = !options_.continuing_subword_prefix && !options_.end_of_word_suffix;
  std::int32_t pending_unk = -1;  // an unknown token not added yet (fused with the next ones)
  const auto add = [&](std::int32_t id, std::size_t end) {
    units.push_back(id);
    ends.push_back(static_cast<std::uint32_t>(end));
  };
  const std::string& prefix = options_.continuing_subword_prefix ? *options_.continuing_subword_prefix : "";
  const std::string& suffix = options_.end_of_word_suffix ? *options_.end_of_word_suffix : "";
  std::string decorated;
  for (std::size_t pos = 0; pos < word.size();) {
    const std::size_t start = pos;
    pos += utf8_length(static_cast<unsigned char>(word[pos]));
    std::string_view piece = word.substr(start, pos - start);
    const bool with_prefix = start != 0 && !prefix.empty();
    const bool with_suffix = pos == word.size() && !suffix.empty();
    if (with_prefix || with_suffix) {
      decorated.assign(with_prefix ? prefix : "");
      decorated.append(piece);
      if (with_suffix) decorated.append(suffix);
      piece = decorated;
    }
    if (const auto id = token_to_id(piece)) {
      if (pending_unk >= 0) add(pending_unk, start);
      pending_unk = -1;
      add(*id, pos);
      continue;
    }
    if (options_.byte_fallback && std::all_of(piece.begin(), piece.end(), [&](char c) {
          return byte_ids_[static_cast<unsigned char>(c)] >= 0;
        })) {
      // As HF: a pending unknown token is not flushed before byte tokens.
      for (char c : piece) add(byte_ids_[static_cast<unsigned char>(c)], pos);
      continue;
    }
    // Without an unknown token HF drops the character.
    plain = false;
    if (unk_id_) {
      if (pending_unk >= 0 && !options_.fuse_unk) add(pending_unk, start);
      pending_unk = *unk_id_;
    }
  }
  if (pending_unk >= 0) add(pending_unk, word.size());
  return plain;
}

// HF models/bpe/word.rs merge_all, step for step.
void BpeModel::merge_units(std::span<const std::int32_t> units, std::vector<std::int32_t>& out) const {
  struct Symbol {
    std::int32_t id;
    std::int32_t prev, next;
    bool removed;
  };
  std::vector<Symbol> symbols(units.size());
  for (std::size_t i = 0; i < units.size(); ++i) {
    symbols[i] = Symbol{units[i], static_cast<std::int32_t>(i) - 1,
                        i + 1 < units.size() ? static_cast<std::int32_t>(i + 1) : -1, false};
  }

  struct Merge {
    std::uint32_t rank;
    std::int32_t pos;
    std::int32_t new_id;
  };
  // Lowest rank first, then leftmost position.
  const auto later = [](const Merge& a, const Merge& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Merge, std::vector<Merge>, decltype(later)> queue(later);
  const auto find_merge = [&](std::int32_t a, std::int32_t b) -> const MergeTarget* {
    const auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeTarget* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push(Merge{m->rank, static_cast<std::int32_t>(i), m->new_id});
    }
  }
  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    Symbol& current = symbols[static_cast<std::size_t>(top.pos)];
    if (current.removed || current.next == -1) continue;
    const std::int32_t next_pos = current.next;
    const Symbol right = symbols[static_cast<std::size_t>(next_pos)];
    // An expired entry: the pair at this position changed since it was queued.
    const MergeTarget* target = find_merge(current.id, right.id);
    if (!target || target->new_id != top.new_id) continue;

    current.id = top.new_id;
    current.next = right.next;
    symbols[static_cast<std::size_t>(next_pos)].removed = true;
    if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = top.pos;

    if (current.prev >= 0) {
      if (const MergeTarget* m = find_merge(symbols[static_cast<std::size_t>(current.prev)].id, current.id)) {
        queue.push(Merge{m->rank, current.prev, m->new_id});
      }
    }
    if (current.next >= 0) {
      if (const MergeTarget* m = find_merge(current.id, symbols[static_cast<std::size_t>(current.next)].id)) {
        queue.push(Merge{m->rank, top.pos, m->new_id});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (!s.removed) out.push_back(s.id);
  }
}

}  // namespace atom
