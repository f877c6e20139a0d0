#pragma once
// Unicode canonical normalization data (generated into unicode_tables.cpp by
// scripts/dev/make_unicode_tables.py). Every table is sorted by its first field.
#include <cstddef>
#include <cstdint>

namespace atom::unicode_tables {

struct CodepointRange {
  char32_t first, last;
  std::uint8_t value;
};
struct Decomposition {
  char32_t code_point;
  std::uint16_t offset, length;  // into kDecompositionPool: the full canonical decomposition
};
struct Composition {
  char32_t first, second, composite;  // sorted by (first, second)
};

extern const CodepointRange kCombiningClass[];  // value: canonical combining class (non-zero only)
extern const std::size_t kCombiningClassCount;
// Code points NFC (resp. NFD) may touch: a string without any is already normalized.
extern const CodepointRange kNfcMaybeChanges[];
extern const std::size_t kNfcMaybeChangesCount;
extern const CodepointRange kNfdMaybeChanges[];
extern const std::size_t kNfdMaybeChangesCount;
extern const Decomposition kDecompositions[];  // Hangul syllables excluded (algorithmic)
extern const std::size_t kDecompositionCount;
extern const char32_t kDecompositionPool[];
extern const Composition kCompositions[];  // primary composites, Hangul excluded
extern const std::size_t kCompositionCount;

}  // namespace atom::unicode_tables
