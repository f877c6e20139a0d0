#pragma once
// How a Llama-family model splits over N tensor-parallel ranks (Megatron-style):
//  - q_proj / k_proj / v_proj column-parallel: rank r computes its query heads and their KV heads; attention
//    runs per rank on its heads, with a KV cache of its KV heads only. With fewer KV heads than ranks, each
//    KV head is replicated on the N / num_kv_heads ranks whose query heads read it.
//  - o_proj row-parallel: rank r multiplies its heads' input channels; one all-reduce sums the partial outputs.
//  - gate_proj / up_proj column-parallel (a block of intermediate channels), down_proj row-parallel over the
//    same block, one all-reduce.
//  - embedding and lm_head split by vocabulary: rank r holds rows [r * V', min((r + 1) * V', vocab)) with
//    V' = ceil(vocab / N). The embedding lookup writes the rows of tokens in that range (zeros for the rest)
//    and an all-reduce joins them (exact: one non-zero term per element); the lm_head computes its block of
//    V' logits per row (rows past the vocabulary padded with zero weights) and an all-gather joins the blocks.
//  - norms, residual adds and RoPE tables are replicated: after each all-reduce every rank holds the same
//    hidden state.
#include <cstdint>

#include "io/model_config.h"

namespace atom::dist {

struct ChannelRange {
  std::int64_t begin = 0, end = 0;  // [begin, end)
  std::int64_t size() const { return end - begin; }
  bool operator==(const ChannelRange&) const = default;
};

struct TensorParallelShard {
  int rank = 0;
  int world_size = 1;
  ChannelRange heads;          // query heads
  ChannelRange kv_heads;       // KV heads (when replicated: the one KV head of this rank's query heads)
  int kv_head_replicas = 1;    // ranks holding each KV head (N / num_kv_heads when num_kv_heads < N, else 1)
  ChannelRange intermediate;   // gate/up output rows = down_proj input columns
  ChannelRange vocab;          // embedding rows and lm_head rows held (may be empty when vocab < N)
  std::int64_t vocab_per_rank = 0;  // V' = ceil(vocab / N): each rank's block of the gathered logits

  // Channels of q_proj's output / o_proj's input, and of k_proj's / v_proj's output, for head size head_dim.
  ChannelRange q_channels(int head_dim) const { return {heads.begin * head_dim, heads.end * head_dim}; }
  ChannelRange kv_channels(int head_dim) const { return {kv_heads.begin * head_dim, kv_heads.end * head_dim}; }

  // The model as this rank runs it: its heads, KV heads and intermediate width; hidden size, head_dim and
  // vocab (the gathered logits' width) unchanged.
  ModelConfig local_config(const ModelConfig& config) const;
};

// Throws atom::Error naming the value when `world_size` ranks cannot split `config`: world_size < 1, or not
// dividing num_heads or intermediate_size, or neither dividing nor being a multiple of num_kv_heads.
void check_tensor_parallel(const ModelConfig& config, int world_size);

// Rank `rank`'s shard (check_tensor_parallel first; throws for a rank outside [0, world_size)).
TensorParallelShard tensor_parallel_shard(const ModelConfig& config, int world_size, int rank);

}  // namespace atom::dist
