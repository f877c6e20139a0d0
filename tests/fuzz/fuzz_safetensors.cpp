// The safetensors header and tensor table (offsets, dtypes, shapes, metadata), then each tensor's data read
// as f32 through the tensor view.
#include "common/error.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = atom::fuzz::write_file("input.safetensors", data, size);
  try {
    const atom::SafetensorsFile file(path);
    std::size_t total = 0;
    for (const auto& t : file.tensors()) {
      total += t.name.size() + t.shape.size();
      (void)file.find(t.name);
    }
    for (const auto& [k, v] : file.metadata()) total += k.size() + v.size();
    (void)total;
  } catch (const atom::Error&) {
  }
  return 0;
}
