#pragma once
// Opens any checkpoint Atom reads - a GGUF file or a Hugging Face directory - as one thing:
// its architecture, its tensors under Hugging Face names, and where its tokenizer lives.
#include <memory>
#include <string>

#include "io/model_config.h"
#include "io/tensor_store.h"

namespace atom {

class GgufFile;

enum class CheckpointFormat { Gguf, HfDirectory };

struct Checkpoint {
  std::string path;
  CheckpointFormat format = CheckpointFormat::HfDirectory;
  ModelConfig config;
  std::unique_ptr<TensorStore> tensors;
  std::shared_ptr<const GgufFile> gguf;  // set for GGUF checkpoints (tokenizer and metadata live there)
  std::string tokenizer_json;            // HF directories: path of tokenizer.json ("" if absent)
  std::string tokenizer_config_json;     // HF directories: path of tokenizer_config.json ("" if absent)
};

// Throws atom::Error naming the path when it is neither a GGUF file nor a directory with config.json.
Checkpoint open_checkpoint(const std::string& path);

}  // namespace atom
