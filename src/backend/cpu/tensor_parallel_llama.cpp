#include "backend/cpu/tensor_parallel_llama.h"

#include <algorithm>

#include "common/error.h"

namespace atom::cpu {

RowParallelLinear::RowParallelLinear(std::unique_ptr<LinearOp> local, dist::Communicator& comm,
                                     std::vector<float> bias)
    : local_(std::move(local)), comm_(comm), bias_(std::move(bias)) {
  ATOM_CHECK(local_);
  if (!bias_.empty() && static_cast<std::int64_t>(bias_.size()) != local_->out_features())
    fail("row-parallel linear: bias has {} values, the layer has {} outputs", bias_.size(), local_->out_features());
}

void RowParallelLinear::forward(const float* x, std::int64_t m, float* y) const {
  const std::int64_t n = local_->out_features();
  local_->forward(x, m, y);
  comm_.all_reduce_sum(std::span<float>(y, static_cast<std::size_t>(m * n)));
  if (bias_.empty()) return;
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t j = 0; j < n; ++j) y[r * n + j] += bias_[static_cast<std::size_t>(j)];
}

std::string RowParallelLinear::describe() const {
  return fmt::format("row-parallel (rank {} of {}) {}", comm_.rank(), comm_.world_size(), local_->describe());
}

ShardedInputLinear::ShardedInputLinear(std::vector<std::unique_ptr<LinearOp>> shards, std::vector<float> bias)
    : shards_(std::move(shards)), bias_(std::move(bias)) {
  if (shards_.empty()) fail("sharded linear: no shards");
  for (std::size_t r = 0; r < shards_.size(); ++r) {
    ATOM_CHECK(shards_[r]);
    if (shards_[r]->out_features() != shards_[0]->out_features())
      fail("sharded linear: shard {} has {} outputs, shard 0 has {}", r, shards_[r]->out_features(),
           shards_[0]->out_features());
    in_ += shards_[r]->in_features();
  }
  if (!bias_.empty() && static_cast<std::int64_t>(bias_.size()) != out_features())
    fail("sharded linear: bias has {} values, the layer has {} outputs", bias_.size(), out_features());
}

void ShardedInputLinear::forward(const float* x, std::int64_t m, float* y) const {
  const std::int64_t n = out_features();
  std::int64_t first = 0;
  for (std::size_t r = 0; r < shards_.size(); ++r) {
    const std::int64_t k = shards_[r]->in_features();
    columns_.resize(static_cast<std::size_t>(m * k));
    for (std::int64_t i = 0; i < m; ++i) std::copy_n(x + i * in_ + first, k, columns_.data() + i * k);
    if (r == 0) {
      shards_[r]->forward(columns_.data(), m, y);
    } else {
      partial_.resize(static_cast<std::size_t>(m * n));
      shards_[r]->forward(columns_.data(), m, partial_.data());
      for (std::int64_t i = 0; i < m * n; ++i) y[i] += partial_[static_cast<std::size_t>(i)];
    }
    first += k;
  }
  if (bias_.empty()) return;
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t j = 0; j < n; ++j) y[r * n + j] += bias_[static_cast<std::size_t>(j)];
}

bool ShardedInputLinear::splits_through_parallel_for() const {
  return std::all_of(shards_.begin(), shards_.end(), [](const auto& s) { return s->splits_through_parallel_for(); });
}

std::string ShardedInputLinear::describe() const {
  return fmt::format("{} input shards of {}", shards_.size(), shards_.front()->describe());
}

VocabParallelLinear::VocabParallelLinear(std::unique_ptr<LinearOp> local, dist::Communicator& comm,
                                         std::int64_t vocab)
    : local_(std::move(local)), comm_(comm), vocab_(vocab) {
  ATOM_CHECK(local_);
  if (local_->out_features() * comm_.world_size() < vocab_)
    fail("vocab-parallel lm_head: {} ranks x {} rows do not cover the vocabulary of {}", comm_.world_size(),
         local_->out_features(), vocab_);
}

void VocabParallelLinear::forward(const float* x, std::int64_t m, float* y) const {
  const std::int64_t block = local_->out_features();
  block_.resize(static_cast<std::size_t>(m * block));
  gathered_.resize(block_.size() * static_cast<std::size_t>(comm_.world_size()));
  local_->forward(x, m, block_.data());
  comm_.all_gather(block_, gathered_);
  // gathered_ is [rank][row][block]; y is [row][vocab] with rank r's block at columns r * block.
  for (int r = 0; r < comm_.world_size(); ++r) {
    const std::int64_t first = r * block;
    const std::int64_t width = std::clamp<std::int64_t>(vocab_ - first, 0, block);
    const float* src = gathered_.data() + static_cast<std::int64_t>(r) * m * block;
    for (std::int64_t i = 0; i < m; ++i) std::copy(src + i * block, src + i * block + width, y + i * vocab_ + first);
  }
}

std::string VocabParallelLinear::describe() const {
  return fmt::format("vocab-parallel (rank {} of {}, vocab {}) {}", comm_.rank(), comm_.world_size(), vocab_,
                     local_->describe());
}

