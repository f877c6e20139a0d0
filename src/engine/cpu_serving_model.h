#pragma once
// A checkpoint ready to serve on the CPU: the CPU backend's model and runner (backend/cpu/cpu_runner.h)
// with the checkpoint's tokenizer as the engine's TextCodec.
#include <functional>
#include <memory>
#include <string>

#include "backend/cpu/cpu_runner.h"
#include "engine/text_codec.h"

namespace atom {

// A checkpoint ready to serve on the CPU: the model, its tokenizer and a name for /v1/models.
struct CpuServingModel {
  std::string name;  // the checkpoint's file or directory name
  std::shared_ptr<const cpu::LlamaModel> model;
  std::shared_ptr<const TextCodec> codec;
  KvCacheDType kv_cache_dtype = KvCacheDType::f32;  // the checkpoint's own KV format (Atom: int4 / int8)
};

// Loads a GGUF file, a Hugging Face directory or an Atom checkpoint (its integer linear layers). `progress`
// (optional) hears each stage as it starts with the fraction of the loading done so far.
using LoadProgress = std::function<void(const std::string& stage, double fraction)>;
CpuServingModel load_cpu_serving_model(const std::string& path, const LoadProgress& progress = {});

}  // namespace atom
