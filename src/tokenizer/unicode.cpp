#include "tokenizer/unicode.h"

#include <algorithm>
#include <vector>

#include "tokenizer/unicode_tables.h"

namespace atom {
namespace {

namespace ut = unicode_tables;

constexpr char32_t kHangulSBase = 0xAC00, kHangulLBase = 0x1100, kHangulVBase = 0x1161, kHangulTBase = 0x11A7;
constexpr char32_t kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr char32_t kHangulNCount = kHangulVCount * kHangulTCount,
                   kHangulSCount = kHangulLCount * kHangulNCount;

const ut::CodepointRange* find_range(const ut::CodepointRange* table, std::size_t count, char32_t cp) {
  const auto* end = table + count;
  const auto* it =
      std::upper_bound(table, end, cp, [](char32_t c, const ut::CodepointRange& r) { return c < r.first; });
  if (it == table) return nullptr;
  --it;
  return cp <= it->last ? it : nullptr;
}

std::uint8_t combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  const auto* r = find_range(ut::kCombiningClass, ut::kCombiningClassCount, cp);
  return r ? r->value : 0;
}

void decompose(char32_t cp, std::vector<char32_t>& out) {
  if (cp >= kHangulSBase && cp < kHangulSBase + kHangulSCount) {
    const char32_t index = cp - kHangulSBase;
    out.push_back(kHangulLBase + index / kHangulNCount);
    out.push_back(kHangulVBase + (index % kHangulNCount) / kHangulTCount);
    if (index % kHangulTCount != 0) out.push_back(kHangulTBase + index % kHangulTCount);
    return;
  }
  const auto* end = ut::kDecompositions + ut::kDecompositionCount;
  const auto* it = std::lower_bound(ut::kDecompositions, end, cp,
                                    [](const ut::Decomposition& d, char32_t c) { return d.code_point < c; });
  if (it != end && it->code_point == cp) {
    out.insert(out.end(), ut::kDecompositionPool + it->offset,
               ut::kDecompositionPool + it->offset + it->length);
  } else {
    out.push_back(cp);
  }
}

std::optional<char32_t> compose_pair(char32_t first, char32_t second) {
  if (first >= kHangulLBase && first < kHangulLBase + kHangulLCount && second >= kHangulVBase &&
      second < kHangulVBase + kHangulVCount) {
    return kHangulSBase + ((first - kHangulLBase) * kHangulVCount + (second - kHangulVBase)) * kHangulTCount;
  }
  if (first >= kHangulSBase && first < kHangulSBase + kHangulSCount &&
      (first - kHangulSBase) % kHangulTCount == 0 && second > kHangulTBase &&
      second < kHangulTBase + kHangulTCount) {
    return first + (second - kHangulTBase);
  }
  const auto* end = ut::kCompositions + ut::kCompositionCount;
  const auto* it =
      std::lower_bound(ut::kCompositions, end, std::pair{first, second},
                       [](const ut::Composition& c, const std::pair<char32_t, char32_t>& key) {
                         return c.first < key.first || (c.first == key.first && c.second < key.second);
                       });
  if (it != end && it->first == first && it->second == second) return it->composite;
  return std::nullopt;
}

// Full canonical decomposition followed by the canonical ordering of combining marks.
std::vector<char32_t> canonical_decomposition(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  for (std::size_t pos = 0; pos < s.size();) decompose(next_code_point(s, pos), out);
  // Stable sort each run of non-starters by combining class (insertion sort: runs are short).
  for (std::size_t i = 1; i < out.size(); ++i) {
    const std::uint8_t cc = combining_class(out[i]);
    if (cc == 0) continue;
    std::size_t j = i;
    while (j > 0) {
      const std::uint8_t prev = combining_class(out[j - 1]);
      if (prev == 0 || prev <= cc) break;
      std::swap(out[j - 1], out[j]);
      --j;
    }
  }
  return out;
}

// Whether any code point of `s` is in `table` (the quick check: ASCII never is).
bool may_change(std::string_view s, const ut::CodepointRange* table, std::size_t count) {
  for (std::size_t pos = 0; pos < s.size();) {
    if (static_cast<unsigned char>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    if (find_range(table, count, next_code_point(s, pos))) return true;
  }
  return false;
}

}  // namespace

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

namespace {

// Length of the well-formed sequence at `pos`, or the negated length of its maximal ill-formed
// subpart (at least 1 byte), following the Unicode table of well-formed byte sequences.
long checked_sequence(std::string_view s, std::size_t pos) {
  const auto at = [&](std::size_t i) -> int {
    return pos + i < s.size() ? static_cast<unsigned char>(s[pos + i]) : -1;
  };
  const int lead = at(0);
  if (lead < 0x80) return 1;
  int need;
  int lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 2;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 3;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int i = 1; i <= need; ++i) {
    const int b = at(i);
    const bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return -i;
  }
  return need + 1;
}

}  // namespace

std::optional<std::size_t> find_invalid_utf8(std::string_view s) {
  for (std::size_t pos = 0; pos < s.size();) {
    if (static_cast<unsigned char>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const long n = checked_sequence(s, pos);
    if (n < 0) return pos;
    pos += static_cast<std::size_t>(n);
  }
  return std::nullopt;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t pos = 0; pos < bytes.size();) {
    const long n = checked_sequence(bytes, pos);
    if (n > 0) {
      out.append(bytes.substr(pos, static_cast<std::size_t>(n)));
      pos += static_cast<std::size_t>(n);
    } else {
      out.append("\xEF\xBF\xBD");
      pos += static_cast<std::size_t>(-n);
    }
  }
  return out;
}

std::string to_nfd(std::string_view s) {
  if (!may_change(s, ut::kNfdMaybeChanges, ut::kNfdMaybeChangesCount)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  for (char32_t cp : canonical_decomposition(s)) append_utf8(out, cp);
  return out;
}

std::string to_nfc(std::string_view s) {
  if (!may_change(s, ut::kNfcMaybeChanges, ut::kNfcMaybeChangesCount)) return std::string(s);
  const std::vector<char32_t> decomposed = canonical_decomposition(s);
  std::vector<char32_t> composed;
  composed.reserve(decomposed.size());
  std::size_t starter = SIZE_MAX;  // index in `composed` of the last starter
  std::uint8_t last_class = 0;     // class of the last code point appended after that starter
  for (char32_t cp : decomposed) {
    const std::uint8_t cc = combining_class(cp);
    if (starter != SIZE_MAX) {
      const bool adjacent = composed.size() == starter + 1;
      // Not blocked: nothing in between, or everything in between has a lower (non-zero) class.
      if (adjacent || (last_class != 0 && last_class < cc)) {
        if (auto composite = compose_pair(composed[starter], cp)) {
          composed[starter] = *composite;
          continue;
        }
      }
    }
    if (cc == 0) starter = composed.size();
    last_class = cc;
    composed.push_back(cp);
  }
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : composed) append_utf8(out, cp);
  return out;
}

bool is_unicode_whitespace(char32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool is_python_whitespace(char32_t cp) { return is_unicode_whitespace(cp) || (cp >= 0x1C && cp <= 0x1F); }

}  // namespace atom
