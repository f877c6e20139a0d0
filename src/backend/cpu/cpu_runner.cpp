#include "backend/cpu/cpu_runner.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "backend/cpu/atom_model_loader.h"
#include "backend/cpu/kernels.h"
#include "common/error.h"

namespace atom {

CpuModelRunner::CpuModelRunner(std::shared_ptr<const cpu::LlamaModel> model, KvCacheDType kv_dtype)
    : model_(std::move(model)), kv_dtype_(kv_dtype) {
  ATOM_CHECK(model_ != nullptr);
  // Serving batches requests together and cuts prompts into chunks by what else runs: a request's tokens
  // must not depend on that (greedy output of a request alone == the same request in any batch).
  // ATOM_CPU_BATCH_INVARIANT=0 trades that for the faster BLAS paths (for measurements).
  const char* invariant = std::getenv("ATOM_CPU_BATCH_INVARIANT");
  cpu::set_batch_invariant(!(invariant && std::string(invariant) == "0"));
}

namespace {
// The model's KV group applies to the integer caches; an fp cache asked for instead has none.
std::int64_t pool_group_size(const cpu::LlamaModel& model, KvCacheDType dtype) {
  return dtype == KvCacheDType::int8 || dtype == KvCacheDType::int4 ? model.kv_group_size() : 0;
}
}  // namespace

std::size_t CpuModelRunner::kv_block_bytes(int block_size) const {
  const cpu::KvCacheShape shape = model_->cache_shape();
  return PagedKvPool::row_bytes(kv_dtype_, shape.row_width(), shape.head_dim, pool_group_size(*model_, kv_dtype_)) *
         block_size * 2 * shape.num_layers;
}

void CpuModelRunner::allocate_kv_cache(const KvCacheSpec& spec) {
  const cpu::KvCacheShape shape = model_->cache_shape();
  sequences_.clear();
  pool_ = std::make_unique<PagedKvPool>(kv_dtype_, 2 * shape.num_layers, spec.num_blocks, spec.block_size,
                                        shape.row_width(), shape.head_dim, pool_group_size(*model_, kv_dtype_));
}

CpuModelRunner::SequenceState& CpuModelRunner::state(std::int64_t sequence_id) {
  auto& slot = sequences_[sequence_id];
  if (!slot) {
    slot = std::make_unique<SequenceState>();
    SequenceState* st = slot.get();
    // Each store the cache makes (K and V of every layer) gets its own region of the pool.
    int next_region = 0;
    PagedKvPool& pool = *pool_;
    st->cache = std::make_unique<cpu::KvCache>(model_->new_cache(
        [&](std::int64_t row_width, std::int64_t head_dim) -> std::unique_ptr<cpu::KvRowStore> {
          ATOM_CHECK(row_width == pool.row_width() && next_region < pool.regions());
          auto store = std::make_unique<PagedKvRowStore>(pool, next_region++, st->block_table);
          st->stores.push_back(store.get());
          return store;
        }));
    ATOM_CHECK(next_region == pool.regions());
  }
  return *slot;
}

void CpuModelRunner::execute(std::span<const SequenceChunk> batch, std::span<float> logits) {
  ATOM_CHECK(pool_ != nullptr);
  std::vector<cpu::SequenceInput> inputs;
  inputs.reserve(batch.size());
  for (const SequenceChunk& chunk : batch) {
    SequenceState& st = state(chunk.sequence_id);
    st.block_table.assign(chunk.block_table.begin(), chunk.block_table.end());
    const std::int64_t cached = st.cache->length();
    if (chunk.start_position < cached) {
      st.cache->truncate(chunk.start_position);  // the engine recomputes from an earlier position
    } else if (chunk.start_position > cached && cached == 0) {
      // A new sequence whose leading blocks come from the prefix cache: their rows are in the pool already.
      for (PagedKvRowStore* store : st.stores) store->adopt(chunk.start_position);
    } else if (chunk.start_position > cached) {
      fail("sequence {}: chunk starts at position {} but only {} positions are cached", chunk.sequence_id,
           chunk.start_position, cached);
    }
    inputs.push_back({chunk.tokens, st.cache.get(), /*all_logits=*/false});
  }
  // One logits row per sequence comes back; keep those the engine samples from.
  const auto vocab = static_cast<std::size_t>(vocab_size());
  std::vector<std::int64_t> destination(batch.size(), -1);
  std::int64_t wanted = 0;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].wants_logits) destination[i] = wanted++;
  }
  ATOM_CHECK(logits.size() == static_cast<std::size_t>(wanted) * vocab);
  model_->forward(
      inputs,
      [&](std::int64_t first_row, std::int64_t rows, const float* data) {
        for (std::int64_t r = 0; r < rows; ++r) {
          const std::int64_t to = destination[static_cast<std::size_t>(first_row + r)];
          if (to >= 0) std::copy(data + r * vocab, data + (r + 1) * vocab, logits.data() + to * vocab);
        }
      },
      /*chunk_rows=*/64);
}

std::string CpuModelRunner::describe() const {
  const ModelConfig& c = model_->config();
  const std::int64_t group = pool_group_size(*model_, kv_dtype_);
  return fmt::format("cpu {} ({} layers, hidden {}), KV cache {}{} paged{}", c.architecture, c.num_layers,
                     c.hidden_size, kv_cache_dtype_name(kv_dtype_), group != 0 ? fmt::format(" g{}", group) : "",
                     pool_ ? fmt::format(", {} blocks of {} tokens ({:.1f} MiB)", pool_->num_blocks(),
                                         pool_->block_size(), pool_->bytes() / 1048576.0)
                           : "");
}

KvCacheDType model_kv_cache_dtype(const cpu::LlamaModel& model) {
  switch (model.new_cache().dtype()) {
    case cpu::KvDType::U8:
      return KvCacheDType::int8;
    case cpu::KvDType::U4:
      return KvCacheDType::int4;
    case cpu::KvDType::F32:
      return KvCacheDType::f32;
  }
  return KvCacheDType::f32;
}

}  // namespace atom
