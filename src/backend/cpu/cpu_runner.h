#pragma once
// The ModelRunner (model/model_runner.h) of the CPU backend: the CPU Llama model's multi-sequence forward
// over a paged KV cache (backend/cpu/paged_kv.h) whose blocks the engine's block manager hands out.
#include <memory>
#include <string>
#include <unordered_map>

#include "backend/cpu/llama_model.h"
#include "backend/cpu/paged_kv.h"
#include "model/model_runner.h"

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

// The KV format the model's own caches use (set by the loader for Atom checkpoints).
KvCacheDType model_kv_cache_dtype(const cpu::LlamaModel& model);

}  // namespace atom