EmbeddingLookup vocab_parallel_embedding(std::shared_ptr<const std::vector<float>> table, dist::ChannelRange vocab,
                                         std::int64_t hidden, dist::Communicator& comm) {
  ATOM_CHECK(table && static_cast<std::int64_t>(table->size()) >= vocab.size() * hidden);
  return [table = std::move(table), vocab, hidden, &comm](std::span<const std::int32_t> tokens, float* x) {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      float* row = x + static_cast<std::int64_t>(i) * hidden;
      const std::int64_t t = tokens[i];
      if (t >= vocab.begin && t < vocab.end) {
        const float* e = table->data() + (t - vocab.begin) * hidden;
        std::copy(e, e + hidden, row);
      } else {
        std::fill(row, row + hidden, 0.0f);
      }
    }
    comm.all_reduce_sum(std::span<float>(x, tokens.size() * static_cast<std::size_t>(hidden)));
  };
}

std::vector<float> slice_rows(const std::vector<float>& m, std::int64_t cols, dist::ChannelRange rows) {
  ATOM_CHECK(rows.end * cols <= static_cast<std::int64_t>(m.size()));
  return {m.begin() + rows.begin * cols, m.begin() + rows.end * cols};
}

std::vector<float> slice_columns(const std::vector<float>& m, std::int64_t rows, std::int64_t n,
                                 dist::ChannelRange cols) {
  ATOM_CHECK(rows * n == static_cast<std::int64_t>(m.size()) && cols.end <= n);
  std::vector<float> out(static_cast<std::size_t>(rows * cols.size()));
  for (std::int64_t r = 0; r < rows; ++r)
    std::copy(m.begin() + r * n + cols.begin, m.begin() + r * n + cols.end, out.begin() + r * cols.size());
  return out;
}

namespace {

std::unique_ptr<LinearOp> dense(std::vector<float> w, std::int64_t out, std::int64_t in, std::vector<float> bias = {}) {
  return std::make_unique<DenseLinear>(std::make_shared<const std::vector<float>>(std::move(w)), out, in,
                                       std::move(bias));
}

std::vector<float> slice(const std::vector<float>& v, dist::ChannelRange r) {
  return v.empty() ? v : slice_rows(v, 1, r);
}

}  // namespace

LlamaModel make_tensor_parallel_rank(const LlamaWeights& weights, dist::Communicator& comm) {
  const ModelConfig& config = weights.config;
  const dist::TensorParallelShard shard = dist::tensor_parallel_shard(config, comm.world_size(), comm.rank());
  const ModelConfig local = shard.local_config(config);
  const std::int64_t hidden = config.hidden_size;
  const std::int64_t q_dim = std::int64_t{config.num_heads} * config.head_dim;
  const dist::ChannelRange q = shard.q_channels(config.head_dim), kv = shard.kv_channels(config.head_dim);
  const dist::ChannelRange inter = shard.intermediate;

  std::vector<DecoderLayer> layers;
  for (const LayerWeights& w : weights.layers) {
    DecoderLayer l;
    l.input_norm = w.input_norm;
    l.post_attention_norm = w.post_attention_norm;
    l.q_proj = dense(slice_rows(w.q_proj, hidden, q), q.size(), hidden, slice(w.q_bias, q));
    l.k_proj = dense(slice_rows(w.k_proj, hidden, kv), kv.size(), hidden, slice(w.k_bias, kv));
    l.v_proj = dense(slice_rows(w.v_proj, hidden, kv), kv.size(), hidden, slice(w.v_bias, kv));
    l.o_proj = std::make_unique<RowParallelLinear>(
        dense(slice_columns(w.o_proj, hidden, q_dim, q), hidden, q.size()), comm, w.o_bias);
    l.gate_proj = dense(slice_rows(w.gate_proj, hidden, inter), inter.size(), hidden);
    l.up_proj = dense(slice_rows(w.up_proj, hidden, inter), inter.size(), hidden);
    l.down_proj = std::make_unique<RowParallelLinear>(
        dense(slice_columns(w.down_proj, hidden, config.intermediate_size, inter), hidden, inter.size()), comm);
    layers.push_back(std::move(l));
  }

  VocabParallelEnds ends = vocab_parallel_ends(weights.embed_tokens,
                                               config.tie_word_embeddings ? nullptr : &weights.lm_head, shard,
                                               config, comm);
  return LlamaModel(local, nullptr, std::move(layers), weights.final_norm, std::move(ends.lm_head),
                    std::move(ends.embedding));
}

VocabParallelEnds vocab_parallel_ends(const std::vector<float>& embed_tokens, const std::vector<float>* lm_head,
                                      const dist::TensorParallelShard& shard, const ModelConfig& config,
                                      dist::Communicator& comm) {
  const std::int64_t hidden = config.hidden_size;
  // One padded [vocab_per_rank, hidden] block serves the lookup and, tied or not, the lm_head's shape.
  auto vocab_block = [&](const std::vector<float>& table) {
    std::vector<float> block(static_cast<std::size_t>(shard.vocab_per_rank * hidden), 0.0f);
    const std::vector<float> rows = slice_rows(table, hidden, shard.vocab);
    std::copy(rows.begin(), rows.end(), block.begin());
    return std::make_shared<const std::vector<float>>(std::move(block));
  };
  const auto embed = vocab_block(embed_tokens);
  const auto head = lm_head == nullptr ? embed : vocab_block(*lm_head);
  VocabParallelEnds ends;
  ends.lm_head = std::make_unique<VocabParallelLinear>(
      std::make_unique<DenseLinear>(head, shard.vocab_per_rank, hidden), comm, config.vocab_size);
  ends.embedding = vocab_parallel_embedding(embed, shard.vocab, hidden, comm);
  return ends;
}

}  // namespace atom::cpu
