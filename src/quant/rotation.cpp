#include "quant/rotation.h"

#include <fmt/format.h>

#include "common/error.h"

namespace atom::quant {

namespace {


// Every row w (width t.size()) of a row-major matrix -> M w, in fp64.
void rotate_rows(std::vector<float>& w, std::int64_t rows, const HadamardTransform& t) {
  const std::int64_t n = t.size();
  ATOM_CHECK(static_cast<std::int64_t>(w.size()) == rows * n);
  std::vector<double> d(w.begin(), w.end());
  t.apply(d.data(), rows);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(d[i]);
}

// Every column c (height t.size()) of a row-major [t.size(), cols] block starting at `first` -> M c.
void rotate_columns(float* w, std::int64_t cols, const HadamardTransform& t) {
  const std::int64_t n = t.size();
  std::vector<double> d(static_cast<std::size_t>(n * cols));
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) d[static_cast<std::size_t>(c * n + r)] = w[r * cols + c];
  }
  t.apply(d.data(), cols);
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t c = 0; c < cols; ++c)
      w[r * cols + c] = static_cast<float>(d[static_cast<std::size_t>(c * n + r)]);
  }
}

void scale_columns(std::vector<float>& w, const std::vector<float>& g) {
  const auto k = static_cast<std::int64_t>(g.size());
  const auto rows = static_cast<std::int64_t>(w.size()) / k;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < k; ++j)
      w[static_cast<std::size_t>(r * k + j)] *= g[static_cast<std::size_t>(j)];
  }
}

}  // namespace

ModelSource rotate_model_source(ModelSource source, const QuantRecipe& recipe) {
  recipe.validate();
  if (!recipe.has_offline_rotation()) return source;
  ModelSource out;
  ModelConfig c = source.config;
  const std::int64_t hidden = c.hidden_size, vocab = c.vocab_size;
  std::shared_ptr<const HadamardTransform> r1, r2, r4;
  if (recipe.rotate_residual) r1 = make_hadamard_transform(hidden, true, recipe.rotation_seed, "R1 (hidden size)");
  if (recipe.rotate_values) r2 = make_hadamard_transform(c.head_dim, true, recipe.rotation_seed + 1, "R2 (head_dim)");
  r4 = down_transform(c, recipe);

  std::vector<float> final_norm = std::move(source.final_norm);
  std::shared_ptr<const std::vector<float>> lm_head = source.lm_head;
  out.lm_head_dtype = source.lm_head_dtype;
  if (recipe.fold_norms) {
    std::vector<float> head = lm_head ? *lm_head : *source.embed_tokens;  // untie
    if (!lm_head) out.lm_head_dtype = source.embed_dtype;
    scale_columns(head, final_norm);
    std::fill(final_norm.begin(), final_norm.end(), 1.0f);
    if (r1) rotate_rows(head, vocab, *r1);
    lm_head = std::make_shared<const std::vector<float>>(std::move(head));
    c.tie_word_embeddings = false;
  }
  out.embed_tokens = source.embed_tokens;
  if (r1) {
    std::vector<float> embed = *source.embed_tokens;
    rotate_rows(embed, vocab, *r1);
    out.embed_tokens = std::make_shared<const std::vector<float>>(std::move(embed));
  }
  out.embed_dtype = source.embed_dtype;
  out.final_norm = std::move(final_norm);
  out.lm_head = lm_head;
  out.config = c;
  const bool fold = recipe.fold_norms;
  out.layer = [layer = std::move(source.layer), c, fold, r1, r2, r4](int i) {
    LayerWeights w = layer(i);
    const std::int64_t hidden = c.hidden_size, inter = c.intermediate_size, hd = c.head_dim;
    const std::int64_t q_dim = std::int64_t{c.num_heads} * hd, kv_dim = std::int64_t{c.num_kv_heads} * hd;
    if (fold) {
      for (std::vector<float>* m : {&w.q_proj, &w.k_proj, &w.v_proj}) scale_columns(*m, w.input_norm);
      for (std::vector<float>* m : {&w.gate_proj, &w.up_proj}) scale_columns(*m, w.post_attention_norm);
      std::fill(w.input_norm.begin(), w.input_norm.end(), 1.0f);
      std::fill(w.post_attention_norm.begin(), w.post_attention_norm.end(), 1.0f);
    }
    if (r1) {
      rotate_rows(w.q_proj, q_dim, *r1);
      rotate_rows(w.k_proj, kv_dim, *r1);
      rotate_rows(w.v_proj, kv_dim, *r1);
      rotate_rows(w.gate_proj, inter, *r1);
      rotate_rows(w.up_proj, inter, *r1);
      rotate_columns(w.o_proj.data(), q_dim, *r1);
      rotate_columns(w.down_proj.data(), inter, *r1);
      if (!w.o_bias.empty()) rotate_rows(w.o_bias, 1, *r1);
    }
    if (r2) {
      for (int h = 0; h < c.num_kv_heads; ++h) {
        rotate_columns(w.v_proj.data() + h * hd * hidden, hidden, *r2);
        if (!w.v_bias.empty()) {
          std::vector<float> seg(w.v_bias.begin() + h * hd, w.v_bias.begin() + (h + 1) * hd);
          rotate_rows(seg, 1, *r2);
          std::copy(seg.begin(), seg.end(), w.v_bias.begin() + h * hd);
        }
      }
      rotate_rows(w.o_proj, hidden * c.num_heads, *r2);  // every head's segment of every row
    }
    if (r4) rotate_rows(w.down_proj, hidden, *r4);
    return w;
  };
  return out;
}

LlamaWeights materialize(ModelSource source) {
  LlamaWeights w;
  w.config = source.config;
  w.embed_tokens = *source.embed_tokens;
  w.final_norm = std::move(source.final_norm);
  if (!w.config.tie_word_embeddings) {
    if (!source.lm_head) fail("model source: untied config but no lm_head");
    w.lm_head = *source.lm_head;
  }
  for (int i = 0; i < w.config.num_layers; ++i) w.layers.push_back(source.layer(i));
  return w;
}

}  // namespace atom::quant
