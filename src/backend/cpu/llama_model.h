#pragma once
// fp32 Llama-family decoder on the CPU (llama, mistral, qwen2): the reference every other path is checked
// against. One forward runs a batch of sequences, each with its own KV cache: some may be in prefill (many
// tokens, matrix-matrix products), some decoding (one token). Rows of all sequences go through each linear
// layer together; attention runs per sequence on its own cache.
//
// Seams for the quantizer:
//  - every linear layer is a LinearOp (layer(i).q_proj, ...); swap in quantized ones;
//  - each layer's attn_perm / mlp_perm reorder the input channels of q/k/v and gate/up inside the RMSNorm;
//  - the KV cache storage comes from a KvRowStoreFactory (new_cache);
//  - set_linear_observer sees the input of every linear layer (calibration).
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/kv_cache.h"
#include "backend/cpu/linear.h"
#include "io/model_config.h"
#include "model/weights.h"

namespace atom::cpu {

struct DecoderLayer {
  std::vector<float> input_norm;           // [hidden], original channel order
  std::vector<float> post_attention_norm;  // [hidden], original channel order
  // Input channel order of q/k/v (fused into input_norm) and of gate/up (fused into post_attention_norm):
  // the norm's output channel j is original channel perm[j]. Empty: identity. The LinearOps reading that
  // output must have their input columns in the same order.
  std::vector<std::int32_t> attn_perm, mlp_perm;
  std::unique_ptr<LinearOp> q_proj, k_proj, v_proj, o_proj;
  std::unique_ptr<LinearOp> gate_proj, up_proj, down_proj;
  // KV centering (docs/FORMAT.md): subtracted from every key (after RoPE and the Q/K transform) and value row
  // before the KV cache stores it, [num_kv_heads * head_dim]; the attention output gets value_center back.
  // Empty: none.
  std::vector<float> key_center, value_center;
};

// Called with the input of every linear layer during forward: (layer, linear name, x [m, k], m, k). Names are
// "q_proj", "k_proj", "v_proj" (the same x for all three), "o_proj", "gate_proj", "up_proj" (same x),
// "down_proj", and "lm_head" with layer = -1. x is the input as the LinearOp receives it (permuted if the
// layer has a permutation).
using LinearObserver =
    std::function<void(int layer, std::string_view linear, const float* x, std::int64_t m, std::int64_t k)>;

struct SequenceInput {
  std::span<const std::int32_t> tokens;  // new tokens, at positions cache->length() ...
  KvCache* cache = nullptr;              // this sequence's cache; the tokens are appended to it
  bool all_logits = false;               // false: logits of the last token only
};

// Transforms `count` contiguous vectors of head_dim values in place.
using HeadTransform = std::function<void(float* x, std::int64_t count)>;

// Writes the embedding rows of `tokens` to x [tokens.size(), hidden], in order: a model built with one has no
// embedding table of its own (a tensor-parallel rank: its vocabulary shard, joined across ranks).
using EmbeddingLookup = std::function<void(std::span<const std::int32_t> tokens, float* x)>;

// Receives logits rows [first_row, first_row + rows) of a forward (vocab floats each), in order.
using LogitsSink = std::function<void(std::int64_t first_row, std::int64_t rows, const float* logits)>;

class LlamaModel {
 public:
  explicit LlamaModel(LlamaWeights weights);  // dense fp32 linear layers
  // A model assembled from built parts (a quantized checkpoint: its layers' LinearOps are already made).
  // lm_head null: tied to embed_tokens. Throws atom::Error when a size or an op's shape does not fit config.
  // With `embedding` set, embed_tokens must be null and lm_head given: the model then holds no table.
  LlamaModel(const ModelConfig& config, std::shared_ptr<const std::vector<float>> embed_tokens,
             std::vector<DecoderLayer> layers, std::vector<float> final_norm,
             std::unique_ptr<LinearOp> lm_head, EmbeddingLookup embedding = {});

