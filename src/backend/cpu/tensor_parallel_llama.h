#pragma once
// One rank of a tensor-parallel Llama on the CPU (the split is dist/tensor_parallel_plan.h's): a LlamaModel
// over the rank's local config whose column-parallel linears are slices of the weights and whose row-parallel
// ones (o_proj, down_proj), embedding and lm_head join the ranks through a dist::Communicator. Every rank
// runs the same forward calls (same batch, same caches' history) on its own thread or process; each rank's
// KV caches hold its KV heads only (new_cache() of its model), and every rank gets the whole logits.
#include <memory>
#include <vector>

#include "backend/cpu/linear.h"
#include "backend/cpu/llama_model.h"
#include "dist/communicator.h"
#include "dist/tensor_parallel_plan.h"
#include "model/weights.h"

namespace atom::cpu {

// A row-parallel linear: `local` multiplies this rank's input channels, an all-reduce sums the ranks'
// partial outputs, then the bias (the whole layer's, added once after the sum) is added.
class RowParallelLinear final : public LinearOp {
 public:
  RowParallelLinear(std::unique_ptr<LinearOp> local, dist::Communicator& comm, std::vector<float> bias = {});
  std::int64_t in_features() const override { return local_->in_features(); }
  std::int64_t out_features() const override { return local_->out_features(); }
  void forward(const float* x, std::int64_t m, float* y) const override;
  std::string describe() const override;
  const LinearOp& local() const { return *local_; }

 private:
  std::unique_ptr<LinearOp> local_;
  dist::Communicator& comm_;
  std::vector<float> bias_;
};

// A row-parallel layer on one device: shard r multiplies input columns [k_0 + ... + k_{r-1}, + k_r) and the
// partial outputs are summed in rank order 0..N-1, exactly as RowParallelLinear's all-reduce sums them, then the
// bias is added. A tensor-parallel Atom checkpoint's o_proj and down_proj run this way on a single device.
class ShardedInputLinear final : public LinearOp {
 public:
  explicit ShardedInputLinear(std::vector<std::unique_ptr<LinearOp>> shards, std::vector<float> bias = {});
  std::int64_t in_features() const override { return in_; }
  std::int64_t out_features() const override { return shards_.front()->out_features(); }
  void forward(const float* x, std::int64_t m, float* y) const override;
  std::string describe() const override;
  // Its own loops are serial: it runs in a forward team whenever every shard can.
  bool splits_through_parallel_for() const override;
  const LinearOp& shard(int r) const { return *shards_.at(static_cast<std::size_t>(r)); }

 private:
  std::vector<std::unique_ptr<LinearOp>> shards_;
  std::vector<float> bias_;
  std::int64_t in_ = 0;
  mutable std::vector<float> columns_, partial_;
};

// A vocabulary-parallel lm_head: `local` computes this rank's block of vocab_per_rank logits (rows past the
// vocabulary zero), an all-gather joins the blocks in rank order and the padding is dropped: out_features is
// the whole vocabulary.
class VocabParallelLinear final : public LinearOp {
 public:
  VocabParallelLinear(std::unique_ptr<LinearOp> local, dist::Communicator& comm, std::int64_t vocab);
  std::int64_t in_features() const override { return local_->in_features(); }
  std::int64_t out_features() const override { return vocab_; }
  void forward(const float* x, std::int64_t m, float* y) const override;
  std::string describe() const override;

 private:
  std::unique_ptr<LinearOp> local_;
  dist::Communicator& comm_;
  std::int64_t vocab_;
  mutable std::vector<float> block_, gathered_;
};

// The embedding lookup of a vocabulary shard: rows of tokens in [vocab.begin, vocab.end) from `table`
// ([>= vocab.size(), hidden], row 0 = token vocab.begin), zeros for the others, then an all-reduce (exact: one
// non-zero term per element).
EmbeddingLookup vocab_parallel_embedding(std::shared_ptr<const std::vector<float>> table,
                                         dist::ChannelRange vocab, std::int64_t hidden, dist::Communicator& comm);

// A rank's vocabulary-parallel ends of the model: the embedding lookup of its shard of `embed_tokens` and the
// lm_head of its shard of `lm_head` ([vocab, hidden]; null: tied to embed_tokens), fp32.
struct VocabParallelEnds {
  EmbeddingLookup embedding;
  std::unique_ptr<LinearOp> lm_head;
};
VocabParallelEnds vocab_parallel_ends(const std::vector<float>& embed_tokens, const std::vector<float>* lm_head,
                                      const dist::TensorParallelShard& shard, const ModelConfig& config,
                                      dist::Communicator& comm);

// Rows [rows.begin, rows.end) of a row-major [.., cols] matrix; columns [cols.begin, cols.end) of [rows, n].
std::vector<float> slice_rows(const std::vector<float>& m, std::int64_t cols, dist::ChannelRange rows);
std::vector<float> slice_columns(const std::vector<float>& m, std::int64_t rows, std::int64_t n,
                                 dist::ChannelRange cols);

// Rank comm.rank() of comm.world_size() of the fp32 model `weights` (throws atom::Error naming the value when
// the model does not split that way). `comm` must outlive the model.
LlamaModel make_tensor_parallel_rank(const LlamaWeights& weights, dist::Communicator& comm);

}  // namespace atom::cpu
