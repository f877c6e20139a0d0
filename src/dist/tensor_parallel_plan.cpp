#include "dist/tensor_parallel_plan.h"

#include <algorithm>

#include "common/error.h"

namespace atom::dist {

ModelConfig TensorParallelShard::local_config(const ModelConfig& config) const {
  ModelConfig local = config;
  local.num_heads = static_cast<int>(heads.size());
  local.num_kv_heads = static_cast<int>(kv_heads.size());
  local.intermediate_size = static_cast<int>(intermediate.size());
  return local;
}

void check_tensor_parallel(const ModelConfig& config, int world_size) {
  const int n = world_size;
  if (n < 1) fail("tensor parallel: the degree must be at least 1, found {}", n);
  if (config.num_heads % n != 0)
    fail("tensor parallel: num_heads {} is not divisible by the tensor-parallel degree {} (each rank runs whole "
         "query heads)", config.num_heads, n);
  const int kv = config.num_kv_heads;
  if (kv >= n ? kv % n != 0 : n % kv != 0)
    fail("tensor parallel: num_kv_heads {} and the tensor-parallel degree {} must divide one another (KV heads "
         "are split, or replicated when fewer than the ranks)", kv, n);
  if (config.intermediate_size % n != 0)
    fail("tensor parallel: intermediate_size {} is not divisible by the tensor-parallel degree {}",
         config.intermediate_size, n);
}

TensorParallelShard tensor_parallel_shard(const ModelConfig& config, int world_size, int rank) {
  check_tensor_parallel(config, world_size);
  if (rank < 0 || rank >= world_size) fail("tensor parallel: rank {} is outside [0, {})", rank, world_size);
  const std::int64_t n = world_size, r = rank;
  TensorParallelShard s;
  s.rank = rank;
  s.world_size = world_size;
  const std::int64_t heads = config.num_heads / n;
  s.heads = {r * heads, (r + 1) * heads};
  if (config.num_kv_heads >= world_size) {
    const std::int64_t kv = config.num_kv_heads / n;
    s.kv_heads = {r * kv, (r + 1) * kv};
  } else {
    // Query head h reads KV head h / (num_heads / num_kv_heads); this rank's heads all read one of them.
    s.kv_head_replicas = world_size / config.num_kv_heads;
    const std::int64_t kv = r / s.kv_head_replicas;
    s.kv_heads = {kv, kv + 1};
  }
  const std::int64_t inter = config.intermediate_size / n;
  s.intermediate = {r * inter, (r + 1) * inter};
  s.vocab_per_rank = (config.vocab_size + n - 1) / n;
  const std::int64_t vocab = config.vocab_size;
  s.vocab = {std::min(r * s.vocab_per_rank, vocab), std::min((r + 1) * s.vocab_per_rank, vocab)};
  return s;
}

}  // namespace atom::dist