  const ModelConfig& config() const { return config_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  int vocab_size() const { return config_.vocab_size; }
  DecoderLayer& layer(int i) { return layers_.at(static_cast<std::size_t>(i)); }
  const DecoderLayer& layer(int i) const { return layers_.at(static_cast<std::size_t>(i)); }
  LinearOp& lm_head() { return *lm_head_; }
  std::unique_ptr<LinearOp> set_lm_head(std::unique_ptr<LinearOp> op);       // returns the previous one
  // [vocab, hidden]; throws atom::Error for a model built with an EmbeddingLookup (it holds no table).
  const std::vector<float>& embed_tokens() const;
  const std::vector<float>& final_norm() const { return final_norm_; }
  const std::vector<float>& rope_inv_freq() const { return inv_freq_; }

  KvCacheShape cache_shape() const;
  // Caches of this model's KV format: fp32 unless set_kv_store_factory chose another (a quantized checkpoint
  // sets its INT4/INT8 store here, so that every user of new_cache() gets it).
  KvCache new_cache() const { return KvCache(cache_shape(), kv_factory_); }
  KvCache new_cache(const KvRowStoreFactory& factory) const;
  // group_size: channels per (scale, minimum) pair of the factory's quantized rows (0 = head_dim), for runners
  // that keep the rows elsewhere (the paged pool) in the same format.
  void set_kv_store_factory(KvRowStoreFactory factory, std::int64_t group_size = 0);
  std::int64_t kv_group_size() const { return kv_group_size_; }
  void set_linear_observer(LinearObserver observer) { observer_ = std::move(observer); }
  // An orthogonal transform applied in place to every head vector of Q and K after RoPE, before K enters the
  // KV cache (a rotated checkpoint's online Q/K Hadamard; attention scores are unchanged). Empty: none.
  void set_qk_transform(HeadTransform transform) { qk_transform_ = std::move(transform); }
  const HeadTransform& qk_transform() const { return qk_transform_; }
  // Sets layer i's KV centering vectors (DecoderLayer::key_center / value_center; empty: none). Throws
  // atom::Error when a non-empty one is not num_kv_heads * head_dim long.
  void set_kv_centers(int layer, std::vector<float> key_center, std::vector<float> value_center);

  // One forward over a batch. Logits rows, for each sequence in batch order: one per token if all_logits,
  // else one (its last token); logits_rows() says how many. Throws atom::Error for empty token lists, token
  // ids out of range, a cache of another shape, or one cache appearing twice.
  void forward(std::span<const SequenceInput> batch, std::vector<float>& logits) const;
  // Same, handing logits to `sink` in chunks of at most `chunk_rows` rows (long windows need not
  // materialize [tokens, vocab]).
  void forward(std::span<const SequenceInput> batch, const LogitsSink& sink,
               std::int64_t chunk_rows = 256) const;
  // Single sequence: returns [n, vocab] (all_logits) or [vocab].
  std::vector<float> forward(std::span<const std::int32_t> tokens, KvCache& cache,
                             bool all_logits = false) const;

  static std::int64_t logits_rows(std::span<const SequenceInput> batch);

 private:
  void observe(int layer, std::string_view name, const float* x, std::int64_t m, std::int64_t k) const {
    if (observer_) observer_(layer, name, x, m, k);
  }

  // forward's buffers, kept between calls so that a decode step allocates none of them. forward runs on one
  // thread at a time (the quantized LinearOps keep scratch too).
  struct Workspace {
    std::vector<float> x, normed, tmp, q, k, v, attn, gate, up, cos, sin, gathered, logits;
    std::vector<std::int64_t> positions;
    std::vector<std::int32_t> tokens;  // every row's token, for an EmbeddingLookup
    std::vector<AttentionJob> jobs;
    std::vector<std::vector<float>> dequantized_k,
        dequantized_v;  // per sequence: a quantized cache read back (for sgemm attention blocks)
    std::vector<QuantKvRows> quant_k, quant_v;  // per sequence: where a quantized cache's codes are
  };

  ModelConfig config_;
  std::shared_ptr<const std::vector<float>> embed_tokens_;  // null when embedding_ is set
  EmbeddingLookup embedding_;
  std::vector<DecoderLayer> layers_;
  std::vector<float> final_norm_;
  std::unique_ptr<LinearOp> lm_head_;
  std::vector<float> inv_freq_;
  LinearObserver observer_;
  HeadTransform qk_transform_;
  KvRowStoreFactory kv_factory_ = make_f32_kv_row_store;
  std::int64_t kv_group_size_ = 0;
  mutable Workspace work_;
};

// Opens a checkpoint (GGUF file or Hugging Face directory, io/checkpoint.h) and loads it as an fp32 model.
LlamaModel load_llama_model(const std::string& checkpoint_path);

}  // namespace atom::cpu
