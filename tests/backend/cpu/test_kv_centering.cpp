// KV centering in the CPU decoder (DecoderLayer::key_center / value_center): exact in real arithmetic, so with an
// fp32 cache the logits match the uncentered model to fp32 rounding on random inputs and random (large) centers;
// quantized stores, contiguous and paged, hold the format's codes of k - c bit for bit.
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/llama_model.h"
#include "backend/cpu/paged_kv.h"
#include "backend/cpu/quant_kv_cache.h"
#include "common/error.h"
#include "format/format.h"
#include "reference_llama.h"

namespace atom::cpu {
namespace {

ModelConfig gqa_config() {
  ModelConfig c;
  c.architecture = "llama";
  c.vocab_size = 61;
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_layers = 2;
  c.num_heads = 6;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  return c;
}

std::vector<float> random_center(std::mt19937_64& rng, const ModelConfig& c, float offset) {
  return test::random_vector(rng, static_cast<std::size_t>(c.num_kv_heads) * c.head_dim, 2.0f, offset);
}

// Prefill of `split` tokens, then the rest one token at a time: every row's logits.
std::vector<float> run(const LlamaModel& model, const std::vector<std::int32_t>& tokens, std::size_t split,
                       KvCache& cache) {
  std::vector<float> out = model.forward(std::span<const std::int32_t>(tokens).first(split), cache, true);
  for (std::size_t i = split; i < tokens.size(); ++i) {
    const auto step = model.forward(std::span<const std::int32_t>(tokens).subspan(i, 1), cache, true);
    out.insert(out.end(), step.begin(), step.end());
  }
  return out;
}

TEST(KvCentering, Fp32CacheGivesTheUncenteredLogits) {
  const ModelConfig c = gqa_config();
  const LlamaWeights w = test::random_llama_weights(c, 11);
  LlamaModel plain(w), centered(w);
  for (unsigned seed : {1u, 2u, 3u}) {
    std::mt19937_64 rng(seed);
    for (int li = 0; li < c.num_layers; ++li) {
      centered.set_kv_centers(li, random_center(rng, c, 3.0f), random_center(rng, c, -1.5f));
    }
    std::vector<std::int32_t> tokens(30);
    for (auto& t : tokens) t = static_cast<std::int32_t>(rng() % static_cast<std::uint64_t>(c.vocab_size));
    KvCache a = plain.new_cache(), b = centered.new_cache();
    const std::vector<float> want = run(plain, tokens, 17, a), got = run(centered, tokens, 17, b);
    EXPECT_LT(test::max_row_relative_error(got, want, c.vocab_size), 2e-5) << "seed " << seed;
    // The cache really holds the centered rows.
    std::vector<float> ka(static_cast<std::size_t>(a.keys(1).rows() * a.keys(1).row_width())), kb(ka.size());
    a.keys(1).read(0, a.keys(1).rows(), ka.data());
    b.keys(1).read(0, b.keys(1).rows(), kb.data());
    const std::int64_t width = a.keys(1).row_width();
    EXPECT_NEAR(ka[width + 3] - kb[width + 3], centered.layer(1).key_center[3], 1e-4);
  }
  // Keys alone (the recipe's default) as well.
  std::mt19937_64 rng(4);
  for (int li = 0; li < c.num_layers; ++li) centered.set_kv_centers(li, random_center(rng, c, 5.0f), {});
  std::vector<std::int32_t> tokens(12);
  for (auto& t : tokens) t = static_cast<std::int32_t>(rng() % static_cast<std::uint64_t>(c.vocab_size));
  KvCache a = plain.new_cache(), b = centered.new_cache();
  EXPECT_LT(test::max_row_relative_error(run(centered, tokens, 5, b), run(plain, tokens, 5, a), c.vocab_size), 2e-5);
}

// A KvRowStoreFactory over a paged pool: every store a region of its own with a shared table of scattered blocks.
struct PagedFactory {
  PagedKvPool pool;
  std::vector<std::int32_t> table;
  int next_region = 0;
  PagedFactory(KvCacheDType dtype, const ModelConfig& c, int rows)
      : pool(dtype, 2 * c.num_layers, (rows + 3) / 4 + 3, 4, std::int64_t{c.num_kv_heads} * c.head_dim, c.head_dim) {
    for (int b = (rows + 3) / 4 - 1; b >= 0; --b) table.push_back(b + 2);  // not in order, not from 0
  }
  KvRowStoreFactory factory() {
    return [this](std::int64_t, std::int64_t) {
      return std::make_unique<PagedKvRowStore>(pool, next_region++, table);
    };
  }
};

TEST(KvCentering, QuantizedStoresHoldTheCenteredRowsBitExactly) {
  const ModelConfig c = gqa_config();
  const LlamaWeights w = test::random_llama_weights(c, 21);
  std::mt19937_64 rng(22);
  LlamaModel plain(w), centered(w);
  for (int li = 0; li < c.num_layers; ++li) {
    centered.set_kv_centers(li, random_center(rng, c, 2.0f), random_center(rng, c, 0.5f));
  }
  std::vector<std::int32_t> tokens(23);
  for (auto& t : tokens) t = static_cast<std::int32_t>(rng() % static_cast<std::uint64_t>(c.vocab_size));
  const std::int64_t width = std::int64_t{c.num_kv_heads} * c.head_dim, n = static_cast<std::int64_t>(tokens.size());
  // Layer 0's k and v before centering: the uncentered model's fp32 cache (same products, same inputs).
  KvCache f32 = plain.new_cache();
  run(plain, tokens, 9, f32);
  std::vector<float> k0(static_cast<std::size_t>(n * width)), v0(k0.size());
  f32.keys(0).read(0, n, k0.data());
  f32.values(0).read(0, n, v0.data());
  for (int bits : {4, 8}) {
    SCOPED_TRACE("bits " + std::to_string(bits));
    KvCache contiguous = centered.new_cache(bits == 4 ? make_u4_kv_row_store : make_u8_kv_row_store);
    PagedFactory paged(bits == 4 ? KvCacheDType::int4 : KvCacheDType::int8, c, static_cast<int>(n));
    KvCache paged_cache = centered.new_cache(paged.factory());
    const std::vector<float> logits = run(centered, tokens, 9, contiguous);
    EXPECT_EQ(run(centered, tokens, 9, paged_cache), logits);  // same codes, same attention
    // The scalar rule on fp32(x - c), read back through the contiguous and the paged store.
    long bad = 0;
    for (auto [rows, center, which] : {std::tuple{&k0, &centered.layer(0).key_center, 0},
                                       std::tuple{&v0, &centered.layer(0).value_center, 1}}) {
      std::vector<float> want(rows->size()), got_plain(rows->size()), got_paged(rows->size());
      for (std::int64_t r = 0; r < n; ++r) {
        for (std::int64_t h = 0; h < c.num_kv_heads; ++h) {
          std::vector<float> x(static_cast<std::size_t>(c.head_dim));
          for (int i = 0; i < c.head_dim; ++i) {
            const std::size_t j = static_cast<std::size_t>(r * width + h * c.head_dim + i);
            x[static_cast<std::size_t>(i)] = (*rows)[j] - (*center)[j % static_cast<std::size_t>(width)];
          }
          std::vector<std::uint8_t> codes(x.size());
          std::uint16_t scale = 0, lo = 0;
          quant::quantize_asymmetric_group(x.data(), c.head_dim, bits, codes.data(), scale, lo);
          for (int i = 0; i < c.head_dim; ++i) {
            want[static_cast<std::size_t>(r * width + h * c.head_dim + i)] =
                quant::dequantize_asymmetric_value(codes[static_cast<std::size_t>(i)], scale, lo);
          }
          if (which == 0 && bits == 4) {  // the stored codes themselves
            const auto& store = dynamic_cast<const QuantKvRowStore&>(contiguous.keys(0));
            for (int i = 0; i < c.head_dim; i += 2) {
              const std::uint8_t packed = store.codes(r)[(h * c.head_dim + i) / 2];
              bad += packed != (codes[static_cast<std::size_t>(i)] | (codes[static_cast<std::size_t>(i) + 1] << 4));
            }
            bad += store.scales(r)[h] != scale || store.mins(r)[h] != lo;
          }
        }
      }
      const KvRowStore& plain_store = which == 0 ? contiguous.keys(0) : contiguous.values(0);
      const KvRowStore& paged_store = which == 0 ? paged_cache.keys(0) : paged_cache.values(0);
      plain_store.read(0, n, got_plain.data());
      paged_store.read(0, n, got_paged.data());
      EXPECT_EQ(got_plain, want) << (which == 0 ? "keys" : "values");
      EXPECT_EQ(got_paged, want) << (which == 0 ? "keys" : "values");
    }
    EXPECT_EQ(bad, 0) << "UINT4 codes or params differing from the scalar rule";
  }
}

TEST(KvCentering, RejectsVectorsOfTheWrongLength) {
  const ModelConfig c = gqa_config();
  LlamaModel model(test::random_llama_weights(c, 31));
  try {
    model.set_kv_centers(1, std::vector<float>(31, 0.0f), {});
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("layer 1"), std::string::npos) << what;
    EXPECT_NE(what.find("31"), std::string::npos) << what;
    EXPECT_NE(what.find("32"), std::string::npos) << what;
  }
  EXPECT_THROW(model.set_kv_centers(0, {}, std::vector<float>(33, 0.0f)), Error);
  EXPECT_THROW(model.set_kv_centers(2, {}, {}), Error);
  EXPECT_NO_THROW(model.set_kv_centers(0, std::vector<float>(32, 1.0f), {}));
}

}  // namespace
}  // namespace atom::cpu
