#include "backend/cpu/llama_model.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>

#include "backend/cpu/parallel.h"
#include "backend/cpu/quant_linear.h"
#include "common/error.h"
#include "io/checkpoint.h"

namespace atom::cpu {

namespace {

std::unique_ptr<LinearOp> dense(std::vector<float>&& w, std::int64_t out, std::int64_t in,
                                std::vector<float>&& bias = {}) {
  return std::make_unique<DenseLinear>(std::make_shared<const std::vector<float>>(std::move(w)), out, in,
                                       std::move(bias));
}

void add_in_place(float* x, const float* y, std::int64_t n) {
  parallel_for((n + 1023) / 1024, static_cast<double>(n) / kRowElementsPerUs, Schedule::kStatic,
               [&](std::int64_t b0, std::int64_t b1) {
                 for (std::int64_t i = b0 * 1024; i < std::min(n, b1 * 1024); ++i) x[i] += y[i];
               });
}

void check_op(const LinearOp& op, std::int64_t out, std::int64_t in, int layer, const char* name) {
  if (op.out_features() != out || op.in_features() != in) {
    fail("layer {} {}: linear op {} has shape [{} x {}], the model needs [{} x {}]", layer, name,
         op.describe(), op.out_features(), op.in_features(), out, in);
  }
}

void check_kv_center(const std::vector<float>& center, std::int64_t kv_dim, int layer, const char* what) {
  if (!center.empty() && static_cast<std::int64_t>(center.size()) != kv_dim) {
    fail("layer {}: the {} centering vector has {} values, the model needs num_kv_heads x head_dim = {}", layer,
         what, center.size(), kv_dim);
  }
}

// rows[r, :] += sign * v for every row (v [width]).
void add_row_vector(float* rows, std::int64_t n, const std::vector<float>& v, float sign) {
  const auto width = static_cast<std::int64_t>(v.size());
  for (std::int64_t r = 0; r < n; ++r) {
    float* x = rows + r * width;
    for (std::int64_t i = 0; i < width; ++i) x[i] += sign * v[static_cast<std::size_t>(i)];
  }
}

}  // namespace

const std::vector<float>& LlamaModel::embed_tokens() const {
  if (!embed_tokens_) fail("this model has no embedding table of its own (it was built with an embedding lookup)");
  return *embed_tokens_;
}

LlamaModel::LlamaModel(LlamaWeights weights) : config_(weights.config) {
  config_.validate("model config");
  const std::int64_t hidden = config_.hidden_size, inter = config_.intermediate_size;
  const std::int64_t q_dim = std::int64_t{config_.num_heads} * config_.head_dim;
  const std::int64_t kv_dim = std::int64_t{config_.num_kv_heads} * config_.head_dim;
  if (static_cast<int>(weights.layers.size()) != config_.num_layers) {
    fail("model weights have {} layers, the config says {}", weights.layers.size(), config_.num_layers);
  }
  ATOM_CHECK(static_cast<std::int64_t>(weights.embed_tokens.size()) ==
             std::int64_t{config_.vocab_size} * hidden);
  embed_tokens_ = std::make_shared<const std::vector<float>>(std::move(weights.embed_tokens));
  for (LayerWeights& w : weights.layers) {
    DecoderLayer l;
    l.input_norm = std::move(w.input_norm);
    l.post_attention_norm = std::move(w.post_attention_norm);
    ATOM_CHECK(static_cast<std::int64_t>(l.input_norm.size()) == hidden);
    ATOM_CHECK(static_cast<std::int64_t>(l.post_attention_norm.size()) == hidden);
    l.q_proj = dense(std::move(w.q_proj), q_dim, hidden, std::move(w.q_bias));
    l.k_proj = dense(std::move(w.k_proj), kv_dim, hidden, std::move(w.k_bias));
    l.v_proj = dense(std::move(w.v_proj), kv_dim, hidden, std::move(w.v_bias));
    l.o_proj = dense(std::move(w.o_proj), hidden, q_dim, std::move(w.o_bias));
    l.gate_proj = dense(std::move(w.gate_proj), inter, hidden);
    l.up_proj = dense(std::move(w.up_proj), inter, hidden);
    l.down_proj = dense(std::move(w.down_proj), hidden, inter);
    layers_.push_back(std::move(l));
  }
  final_norm_ = std::move(weights.final_norm);
  ATOM_CHECK(static_cast<std::int64_t>(final_norm_.size()) == hidden);
  if (config_.tie_word_embeddings) {
    lm_head_ = std::make_unique<DenseLinear>(embed_tokens_, config_.vocab_size, hidden);
  } else {
    lm_head_ = dense(std::move(weights.lm_head), config_.vocab_size, hidden);
  }
  inv_freq_ = cpu::rope_inv_freq(config_);
}

LlamaModel::LlamaModel(const ModelConfig& config, std::shared_ptr<const std::vector<float>> embed_tokens,
                       std::vector<DecoderLayer> layers, std::vector<float> final_norm,
                       std::unique_ptr<LinearOp> lm_head, EmbeddingLookup embedding)
    : config_(config),
      embed_tokens_(std::move(embed_tokens)),
      embedding_(std::move(embedding)),
      layers_(std::move(layers)),
      final_norm_(std::move(final_norm)) {
  config_.validate("model config");
  const std::int64_t hidden = config_.hidden_size, inter = config_.intermediate_size;
  const std::int64_t q_dim = std::int64_t{config_.num_heads} * config_.head_dim;
  const std::int64_t kv_dim = std::int64_t{config_.num_kv_heads} * config_.head_dim;
  if (static_cast<int>(layers_.size()) != config_.num_layers) {
    fail("model has {} layers, the config says {}", layers_.size(), config_.num_layers);
  }
  if (embedding_) {
    if (embed_tokens_) fail("model given both an embedding table and an embedding lookup");
    if (!lm_head) fail("model with an embedding lookup needs an lm_head (it has no table to tie to)");
  } else if (!embed_tokens_ ||
             static_cast<std::int64_t>(embed_tokens_->size()) != std::int64_t{config_.vocab_size} * hidden) {
    fail("model embeddings have {} values, the config needs {} x {}",
         embed_tokens_ ? embed_tokens_->size() : 0, config_.vocab_size, hidden);
  }
  if (static_cast<std::int64_t>(final_norm_.size()) != hidden) {
    fail("final norm has {} values, hidden is {}", final_norm_.size(), hidden);
  }
  for (int i = 0; i < num_layers(); ++i) {
    const DecoderLayer& l = layers_[static_cast<std::size_t>(i)];
    if (static_cast<std::int64_t>(l.input_norm.size()) != hidden ||
        static_cast<std::int64_t>(l.post_attention_norm.size()) != hidden) {
      fail("layer {}: norm weights have {} and {} values, hidden is {}", i, l.input_norm.size(),
           l.post_attention_norm.size(), hidden);
    }
    if ((!l.attn_perm.empty() && static_cast<std::int64_t>(l.attn_perm.size()) != hidden) ||
        (!l.mlp_perm.empty() && static_cast<std::int64_t>(l.mlp_perm.size()) != hidden)) {
      fail("layer {}: channel permutations have {} and {} entries, hidden is {}", i, l.attn_perm.size(),
           l.mlp_perm.size(), hidden);
    }
    const std::pair<const std::unique_ptr<LinearOp>*, const char*> ops[] = {
        {&l.q_proj, "q_proj"},      {&l.k_proj, "k_proj"},       {&l.v_proj, "v_proj"},
        {&l.o_proj, "o_proj"},      {&l.gate_proj, "gate_proj"}, {&l.up_proj, "up_proj"},
        {&l.down_proj, "down_proj"}};
    for (const auto& [op, name] : ops) {
      if (!*op) fail("layer {}: {} is missing", i, name);
    }
    check_kv_center(l.key_center, kv_dim, i, "key");
    check_kv_center(l.value_center, kv_dim, i, "value");
    check_op(*l.q_proj, q_dim, hidden, i, "q_proj");
    check_op(*l.k_proj, kv_dim, hidden, i, "k_proj");
    check_op(*l.v_proj, kv_dim, hidden, i, "v_proj");
    check_op(*l.o_proj, hidden, q_dim, i, "o_proj");
    check_op(*l.gate_proj, inter, hidden, i, "gate_proj");
    check_op(*l.up_proj, inter, hidden, i, "up_proj");
    check_op(*l.down_proj, hidden, inter, i, "down_proj");
  }
  if (lm_head) {
    set_lm_head(std::move(lm_head));
  } else {
    if (!config_.tie_word_embeddings) fail("model config has untied embeddings but no lm_head was given");
    lm_head_ = std::make_unique<DenseLinear>(embed_tokens_, config_.vocab_size, hidden);
  }
  inv_freq_ = cpu::rope_inv_freq(config_);
}

void LlamaModel::set_kv_centers(int layer, std::vector<float> key_center, std::vector<float> value_center) {
  if (layer < 0 || layer >= num_layers()) fail("KV centering: layer {} of {}", layer, num_layers());
  const std::int64_t kv_dim = std::int64_t{config_.num_kv_heads} * config_.head_dim;
  check_kv_center(key_center, kv_dim, layer, "key");
  check_kv_center(value_center, kv_dim, layer, "value");
  DecoderLayer& l = layers_[static_cast<std::size_t>(layer)];
  l.key_center = std::move(key_center);
  l.value_center = std::move(value_center);
}

std::unique_ptr<LinearOp> LlamaModel::set_lm_head(std::unique_ptr<LinearOp> op) {
  ATOM_CHECK(op != nullptr);
  check_op(*op, config_.vocab_size, config_.hidden_size, -1, "lm_head");
  std::swap(lm_head_, op);
  return op;
}

KvCacheShape LlamaModel::cache_shape() const {
  return KvCacheShape{config_.num_layers, config_.num_kv_heads, config_.head_dim};
}

KvCache LlamaModel::new_cache(const KvRowStoreFactory& factory) const {
  return KvCache(cache_shape(), factory);
}

void LlamaModel::set_kv_store_factory(KvRowStoreFactory factory, std::int64_t group_size) {
  ATOM_CHECK(factory != nullptr && group_size >= 0);
  kv_factory_ = std::move(factory);
  kv_group_size_ = group_size;
}

std::int64_t LlamaModel::logits_rows(std::span<const SequenceInput> batch) {
  std::int64_t rows = 0;
  for (const SequenceInput& s : batch) rows += s.all_logits ? static_cast<std::int64_t>(s.tokens.size()) : 1;
  return rows;
}

std::vector<float> LlamaModel::forward(std::span<const std::int32_t> tokens, KvCache& cache,
                                       bool all_logits) const {
  const SequenceInput input{tokens, &cache, all_logits};
  std::vector<float> logits;
  forward(std::span<const SequenceInput>(&input, 1), logits);
  return logits;
}

void LlamaModel::forward(std::span<const SequenceInput> batch, std::vector<float>& logits) const {
  const std::int64_t vocab = config_.vocab_size;
  logits.resize(static_cast<std::size_t>(logits_rows(batch) * vocab));
  forward(batch, [&](std::int64_t first, std::int64_t rows, const float* chunk) {
    std::copy(chunk, chunk + rows * vocab, logits.begin() + first * vocab);
  });
}

void LlamaModel::forward(std::span<const SequenceInput> batch, const LogitsSink& sink,
                         std::int64_t chunk_rows) const {
  const std::int64_t hidden = config_.hidden_size, inter = config_.intermediate_size,
                     vocab = config_.vocab_size;
  const int heads = config_.num_heads, kv_heads = config_.num_kv_heads, head_dim = config_.head_dim;
  const std::int64_t q_dim = std::int64_t{heads} * head_dim, kv_dim = std::int64_t{kv_heads} * head_dim;
  if (batch.empty()) fail("forward: empty batch");
  if (chunk_rows <= 0) fail("forward: chunk_rows must be positive, got {}", chunk_rows);

  // ---- validate the batch, lay out its rows
  const KvCacheShape shape = cache_shape();
  std::set<const KvCache*> caches;
  std::vector<std::int64_t> row_offset, start;
  std::int64_t total = 0;
  for (std::size_t s = 0; s < batch.size(); ++s) {
    const SequenceInput& in = batch[s];
    if (in.tokens.empty()) fail("forward: sequence {} of the batch has no tokens", s);
    if (in.cache == nullptr) fail("forward: sequence {} of the batch has no KV cache", s);
    const KvCacheShape& cs = in.cache->shape();
    if (cs.num_layers != shape.num_layers || cs.num_kv_heads != shape.num_kv_heads ||
        cs.head_dim != shape.head_dim) {
      fail(
          "forward: sequence {}: KV cache shape ({} layers, {} kv heads, head_dim {}) does not match the "
          "model "
          "({}, {}, {})",
          s, cs.num_layers, cs.num_kv_heads, cs.head_dim, shape.num_layers, shape.num_kv_heads,
          shape.head_dim);
    }
    if (!caches.insert(in.cache).second)
      fail("forward: sequence {} shares its KV cache with another sequence", s);
    const std::int64_t length = in.cache->length();
    for (int l = 0; l < shape.num_layers; ++l) {
      if (in.cache->keys(l).rows() != length || in.cache->values(l).rows() != length) {
        fail("forward: sequence {}: KV cache layers hold different token counts (interrupted forward?)", s);
      }
    }
    for (std::size_t i = 0; i < in.tokens.size(); ++i) {
      const std::int32_t t = in.tokens[i];
      if (t < 0 || t >= vocab)
        fail("forward: sequence {} token {} is {}, outside the vocabulary [0, {})", s, i, t, vocab);
    }
    row_offset.push_back(total);
    start.push_back(length);
    total += static_cast<std::int64_t>(in.tokens.size());
  }
  for (int i = 0; i < num_layers(); ++i) {
    const DecoderLayer& l = layers_[static_cast<std::size_t>(i)];
    check_kv_center(l.key_center, kv_dim, i, "key");
    check_kv_center(l.value_center, kv_dim, i, "value");
    check_op(*l.q_proj, q_dim, hidden, i, "q_proj");
    check_op(*l.k_proj, kv_dim, hidden, i, "k_proj");
    check_op(*l.v_proj, kv_dim, hidden, i, "v_proj");
    check_op(*l.o_proj, hidden, q_dim, i, "o_proj");
    check_op(*l.gate_proj, inter, hidden, i, "gate_proj");
    check_op(*l.up_proj, inter, hidden, i, "up_proj");
    check_op(*l.down_proj, hidden, inter, i, "down_proj");
    ATOM_CHECK(l.attn_perm.empty() || static_cast<std::int64_t>(l.attn_perm.size()) == hidden);
    ATOM_CHECK(l.mlp_perm.empty() || static_cast<std::int64_t>(l.mlp_perm.size()) == hidden);
  }

  // ---- embeddings, RoPE tables
  const auto T = total;
  // Every buffer is written before it is read; kept between calls, a decode step allocates none of them.
  Workspace& w = work_;
  auto buffer = [](std::vector<float>& b, std::int64_t n) -> std::vector<float>& {
    b.resize(static_cast<std::size_t>(n));
    return b;
  };
  std::vector<float>& x = buffer(w.x, T * hidden);
  std::vector<float>& normed = buffer(w.normed, T * hidden);
  std::vector<float>& tmp = buffer(w.tmp, T * hidden);
  std::vector<float>& q = buffer(w.q, T * q_dim);
  std::vector<float>& k = buffer(w.k, T * kv_dim);
  std::vector<float>& v = buffer(w.v, T * kv_dim);
  std::vector<float>& attn = buffer(w.attn, T * q_dim);
  std::vector<float>& gate = buffer(w.gate, T * inter);
  std::vector<float>& up = buffer(w.up, T * inter);
  std::vector<std::int64_t>& positions = w.positions;
  positions.resize(static_cast<std::size_t>(T));
  for (std::size_t s = 0; s < batch.size(); ++s) {
    for (std::size_t i = 0; i < batch[s].tokens.size(); ++i) {
      const std::int64_t row = row_offset[s] + static_cast<std::int64_t>(i);
      positions[static_cast<std::size_t>(row)] = start[s] + static_cast<std::int64_t>(i);
      if (embedding_) continue;
      const float* e = embed_tokens_->data() + std::int64_t{batch[s].tokens[i]} * hidden;
      std::copy(e, e + hidden, x.begin() + row * hidden);
    }
  }
  if (embedding_) {
    w.tokens.clear();
    for (const SequenceInput& in : batch) w.tokens.insert(w.tokens.end(), in.tokens.begin(), in.tokens.end());
    embedding_(w.tokens, x.data());
  }
  const auto half = static_cast<std::int64_t>(inv_freq_.size());
  std::vector<float>& cos = buffer(w.cos, T * half);
  std::vector<float>& sin = buffer(w.sin, T * half);
  rope_cos_sin(inv_freq_, positions.data(), T, cos.data(), sin.data());

  AttentionShape attention_shape;
  attention_shape.num_heads = heads;
  attention_shape.num_kv_heads = kv_heads;
  attention_shape.head_dim = head_dim;
  attention_shape.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  attention_shape.sliding_window = config_.sliding_window;
  std::vector<AttentionJob>& jobs = w.jobs;
  jobs.assign(batch.size(), AttentionJob{});
  std::vector<std::vector<float>>& dequantized_k = w.dequantized_k;
  std::vector<std::vector<float>>& dequantized_v = w.dequantized_v;
  if (dequantized_k.size() < batch.size()) {
    dequantized_k.resize(batch.size());
    dequantized_v.resize(batch.size());
    w.quant_k.resize(batch.size());
    w.quant_v.resize(batch.size());
  }

  // A decode-sized step of a model whose ops all split through parallel_for runs with one team of threads
  // for the whole forward (parallel.h): an op then hands out work for about a spinning wait's cost,
  // whatever the OpenMP wait policy. Larger steps (prompts, the quantizer's calibration) open regions per op.
  constexpr std::int64_t kTeamMaxRows = 64;
  bool team = T <= kTeamMaxRows && !qk_transform_ && lm_head_->splits_through_parallel_for();
  for (const DecoderLayer& l : layers_) {
    for (const LinearOp* op : {l.q_proj.get(), l.k_proj.get(), l.v_proj.get(), l.o_proj.get(), l.gate_proj.get(),
                               l.up_proj.get(), l.down_proj.get()}) {
      team = team && op->splits_through_parallel_for();
    }
  }
  const auto layers_and_head = [&] {
  // ---- decoder layers
  for (int li = 0; li < num_layers(); ++li) {
    const DecoderLayer& l = layers_[static_cast<std::size_t>(li)];
    rms_norm(x.data(), T, hidden, l.input_norm.data(), config_.rms_norm_eps, l.attn_perm, normed.data());
    observe(li, "q_proj", normed.data(), T, hidden);
    observe(li, "k_proj", normed.data(), T, hidden);
    observe(li, "v_proj", normed.data(), T, hidden);
    {
      const LinearOp* ops[] = {l.q_proj.get(), l.k_proj.get(), l.v_proj.get()};
      float* outs[] = {q.data(), k.data(), v.data()};
      forward_shared_input(ops, normed.data(), T, outs);  // quantized ops: one activation quantization
    }
    apply_rope(q.data(), T, q_dim, heads, head_dim, cos.data(), sin.data());
    apply_rope(k.data(), T, kv_dim, kv_heads, head_dim, cos.data(), sin.data());
    if (qk_transform_) {  // the online Q/K rotation: scores unchanged, the cache holds rotated keys
      qk_transform_(q.data(), T * heads);
      qk_transform_(k.data(), T * kv_heads);
    }
    // KV centering: the cache holds k - c_k and v - c_v (c_v is added back to the attention output below).
    if (!l.key_center.empty()) add_row_vector(k.data(), T, l.key_center, -1.0f);
    if (!l.value_center.empty()) add_row_vector(v.data(), T, l.value_center, -1.0f);

    for (std::size_t s = 0; s < batch.size(); ++s) {
      KvCache& cache = *batch[s].cache;
      const auto n = static_cast<std::int64_t>(batch[s].tokens.size());
      KvRowStore& ks = cache.keys(li);
      KvRowStore& vs = cache.values(li);
      ks.append(k.data() + row_offset[s] * kv_dim, n);
      vs.append(v.data() + row_offset[s] * kv_dim, n);
      AttentionJob& job = jobs[s];
      job.q = q.data() + row_offset[s] * q_dim;
      job.out = attn.data() + row_offset[s] * q_dim;
      job.n = n;
      job.start = start[s];
      const std::int64_t keys = start[s] + n;
      // Attention sees what the cache holds, the new tokens included: quantized rows are read in place, or,
      // for a long prompt's sgemm blocks, dequantized whole.
      job.k = job.v = nullptr;
      job.quant_k = job.quant_v = nullptr;
      if (attention_reads_codes(n) && !ks.f32_rows() && ks.quantized_rows(w.quant_k[s]) &&
          vs.quantized_rows(w.quant_v[s]) && w.quant_k[s].bits == w.quant_v[s].bits) {
        job.quant_k = &w.quant_k[s];
        job.quant_v = &w.quant_v[s];
        continue;
      }
      for (auto [store, scratch, ptr] :
           {std::tuple{&ks, &dequantized_k[s], &job.k}, std::tuple{&vs, &dequantized_v[s], &job.v}}) {
        if (const float* direct = store->f32_rows()) {
          *ptr = direct;
        } else {
          scratch->resize(static_cast<std::size_t>(keys * kv_dim));
          store->read(0, keys, scratch->data());
          *ptr = scratch->data();
        }
      }
    }
    causal_attention(jobs, attention_shape);
    if (!l.value_center.empty()) {  // softmax weights sum to 1: sum_j p_j (v_j - c) + c = sum_j p_j v_j
      const int group = heads / kv_heads;
      for (std::int64_t r = 0; r < T; ++r) {
        for (int h = 0; h < heads; ++h) {
          float* o = attn.data() + r * q_dim + std::int64_t{h} * head_dim;
          const float* c = l.value_center.data() + std::int64_t{h / group} * head_dim;
          for (int i = 0; i < head_dim; ++i) o[i] += c[i];
        }
      }
    }

    observe(li, "o_proj", attn.data(), T, q_dim);
    l.o_proj->forward(attn.data(), T, tmp.data());
    add_in_place(x.data(), tmp.data(), T * hidden);

    rms_norm(x.data(), T, hidden, l.post_attention_norm.data(), config_.rms_norm_eps, l.mlp_perm,
             normed.data());
    observe(li, "gate_proj", normed.data(), T, hidden);
    observe(li, "up_proj", normed.data(), T, hidden);
    {
      const LinearOp* ops[] = {l.gate_proj.get(), l.up_proj.get()};
      float* outs[] = {gate.data(), up.data()};
      forward_shared_input(ops, normed.data(), T, outs);
    }
    silu_mul(gate.data(), up.data(), T * inter, gate.data());
    observe(li, "down_proj", gate.data(), T, inter);
    l.down_proj->forward(gate.data(), T, tmp.data());
    add_in_place(x.data(), tmp.data(), T * hidden);
  }

  // ---- final norm and lm_head on the rows whose logits are wanted, in chunks
  std::vector<std::int64_t> out_rows;
  for (std::size_t s = 0; s < batch.size(); ++s) {
    const auto n = static_cast<std::int64_t>(batch[s].tokens.size());
    if (batch[s].all_logits) {
      for (std::int64_t i = 0; i < n; ++i) out_rows.push_back(row_offset[s] + i);
    } else {
      out_rows.push_back(row_offset[s] + n - 1);
    }
  }
  const auto R = static_cast<std::int64_t>(out_rows.size());
  const std::int64_t chunk = std::min(chunk_rows, R);
  std::vector<float>& gathered = buffer(w.gathered, chunk * hidden);
  std::vector<float>& chunk_logits = buffer(w.logits, chunk * vocab);
  for (std::int64_t first = 0; first < R; first += chunk) {
    const std::int64_t rows = std::min(chunk, R - first);
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* src = x.data() + out_rows[static_cast<std::size_t>(first + r)] * hidden;
      std::copy(src, src + hidden, tmp.begin() + r * hidden);
    }
    rms_norm(tmp.data(), rows, hidden, final_norm_.data(), config_.rms_norm_eps, {}, gathered.data());
    observe(-1, "lm_head", gathered.data(), rows, hidden);
    lm_head_->forward(gathered.data(), rows, chunk_logits.data());
    sink(first, rows, chunk_logits.data());
  }
  };
  if (team) {
    run_with_forward_team(layers_and_head);
  } else {
    layers_and_head();
  }
}

LlamaModel load_llama_model(const std::string& checkpoint_path) {
  const Checkpoint checkpoint = open_checkpoint(checkpoint_path);
  return LlamaModel(load_llama_weights(checkpoint.config, *checkpoint.tensors));
}

}  // namespace atom::cpu
