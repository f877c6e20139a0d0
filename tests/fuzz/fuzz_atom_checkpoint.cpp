// The Atom checkpoint loader: config.json (with quantization_config) and model.safetensors (packed weights,
// scales, permutations, outliers) of a checkpoint directory, loaded into the CPU model. The input is the two
// files separated by the line "\n--ATOM-SAFETENSORS--\n".
#include <filesystem>
#include <string_view>

#include "backend/cpu/atom_model_loader.h"
#include "common/error.h"
#include "fuzz_util.h"
#include "io/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  constexpr std::string_view kSeparator = "\n--ATOM-SAFETENSORS--\n";
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::size_t at = input.find(kSeparator);
  if (at == std::string_view::npos) return 0;
  const std::string dir = atom::fuzz::scratch_dir() + "/ckpt";
  std::filesystem::create_directories(dir);
  atom::fuzz::write_file("ckpt/config.json", data, at);
  atom::fuzz::write_file("ckpt/model.safetensors", data + at + kSeparator.size(),
                         size - at - kSeparator.size());
  try {
    const atom::Checkpoint ckpt = atom::open_checkpoint(dir);
    (void)atom::cpu::load_cpu_model(ckpt);
  } catch (const atom::Error&) {
  }
  return 0;
}
