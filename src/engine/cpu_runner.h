#pragma once
// The engine's ModelRunner on the CPU backend: the CPU Llama model's multi-sequence forward over a paged
// KV cache (engine/paged_kv.h) whose blocks the engine's block manager hands out.
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "backend/cpu/llama_model.h"
#include "engine/model_runner.h"
#include "engine/paged_kv.h"
#include "engine/text_codec.h"

namespace atom {

class CpuModelRunner final : public ModelRunner {
 public:
  CpuModelRunner(std::shared_ptr<const cpu::LlamaModel> model, KvCacheDType kv_dtype);

  int vocab_size() const override { return model_->vocab_size(); }
  int max_context() const override { return model_->config().max_position_embeddings; }
  std::size_t kv_block_bytes(int block_size) const override;
  void allocate_kv_cache(const KvCacheSpec& spec) override;
  void execute(std::span<const SequenceChunk> batch, std::span<float> logits) override;
  void release(std::int64_t sequence_id) override { sequences_.erase(sequence_id); }
  std::string describe() const override;

  std::size_t kv_pool_bytes() const { return pool_ ? pool_->bytes() : 0; }

 private:
  struct SequenceState {
    std::vector<std::int32_t> block_table;  // the stores read it: kept current before every forward
    std::unique_ptr<cpu::KvCache> cache;
    std::vector<PagedKvRowStore*> stores;  // the cache's stores (K and V of every layer)
  };
  SequenceState& state(std::int64_t sequence_id);

  std::shared_ptr<const cpu::LlamaModel> model_;
  KvCacheDType kv_dtype_;
  std::unique_ptr<PagedKvPool> pool_;
  std::unordered_map<std::int64_t, std::unique_ptr<SequenceState>> sequences_;
};

// A checkpoint ready to serve on the CPU: the model, its tokenizer and a name for /v1/models.
struct CpuServingModel {
  std::string name;  // the checkpoint's file or directory name
  std::shared_ptr<const cpu::LlamaModel> model;
  std::shared_ptr<const TextCodec> codec;
  KvCacheDType kv_cache_dtype = KvCacheDType::f32;  // the checkpoint's own KV format (Atom: int4 / int8)
};

// The KV format the model's own caches use (set by the loader for Atom checkpoints).
KvCacheDType model_kv_cache_dtype(const cpu::LlamaModel& model);

// Loads a GGUF file, a Hugging Face directory or an Atom checkpoint (its integer linear layers). `progress` (optional) hears each stage as it starts with
// the fraction of the loading done so far.
using LoadProgress = std::function<void(const std::string& stage, double fraction)>;
CpuServingModel load_cpu_serving_model(const std::string& path, const LoadProgress& progress = {});

}  // namespace atom
