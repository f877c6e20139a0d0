// The GGUF reader end to end: header, metadata, tensor table, the model config, the tokenizer built from the
// metadata (and a round of encode/decode), and every tensor's data converted to f32.
#include "common/error.h"
#include "fuzz_util.h"
#include "io/checkpoint.h"
#include "io/tensor_store.h"
#include "tokenizer/checkpoint_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = atom::fuzz::write_file("input.gguf", data, size);
  try {
    const atom::Checkpoint ckpt = atom::open_checkpoint(path);
    try {
      const atom::Tokenizer tokenizer = atom::load_tokenizer(ckpt);
      const auto ids = tokenizer.encode("Hello, world! 123 \xC3\xA9", true);
      (void)tokenizer.decode(ids, false);
    } catch (const atom::Error&) {
    }
    for (const std::string& name : ckpt.tensors->names()) {
      try {
        const auto& view = ckpt.tensors->get(name);
        std::int64_t numel = 1;
        for (auto d : view.shape) numel = d > 0 && numel < (std::int64_t{1} << 26) ? numel * d : numel;
        if (numel <= (std::int64_t{1} << 24)) (void)ckpt.tensors->load_f32(name);
      } catch (const atom::Error&) {
      }
    }
  } catch (const atom::Error&) {
  }
  return 0;
}
