// Attention reading UINT4 / UINT8 KV rows in place (plain and paged stores) against an fp64 reference over
// the dequantized rows, with an fp32 error bound derived from the inputs; same bits alone, in a batch, over
// either store and with any thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>

#include "backend/cpu/kernels.h"
#include "backend/cpu/paged_kv.h"
#include "backend/cpu/parallel.h"
#include "backend/cpu/quant_kv_cache.h"
#include "common/error.h"
#include "common/half.h"

namespace atom::cpu {
namespace {

std::vector<float> random_values(std::mt19937_64& rng, std::int64_t n, float mean, float stddev) {
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> x(static_cast<std::size_t>(n));
  for (auto& v : x) v = dist(rng);
  return x;
}

// One sequence's K and V, stored both plainly and in a paged pool (scattered blocks of 16 rows).
struct StoredSequence {
  std::int64_t rows = 0;
  std::unique_ptr<QuantKvRowStore> plain_k, plain_v;
  std::vector<std::int32_t> table;
  std::unique_ptr<PagedKvRowStore> paged_k, paged_v;
  QuantKvRows plain_k_view, plain_v_view, paged_k_view, paged_v_view;
  std::vector<float> k, v;  // dequantized, for the reference
};

constexpr int kBlockSize = 16;

std::unique_ptr<StoredSequence> store_sequence(std::mt19937_64& rng, PagedKvPool& pool, int region_pair,
                                               std::vector<std::int32_t>& free_blocks, std::int64_t rows,
                                               std::int64_t width, int head_dim, int bits, int group_size = 0) {
  auto s = std::make_unique<StoredSequence>();
  s->rows = rows;
  s->plain_k = std::make_unique<QuantKvRowStore>(width, head_dim, bits, group_size);
  s->plain_v = std::make_unique<QuantKvRowStore>(width, head_dim, bits, group_size);
  for (std::int64_t b = 0; b * kBlockSize < rows; ++b) {
    s->table.push_back(free_blocks.back());
    free_blocks.pop_back();
  }
  s->paged_k = std::make_unique<PagedKvRowStore>(pool, 2 * region_pair, s->table);
  s->paged_v = std::make_unique<PagedKvRowStore>(pool, 2 * region_pair + 1, s->table);
  const auto k = random_values(rng, rows * width, 0.3f, 2.0f), v = random_values(rng, rows * width, -0.2f, 1.0f);
  // Appended in two parts, as a prompt and then decode steps would be.
  const std::int64_t split = rows / 2;
  for (auto [store, src] : {std::pair<KvRowStore*, const float*>{s->plain_k.get(), k.data()},
                            {s->plain_v.get(), v.data()}, {s->paged_k.get(), k.data()}, {s->paged_v.get(), v.data()}}) {
    store->append(src, split);
    store->append(src + split * width, rows - split);
  }
  s->k.resize(k.size());
  s->v.resize(v.size());
  s->plain_k->read(0, rows, s->k.data());
  s->plain_v->read(0, rows, s->v.data());
  std::vector<float> paged(k.size());
  s->paged_k->read(0, rows, paged.data());
  EXPECT_EQ(paged, s->k);  // both stores hold the same codes
  EXPECT_TRUE(s->plain_k->quantized_rows(s->plain_k_view));
  EXPECT_TRUE(s->plain_v->quantized_rows(s->plain_v_view));
  EXPECT_TRUE(s->paged_k->quantized_rows(s->paged_k_view));
  EXPECT_TRUE(s->paged_v->quantized_rows(s->paged_v_view));
  EXPECT_EQ(s->paged_k_view.runs.size(), s->table.size());
  return s;
}

// fp64 attention of one query row and head over the dequantized keys / values, and the error the fp32
// kernel may make. Error model: an n-term fp32 sum is off by about sqrt(n) ulp of the sum of its terms'
// magnitudes (rounding errors add up as a random walk), taken 4 times over. The kernel's score terms are
// scale_k * (q . codes), bounded by sum |q| (|k| + |min_k|), and min_k * sum(q); a score error e moves the
// softmax weights by a factor within exp(+-2e); the values' sum adds sqrt(keys) ulp of max |v| + |min_v|.
struct RowResult {
  std::vector<double> out;
  double bound = 0.0;
};

RowResult reference_row(const float* q, const StoredSequence& s, std::int64_t pos, std::int64_t first,
                        int kv_head, int d, std::int64_t width, float scale) {
  const double ulp = std::ldexp(1.0, -23);
  std::vector<double> p;
  double mx = -1e300, max_score_err = 0.0, max_value = 0.0;
  double q_abs = 0.0, q_sum = 0.0;
  for (int i = 0; i < d; ++i) q_abs += std::fabs(q[i]), q_sum += q[i];
  const std::int64_t groups = d / s.plain_k->group_size();  // the largest minimum of the head's groups
  const auto largest_min = [&](const QuantKvRowStore& store, std::int64_t j) {
    double m = 0.0;
    for (std::int64_t k = 0; k < groups; ++k) m = std::max(m, double(std::fabs(fp16_to_fp32(store.mins(j)[kv_head * groups + k]))));
    return m;
  };
  for (std::int64_t j = first; j <= pos; ++j) {
    const double k_min = largest_min(*s.plain_k, j);
    const double v_min = largest_min(*s.plain_v, j);
    double dot = 0.0, magnitude = q_abs * k_min + std::fabs(q_sum) * k_min;
    for (int i = 0; i < d; ++i) {
      const double key = s.k[j * width + kv_head * d + i];
      dot += double(q[i]) * key;
      magnitude += std::fabs(double(q[i]) * key);
      max_value = std::max(max_value, std::fabs(double(s.v[j * width + kv_head * d + i])) + v_min);
    }
    max_score_err = std::max(max_score_err, 4.0 * std::sqrt(d + 2.0) * ulp * magnitude * scale);
    p.push_back(dot * scale);
    mx = std::max(mx, p.back());
  }
  double sum = 0.0;
  for (double& e : p) sum += (e = std::exp(e - mx));
  RowResult r;
  r.out.assign(static_cast<std::size_t>(d), 0.0);
  for (int i = 0; i < d; ++i) {
    double acc = 0.0;
    for (std::int64_t j = first; j <= pos; ++j) {
      acc += p[static_cast<std::size_t>(j - first)] / sum * s.v[j * width + kv_head * d + i];
    }
    r.out[static_cast<std::size_t>(i)] = acc;
  }
  const double keys = static_cast<double>(p.size());
  r.bound = (std::exp(2.0 * max_score_err) - 1.0) * max_value + 4.0 * (std::sqrt(keys + 2.0) + 2.0) * ulp * max_value;
  return r;
}

struct Case {
  int heads, kv_heads, d, window, bits, group_size;
};

TEST(QuantKvAttention, MatchesTheReferenceOnBothStoresOverShapesWindowsAndBatches) {
  std::mt19937_64 rng(2026);
  std::vector<Case> cases;
  for (int bits : {4, 8}) {
    for (auto [heads, kv_heads] : {std::pair{6, 2}, {8, 1}, {5, 5}, {12, 2}, {9, 3}, {8, 4}, {8, 2}}) {
      for (int d : {64, 128, 20}) {  // 20: the scalar kernel
        for (int window : {0, 7}) cases.push_back({heads, kv_heads, d, window, bits, 0});
      }
      // Several (scale, minimum) groups per head: the grouped vector kernels (32, 16 on 64; 32, 64 on 128) and
      // the scalar ones (10 on 20; 8 on 64, not a multiple of 16).
      for (auto [d, group] : {std::pair{64, 32}, {64, 16}, {128, 32}, {128, 64}, {20, 10}, {64, 8}}) {
        cases.push_back({heads, kv_heads, d, 0, bits, group});
      }
    }
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << c.heads << "/" << c.kv_heads << " heads, d " << c.d << ", window "
                                    << c.window << ", " << c.bits << " bits, group " << c.group_size);
    const std::int64_t width = std::int64_t{c.kv_heads} * c.d;
    const AttentionShape shape{c.heads, c.kv_heads, c.d, 1.0f / std::sqrt(float(c.d)), c.window};
    // (new rows, rows before): decode steps after short and long histories (a partial last block), a short
    // prompt, chunks that span several row blocks.
    const std::vector<std::pair<std::int64_t, std::int64_t>> seqs = {{1, 30}, {1, 100}, {5, 11}, {16, 0}, {20, 3}};
    PagedKvPool pool(c.bits == 4 ? KvCacheDType::int4 : KvCacheDType::int8, 2 * int(seqs.size()), 64, kBlockSize,
                     width, c.d, c.group_size);
    std::vector<std::int32_t> free_blocks(64);
    std::iota(free_blocks.begin(), free_blocks.end(), 0);
    std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
    std::vector<std::unique_ptr<StoredSequence>> stored;
    std::vector<std::vector<float>> qs, plain_outs, paged_outs;
    std::vector<AttentionJob> plain_jobs, paged_jobs;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      const auto [n, start] = seqs[i];
      stored.push_back(store_sequence(rng, pool, int(i), free_blocks, start + n, width, c.d, c.bits, c.group_size));
      qs.push_back(random_values(rng, n * c.heads * c.d, 0.0f, 2.0f));
      plain_outs.emplace_back(n * c.heads * c.d, -1.0f);
      paged_outs.emplace_back(n * c.heads * c.d, -2.0f);
    }
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      const auto [n, start] = seqs[i];
      ASSERT_TRUE(attention_reads_codes(n));
      AttentionJob job;
      job.q = qs[i].data();
      job.n = n;
      job.start = start;
      job.out = plain_outs[i].data();
      job.quant_k = &stored[i]->plain_k_view;
      job.quant_v = &stored[i]->plain_v_view;
      plain_jobs.push_back(job);
      job.out = paged_outs[i].data();
      job.quant_k = &stored[i]->paged_k_view;
      job.quant_v = &stored[i]->paged_v_view;
      paged_jobs.push_back(job);
    }
    causal_attention(plain_jobs, shape);
    causal_attention(paged_jobs, shape);
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      const StoredSequence& s = *stored[i];
      // The paged store gives the plain store's bits: the same codes, scales and order of operations.
      for (std::size_t e = 0; e < plain_outs[i].size(); ++e) {
        ASSERT_EQ(std::bit_cast<std::uint32_t>(plain_outs[i][e]), std::bit_cast<std::uint32_t>(paged_outs[i][e]))
            << "seq " << i << " element " << e;
      }
      double worst_ratio = 0.0;
      for (std::int64_t r = 0; r < seqs[i].first; ++r) {
        const std::int64_t pos = seqs[i].second + r;
        const std::int64_t first = c.window > 0 ? std::max<std::int64_t>(0, pos - c.window + 1) : 0;
        for (int h = 0; h < c.heads; ++h) {
          const int kv_head = h / (c.heads / c.kv_heads);
          const float* q = qs[i].data() + (r * c.heads + h) * c.d;
          const RowResult ref = reference_row(q, s, pos, first, kv_head, c.d, width, shape.scale);
          for (int e = 0; e < c.d; ++e) {
            const double got = plain_outs[i][static_cast<std::size_t>((r * c.heads + h) * c.d + e)];
            const double err = std::fabs(got - ref.out[static_cast<std::size_t>(e)]);
            ASSERT_LE(err, ref.bound) << "seq " << i << " row " << r << " head " << h << " element " << e;
            worst_ratio = std::max(worst_ratio, err / ref.bound);
          }
        }
      }
      EXPECT_LT(worst_ratio, 1.0);
    }
  }
}

