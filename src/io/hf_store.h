#pragma once
// A Hugging Face checkpoint directory as a TensorStore: model.safetensors, or the shards listed by
// model.safetensors.index.json. Every file is memory-mapped; nothing is copied until load_f32.
#include <memory>
#include <string>

#include "io/tensor_store.h"

namespace atom {

// Opens `dir`/model.safetensors when present (as transformers prefers it), else the sharded checkpoint of
// `dir`/model.safetensors.index.json. Throws atom::Error naming the directory when neither exists, and
// naming the index, shard and tensor for missing shards, tensors listed but absent, tensors a shard holds
// but the index does not place there, and tensors present in two shards.
std::unique_ptr<TensorStore> open_hf_tensor_store(const std::string& dir);

}  // namespace atom
