#include "io/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "io/gguf.h"
#include "io/gguf_store.h"
#include "io/hf_config.h"
#include "io/hf_store.h"

namespace atom {
namespace fs = std::filesystem;

namespace {

bool starts_with_gguf_magic(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char magic[4] = {};
  f.read(magic, 4);
  return f.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

}  // namespace

Checkpoint open_checkpoint(const std::string& path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (ec || !fs::exists(status)) fail("checkpoint '{}' does not exist", path);
  Checkpoint ckpt;
  ckpt.path = path;
  if (fs::is_directory(status)) {
    const fs::path dir(path);
    if (!fs::exists(dir / "config.json"))
      fail("'{}' is a directory without config.json: not a Hugging Face checkpoint", path);
    ckpt.format = CheckpointFormat::HfDirectory;
    ckpt.config = read_hf_config((dir / "config.json").string());
    ckpt.tensors = open_hf_tensor_store(path);
    if (fs::exists(dir / "tokenizer.json")) ckpt.tokenizer_json = (dir / "tokenizer.json").string();
    if (fs::exists(dir / "tokenizer_config.json"))
      ckpt.tokenizer_config_json = (dir / "tokenizer_config.json").string();
    return ckpt;
  }
  if (!starts_with_gguf_magic(path))
    fail("'{}' is neither a GGUF file (no 'GGUF' magic) nor a Hugging Face checkpoint directory", path);
  ckpt.format = CheckpointFormat::Gguf;
  auto gguf = std::make_shared<const GgufFile>(path);
  ckpt.config = model_config_from_gguf(*gguf);
  ckpt.tensors = make_gguf_tensor_store(gguf);
  ckpt.gguf = std::move(gguf);
  return ckpt;
}

}  // namespace atom