// A row's result is the same bits alone or in a batch, and with one thread or several, in parallel regions or
// not.
TEST(QuantKvAttention, RowsAreTheSameBitsAloneInABatchAndOnAnyThreadCount) {
  std::mt19937_64 rng(7);
  const int heads = 9, kv_heads = 3, d = 64;
  const std::int64_t width = std::int64_t{kv_heads} * d;
  const AttentionShape shape{heads, kv_heads, d, 0.125f, 0};
  for (auto [bits, group] : {std::pair{4, 0}, {8, 0}, {4, 32}, {8, 16}}) {
    const std::vector<std::pair<std::int64_t, std::int64_t>> seqs = {{1, 600}, {3, 40}, {1, 17}, {1, 250}};
    PagedKvPool pool(bits == 4 ? KvCacheDType::int4 : KvCacheDType::int8, 2 * int(seqs.size()), 64, kBlockSize,
                     width, d, group);
    std::vector<std::int32_t> free_blocks(64);
    std::iota(free_blocks.begin(), free_blocks.end(), 0);
    std::vector<std::unique_ptr<StoredSequence>> stored;
    std::vector<std::vector<float>> qs;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      stored.push_back(
          store_sequence(rng, pool, int(i), free_blocks, seqs[i].first + seqs[i].second, width, d, bits, group));
      qs.push_back(random_values(rng, seqs[i].first * heads * d, 0.0f, 2.0f));
    }
    auto run = [&](const std::vector<std::size_t>& which, int threads, double region_cost_us) {
      std::vector<std::vector<float>> outs(seqs.size());
      std::vector<AttentionJob> jobs;
      for (std::size_t i : which) {
        outs[i].assign(static_cast<std::size_t>(seqs[i].first * heads * d), 0.0f);
        AttentionJob job;
        job.q = qs[i].data();
        job.out = outs[i].data();
        job.n = seqs[i].first;
        job.start = seqs[i].second;
        job.quant_k = &stored[i]->paged_k_view;
        job.quant_v = &stored[i]->paged_v_view;
        jobs.push_back(job);
      }
      const int before = omp_get_max_threads();
      omp_set_num_threads(threads);
      set_parallel_region_cost_us(region_cost_us);
      causal_attention(jobs, shape);
      set_parallel_region_cost_us(-1.0);
      omp_set_num_threads(before);
      return outs;
    };
    // Region cost 0: always a parallel region; 1e9: never.
    const auto batch = run({0, 1, 2, 3}, 2, 0.0);
    const auto batch_serial = run({0, 1, 2, 3}, 2, 1e9);
    const auto batch_one_thread = run({0, 1, 2, 3}, 1, 0.0);
    const auto batch_three_threads = run({0, 1, 2, 3}, 3, 0.0);
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      const auto alone = run({i}, 2, 0.0);
      const auto alone_serial = run({i}, 2, 1e9);
      for (std::size_t e = 0; e < alone[i].size(); ++e) {
        const auto bits_of = [](float x) { return std::bit_cast<std::uint32_t>(x); };
        ASSERT_EQ(bits_of(alone[i][e]), bits_of(batch[i][e])) << bits << " bits, seq " << i << " element " << e;
        ASSERT_EQ(bits_of(alone_serial[i][e]), bits_of(batch[i][e])) << i << " " << e;
        ASSERT_EQ(bits_of(batch_serial[i][e]), bits_of(batch[i][e])) << i << " " << e;
        ASSERT_EQ(bits_of(batch_one_thread[i][e]), bits_of(batch[i][e])) << i << " " << e;
        ASSERT_EQ(bits_of(batch_three_threads[i][e]), bits_of(batch[i][e])) << i << " " << e;
      }
    }
  }
}

// A job with neither fp32 nor quantized rows, or with K and V of different widths, is refused.
TEST(QuantKvAttention, RefusesJobsWithoutUsableRows) {
  QuantKvRowStore k4(64, 64, 4), v8(64, 64, 8);
  const std::vector<float> row(64, 0.5f);
  k4.append(row.data(), 1);
  v8.append(row.data(), 1);
  QuantKvRows kv, vv;
  ASSERT_TRUE(k4.quantized_rows(kv));
  ASSERT_TRUE(v8.quantized_rows(vv));
  std::vector<float> q(64, 1.0f), out(64);
  const AttentionShape shape{1, 1, 64, 0.125f, 0};
  AttentionJob job;
  job.q = q.data();
  job.out = out.data();
  job.n = 1;
  EXPECT_THROW(causal_attention(std::span<const AttentionJob>(&job, 1), shape), Error);
  job.quant_k = &kv;
  job.quant_v = &vv;
  EXPECT_THROW(causal_attention(std::span<const AttentionJob>(&job, 1), shape), Error);
}

}  // namespace
}  // namespace atom::cpu
