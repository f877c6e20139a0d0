// config.json -> ModelConfig (every field's type and range, validation).
#include "common/error.h"
#include "fuzz_util.h"
#include "io/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = atom::fuzz::write_file("config.json", data, size);
  try {
    (void)atom::read_hf_config(path);
  } catch (const atom::Error&) {
  }
  return 0;
}
