#include "engine/cpu_serving_model.h"

#include <filesystem>

#include "backend/cpu/atom_model_loader.h"
#include "engine/tokenizer_codec.h"
#include "io/checkpoint.h"
#include "tokenizer/checkpoint_tokenizer.h"

namespace atom {

CpuServingModel load_cpu_serving_model(const std::string& path, const LoadProgress& progress) {
  auto report = [&](const std::string& stage, double fraction) {
    if (progress) progress(stage, fraction);
  };
  report("opening checkpoint", 0.0);
  const Checkpoint checkpoint = open_checkpoint(path);
  report("loading tokenizer", 0.02);
  Tokenizer tokenizer = load_tokenizer(checkpoint);
  report("loading weights", 0.05);
  std::shared_ptr<const cpu::LlamaModel> model = cpu::load_cpu_model(checkpoint);
  CpuServingModel serving;
  std::filesystem::path p(path);
  serving.name = (p.has_filename() ? p.filename() : p.parent_path().filename()).string();
  serving.model = std::move(model);
  serving.codec = std::make_shared<TokenizerCodec>(std::move(tokenizer));
  serving.kv_cache_dtype = model_kv_cache_dtype(*serving.model);
  report("ready", 1.0);
  return serving;
}

}  // namespace atom
