// Encode and decode of arbitrary bytes with a real tokenizer ($ATOM_FUZZ_TOKENIZER: a tokenizer.json,
// optionally gzip-compressed; scripts/fuzz.sh makes one from the demo model). Invalid UTF-8 must be an
// atom::Error; decoding arbitrary ids (in and out of the vocabulary) must not crash.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "common/error.h"
#include "tokenizer/tokenizer.h"

namespace {
const atom::Tokenizer& tokenizer() {
  static const std::unique_ptr<atom::Tokenizer> t = [] {
    const char* path = std::getenv("ATOM_FUZZ_TOKENIZER");
    if (!path) {
      std::fprintf(stderr, "fuzz_tokenizer_encode: set ATOM_FUZZ_TOKENIZER to a tokenizer.json\n");
      std::abort();
    }
    return std::make_unique<atom::Tokenizer>(atom::Tokenizer::from_hf_files(path));
  }();
  return *t;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const atom::Tokenizer& tok = tokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto ids = tok.encode(text, size % 2 == 0);
    const std::string back = tok.decode(ids, false);
    if (back.find(text) == std::string::npos && size < 64) {
      // Byte-level BPE round-trips valid UTF-8 (special-token text aside): not asserted, normalizers differ.
    }
  } catch (const atom::Error&) {
  }
  // The same bytes as token ids (4 bytes each, any value).
  std::vector<std::int32_t> ids(size / 4);
  if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
  try {
    (void)tok.decode(ids, false);
    (void)tok.decode(ids, true);
  } catch (const atom::Error&) {
  }
  return 0;
}
