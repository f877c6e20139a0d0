// The fp32 decoder against the fp64 reference, and the equivalences the serving engine and the quantizer
// rely on: prefill == incremental decode == chunked prefill, batch == single sequences, permutations fused
// in the norms, swapped linear ops, pluggable KV storage, the calibration observer.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <random>

#include "backend/cpu/llama_model.h"
#include "common/error.h"
#include "common/half.h"
#include "reference_llama.h"

namespace atom::cpu {
namespace {

ModelConfig small_config(const std::string& variant) {
  ModelConfig c;
  c.architecture = "llama";
  c.vocab_size = 61;
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_layers = 2;
  c.num_heads = 6;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  if (variant == "tied") {
    c.tie_word_embeddings = true;
    c.num_kv_heads = 6;
  } else if (variant == "qwen2") {
    c.architecture = "qwen2";
    c.attention_bias = true;
    c.tie_word_embeddings = true;
    c.rope_theta = 1000000.0f;
  } else if (variant == "llama3") {
    c.rope_theta = 500000.0f;
    c.rope_scaling = {"llama3", 8.0f, 1.0f, 4.0f, 32};
  } else if (variant == "mistral") {
    c.architecture = "mistral";
    c.sliding_window = 5;
    c.head_dim = 16;  // heads * head_dim != hidden
  }
  return c;
}

std::vector<std::int32_t> random_tokens(std::mt19937_64& rng, int n, int vocab) {
  std::vector<std::int32_t> t(n);
  for (auto& x : t) x = std::int32_t(rng() % std::uint64_t(vocab));
  return t;
}

class Variants : public ::testing::TestWithParam<std::string> {};

TEST_P(Variants, PrefillMatchesFp64Reference) {
  const ModelConfig c = small_config(GetParam());
  const LlamaWeights w = test::random_llama_weights(c, 11);
  std::mt19937_64 rng(12);
  const auto tokens = random_tokens(rng, 23, c.vocab_size);
  const auto ref = test::reference_forward(w, tokens);
  LlamaModel model(w);
  KvCache cache = model.new_cache();
  const auto logits = model.forward(tokens, cache, /*all_logits=*/true);
  ASSERT_EQ(logits.size(), ref.size());
  EXPECT_LE(test::max_row_relative_error(logits, ref, c.vocab_size), 2e-6);
  EXPECT_EQ(cache.length(), 23);
}

TEST_P(Variants, IncrementalDecodeAndChunkedPrefillMatchPrefill) {
  const ModelConfig c = small_config(GetParam());
  LlamaModel model(test::random_llama_weights(c, 21));
  std::mt19937_64 rng(22);
  const auto tokens = random_tokens(rng, 17, c.vocab_size);
  KvCache full_cache = model.new_cache();
  const auto full = model.forward(tokens, full_cache, true);

  KvCache step_cache = model.new_cache();
  std::vector<float> steps;
  for (std::int32_t t : tokens) {
    const auto l = model.forward(std::span<const std::int32_t>(&t, 1), step_cache);
    steps.insert(steps.end(), l.begin(), l.end());
  }
  EXPECT_LE(test::max_row_relative_error(steps, full, c.vocab_size), 1e-6);

  KvCache chunk_cache = model.new_cache();
  std::vector<float> chunks;
  for (std::size_t b = 0; b < tokens.size(); b += 6) {
    const auto span = std::span<const std::int32_t>(tokens).subspan(b, std::min<std::size_t>(6, tokens.size() - b));
    const auto l = model.forward(span, chunk_cache, true);
    chunks.insert(chunks.end(), l.begin(), l.end());
  }
  EXPECT_LE(test::max_row_relative_error(chunks, full, c.vocab_size), 1e-6);

  // Rewinding the cache and re-running gives the same logits.
  step_cache.truncate(10);
  const auto again = model.forward(std::span<const std::int32_t>(tokens).subspan(10), step_cache, true);
  const std::vector<float> tail(full.begin() + 10 * c.vocab_size, full.end());
  EXPECT_LE(test::max_row_relative_error(again, tail, c.vocab_size), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Llama, Variants, ::testing::Values("gqa", "tied", "qwen2", "llama3", "mistral"));

TEST(LlamaModel, BatchOfMixedSequencesMatchesSingleSequences) {
  const ModelConfig c = small_config("gqa");
  LlamaModel model(test::random_llama_weights(c, 31));
  std::mt19937_64 rng(32);
  // Four sequences: history lengths and new-token counts differ; two decode one token.
  const std::vector<std::pair<int, int>> plan = {{0, 9}, {12, 1}, {5, 4}, {3, 1}};
  std::vector<std::vector<std::int32_t>> history, fresh;
  std::vector<KvCache> batch_caches, single_caches;
  for (auto [h, n] : plan) {
    history.push_back(random_tokens(rng, h, c.vocab_size));
    fresh.push_back(random_tokens(rng, n, c.vocab_size));
    batch_caches.push_back(model.new_cache());
    single_caches.push_back(model.new_cache());
    if (h > 0) {
      model.forward(history.back(), batch_caches.back());
      model.forward(history.back(), single_caches.back());
    }
  }
  std::vector<SequenceInput> batch;
  for (std::size_t i = 0; i < plan.size(); ++i) batch.push_back({fresh[i], &batch_caches[i], i == 2});
  std::vector<float> logits;
  model.forward(batch, logits);
  ASSERT_EQ(LlamaModel::logits_rows(batch), 1 + 1 + 4 + 1);
  ASSERT_EQ(logits.size(), std::size_t(7 * c.vocab_size));
  std::vector<float> expected;
  for (std::size_t i = 0; i < plan.size(); ++i) {
    const auto l = model.forward(fresh[i], single_caches[i], i == 2);
    expected.insert(expected.end(), l.begin(), l.end());
    EXPECT_EQ(batch_caches[i].length(), plan[i].first + plan[i].second);
  }
  EXPECT_LE(test::max_row_relative_error(logits, expected, c.vocab_size), 1e-6);

  // The streaming sink sees the same rows, in order, in chunks.
  for (std::size_t i = 0; i < plan.size(); ++i) batch_caches[i].truncate(plan[i].first);
  std::vector<float> streamed(logits.size(), 0.0f);
  std::int64_t next_row = 0;
  model.forward(batch, [&](std::int64_t first, std::int64_t rows, const float* chunk) {
    EXPECT_EQ(first, next_row);
    EXPECT_LE(rows, 2);
    std::copy(chunk, chunk + rows * c.vocab_size, streamed.begin() + first * c.vocab_size);
    next_row = first + rows;
  }, /*chunk_rows=*/2);
  EXPECT_EQ(next_row, 7);
  EXPECT_LE(test::max_row_relative_error(streamed, expected, c.vocab_size), 1e-6);
}

// Permuting the normed channels and the input columns of the linear layers that read them leaves the
// model unchanged: the quantizer's reorder fused into RMSNorm.
TEST(LlamaModel, PermutationsFusedIntoNormsPreserveLogits) {
  const ModelConfig c = small_config("qwen2");
  LlamaWeights w = test::random_llama_weights(c, 41);
  std::mt19937_64 rng(42);
  const auto tokens = random_tokens(rng, 11, c.vocab_size);
  LlamaModel plain(w);
  KvCache plain_cache = plain.new_cache();
  const auto expected = plain.forward(tokens, plain_cache, true);

  LlamaModel permuted(w);
  const std::int64_t H = c.hidden_size;
  auto permute_columns = [&](const LinearOp& op, const std::vector<std::int32_t>& perm) {
    const auto& dense = dynamic_cast<const DenseLinear&>(op);
    const std::int64_t out = op.out_features();
    std::vector<float> cols(out * H);
    for (std::int64_t o = 0; o < out; ++o)
      for (std::int64_t j = 0; j < H; ++j) cols[o * H + j] = dense.weight()[o * H + perm[j]];
    return std::make_unique<DenseLinear>(std::make_shared<const std::vector<float>>(std::move(cols)), out, H, dense.bias());
  };
  for (int i = 0; i < permuted.num_layers(); ++i) {
    DecoderLayer& l = permuted.layer(i);
    l.attn_perm.resize(H);
    l.mlp_perm.resize(H);
    std::iota(l.attn_perm.begin(), l.attn_perm.end(), 0);
    std::iota(l.mlp_perm.begin(), l.mlp_perm.end(), 0);
    std::shuffle(l.attn_perm.begin(), l.attn_perm.end(), rng);
    std::shuffle(l.mlp_perm.begin(), l.mlp_perm.end(), rng);
    l.q_proj = permute_columns(*l.q_proj, l.attn_perm);
    l.k_proj = permute_columns(*l.k_proj, l.attn_perm);
    l.v_proj = permute_columns(*l.v_proj, l.attn_perm);
    l.gate_proj = permute_columns(*l.gate_proj, l.mlp_perm);
    l.up_proj = permute_columns(*l.up_proj, l.mlp_perm);
  }
  KvCache cache = permuted.new_cache();
  const auto got = permuted.forward(tokens, cache, true);
  EXPECT_LE(test::max_row_relative_error(got, expected, c.vocab_size), 1e-6);

  // Permutation without matching weights changes the result (the permutation is really applied).
  permuted.layer(0).q_proj = std::make_unique<DenseLinear>(
      dynamic_cast<const DenseLinear&>(*plain.layer(0).q_proj).shared_weight(), c.num_heads * c.head_dim, H,
      dynamic_cast<const DenseLinear&>(*plain.layer(0).q_proj).bias());
  cache.clear();
  EXPECT_GT(test::max_row_relative_error(permuted.forward(tokens, cache, true), expected, c.vocab_size), 1e-3);
}

// A linear op standing in for a quantized one: counts calls, forwards to a dense op.
class CountingLinear final : public LinearOp {
 public:
  CountingLinear(std::unique_ptr<LinearOp> inner, int* calls) : inner_(std::move(inner)), calls_(calls) {}
  std::int64_t in_features() const override { return inner_->in_features(); }
  std::int64_t out_features() const override { return inner_->out_features(); }
  void forward(const float* x, std::int64_t m, float* y) const override {
    ++*calls_;
    inner_->forward(x, m, y);
  }
  std::string describe() const override { return "counting " + inner_->describe(); }

 private:
  std::unique_ptr<LinearOp> inner_;
  int* calls_;
};

TEST(LlamaModel, LinearOpsCanBeSwappedAndAreShapeChecked) {
  const ModelConfig c = small_config("gqa");
  LlamaModel model(test::random_llama_weights(c, 51));
  std::mt19937_64 rng(52);
  const auto tokens = random_tokens(rng, 5, c.vocab_size);
  KvCache cache = model.new_cache();
  const auto expected = model.forward(tokens, cache);
  int calls = 0;
  model.layer(1).down_proj = std::make_unique<CountingLinear>(std::move(model.layer(1).down_proj), &calls);
  cache.clear();
  EXPECT_EQ(model.forward(tokens, cache), expected);
  EXPECT_EQ(calls, 1);
  // An op of the wrong shape is refused before anything runs.
  model.layer(0).o_proj = std::make_unique<DenseLinear>(
      std::make_shared<const std::vector<float>>(std::vector<float>(std::size_t(c.hidden_size) * 7)), c.hidden_size, 7);
  cache.clear();
  EXPECT_THROW(model.forward(tokens, cache), Error);
  EXPECT_EQ(cache.length(), 0);
}

// A KV store that does not expose fp32 rows (as the quantized ones will not): forces the read path. It
// rounds to bf16 when asked, so that its values visibly reach attention.
class TestKvStore final : public KvRowStore {
 public:
  TestKvStore(std::int64_t width, bool round) : width_(width), round_(round) {}
  KvDType dtype() const override { return KvDType::U8; }
  std::int64_t row_width() const override { return width_; }
  std::int64_t rows() const override { return std::int64_t(data_.size()) / width_; }
  void append(const float* rows, std::int64_t n) override {
    for (std::int64_t i = 0; i < n * width_; ++i) {
      float v = rows[i];
      if (round_) v = bf16_to_fp32(fp32_to_bf16(v));
      data_.push_back(v);
    }
  }
  void read(std::int64_t begin, std::int64_t end, float* out) const override {
    std::copy(data_.begin() + begin * width_, data_.begin() + end * width_, out);
  }
  void truncate(std::int64_t rows) override { data_.resize(std::min(data_.size(), std::size_t(rows * width_))); }
  std::size_t bytes() const override { return data_.size() * 4; }

 private:
  std::int64_t width_;
  bool round_;
  std::vector<float> data_;
};

TEST(LlamaModel, KvStorageIsPluggable) {
  const ModelConfig c = small_config("gqa");
  LlamaModel model(test::random_llama_weights(c, 61));
  std::mt19937_64 rng(62);
  const auto tokens = random_tokens(rng, 9, c.vocab_size);
  KvCache f32 = model.new_cache();
  const auto expected = model.forward(tokens, f32, true);
  for (bool round : {false, true}) {
    KvCache cache = model.new_cache([round](std::int64_t width, std::int64_t head_dim) {
      EXPECT_EQ(head_dim, 8);
      return std::make_unique<TestKvStore>(width, round);
    });
    EXPECT_EQ(cache.dtype(), KvDType::U8);
    std::vector<float> got = model.forward(std::span<const std::int32_t>(tokens).first(4), cache, true);
    const auto rest = model.forward(std::span<const std::int32_t>(tokens).subspan(4), cache, true);
    got.insert(got.end(), rest.begin(), rest.end());
    const double err = test::max_row_relative_error(got, expected, c.vocab_size);
    if (round) {
      EXPECT_GT(err, 1e-5);
      EXPECT_LT(err, 5e-2);
    } else {
      EXPECT_LE(err, 1e-6);
    }
  }
}

TEST(LlamaModel, ObserverSeesEveryLinearInput) {
  const ModelConfig c = small_config("gqa");
  LlamaModel model(test::random_llama_weights(c, 71));
  std::map<std::pair<int, std::string>, std::pair<std::int64_t, std::int64_t>> seen;
  std::vector<std::string> order;
  double q_input_norm = 0;
  model.set_linear_observer([&](int layer, std::string_view name, const float* x, std::int64_t m, std::int64_t k) {
    seen[{layer, std::string(name)}] = {m, k};
    if (layer == 0) order.emplace_back(name);
    if (layer == 0 && name == "q_proj")
      for (std::int64_t i = 0; i < m * k; ++i) q_input_norm += double(x[i]) * x[i];
  });
  std::mt19937_64 rng(72);
  KvCache cache = model.new_cache();
  model.forward(random_tokens(rng, 6, c.vocab_size), cache, /*all_logits=*/false);
  EXPECT_EQ(seen.size(), std::size_t(7 * c.num_layers + 1));
  const std::int64_t H = c.hidden_size, Q = c.num_heads * c.head_dim, I = c.intermediate_size;
  for (int l = 0; l < c.num_layers; ++l) {
    for (const char* n : {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}) {
      EXPECT_EQ((seen[{l, n}]), std::make_pair(std::int64_t{6}, H)) << n;
    }
    EXPECT_EQ((seen[{l, "o_proj"}]), std::make_pair(std::int64_t{6}, Q));
    EXPECT_EQ((seen[{l, "down_proj"}]), std::make_pair(std::int64_t{6}, I));
  }
  EXPECT_EQ((seen[{-1, "lm_head"}]), std::make_pair(std::int64_t{1}, H));  // only the rows whose logits are wanted
  EXPECT_EQ(order, (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}));
  EXPECT_GT(q_input_norm, 0.0);
}

TEST(LlamaModel, RejectsBadBatches) {
  const ModelConfig c = small_config("gqa");
  LlamaModel model(test::random_llama_weights(c, 81));
  KvCache cache = model.new_cache();
  const std::vector<std::int32_t> bad = {1, c.vocab_size};
  EXPECT_THROW(model.forward(bad, cache), Error);
  const std::vector<std::int32_t> negative = {-1};
  EXPECT_THROW(model.forward(negative, cache), Error);
  EXPECT_THROW(model.forward(std::span<const std::int32_t>(), cache), Error);
  const std::vector<std::int32_t> ok = {1, 2};
  std::vector<SequenceInput> shared = {{ok, &cache}, {ok, &cache}};
  std::vector<float> logits;
  EXPECT_THROW(model.forward(shared, logits), Error);
  KvCache other({c.num_layers + 1, c.num_kv_heads, c.head_dim});
  EXPECT_THROW(model.forward(ok, other), Error);
  EXPECT_EQ(cache.length(), 0);  // nothing was appended by refused calls
  model.forward(ok, cache);
  EXPECT_EQ(cache.length(), 2);
}

}  // namespace
}  // namespace atom::cpu
