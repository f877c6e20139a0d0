// tokenizer.json loading (normalizers, pre-tokenizers, BPE model, added tokens, post-processors, decoders),
// then encode/decode of a fixed text through whatever loaded.
#include "common/error.h"
#include "io/json_file.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto json =
        atom::parse_json(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
    const atom::Tokenizer tokenizer = atom::Tokenizer::from_hf_json(json, {}, "fuzz.json");
    for (const char* text : {"Hello world", " a  b\n\tc", "\xE4\xBD\xA0\xE5\xA5\xBD 42!"}) {
      const auto ids = tokenizer.encode(text, true);
      (void)tokenizer.decode(ids, false);
      (void)tokenizer.decode(ids, true);
    }
  } catch (const atom::Error&) {
  }
  return 0;
}
