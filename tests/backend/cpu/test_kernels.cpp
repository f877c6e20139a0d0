// Kernels of the fp32 CPU decoder against scalar fp64 references on random inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "backend/cpu/kernels.h"
#include "backend/cpu/kv_cache.h"
#include "backend/cpu/linear.h"
#include "common/error.h"
#include "reference_llama.h"

namespace atom::cpu {
namespace {

using test::random_vector;

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

TEST(RmsNorm, MatchesReferenceWithAndWithoutPermutation) {
  std::mt19937_64 rng(1);
  for (int dim : {1, 37, 576}) {
    const int rows = 5;
    const float eps = 1e-5f;
    auto x = random_vector(rng, std::size_t(rows) * dim, 3.0f);
    auto w = random_vector(rng, dim, 0.5f, 1.0f);
    std::vector<std::int32_t> perm(dim);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (bool permuted : {false, true}) {
      std::vector<float> y(x.size());
      rms_norm(x.data(), rows, dim, w.data(), eps, permuted ? std::span<const std::int32_t>(perm) : std::span<const std::int32_t>(), y.data());
      std::vector<double> ref(x.size());
      for (int r = 0; r < rows; ++r) {
        double ss = 0;
        for (int i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
        const double inv = 1.0 / std::sqrt(ss / dim + eps);
        for (int j = 0; j < dim; ++j) {
          const int i = permuted ? perm[j] : j;
          ref[r * dim + j] = x[r * dim + i] * inv * w[i];
        }
      }
      double scale = 0;
      for (double v : ref) scale = std::max(scale, std::fabs(v));
      EXPECT_LE(max_abs_diff(y, ref), 1e-6 * scale) << "dim " << dim << " permuted " << permuted;
    }
  }
}

TEST(Rope, DefaultInverseFrequencies) {
  ModelConfig c;
  c.head_dim = 64;
  c.rope_theta = 100000.0f;
  const auto inv = rope_inv_freq(c);
  const auto ref = test::reference_inv_freq(c);
  ASSERT_EQ(inv.size(), 32u);
  EXPECT_EQ(inv[0], 1.0f);
  for (std::size_t i = 0; i < inv.size(); ++i) EXPECT_NEAR(inv[i], ref[i], 2e-7 * ref[i]) << i;
}

TEST(Rope, Llama3ScalingCoversAllThreeBands) {
  ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000.0f;
  c.rope_scaling = {"llama3", 8.0f, 1.0f, 4.0f, 8192};
  ModelConfig plain = c;
  plain.rope_scaling = {};
  const auto inv = rope_inv_freq(c);
  const auto base = rope_inv_freq(plain);
  const auto ref = test::reference_inv_freq(c);
  int high = 0, low = 0, medium = 0;
  for (std::size_t i = 0; i < inv.size(); ++i) {
    EXPECT_NEAR(inv[i], ref[i], 1e-6 * ref[i]) << i;
    const double wavelen = 2 * std::numbers::pi / base[i];
    if (wavelen < 2048) {
      ++high;
      EXPECT_EQ(inv[i], base[i]);
    } else if (wavelen > 8192) {
      ++low;
      EXPECT_EQ(inv[i], base[i] / 8.0f);
    } else {
      ++medium;
      EXPECT_LT(inv[i], base[i]);
      EXPECT_GT(inv[i], base[i] / 8.0f);
    }
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(medium, 0);
  c.rope_scaling.type = "yarn";
  EXPECT_THROW(rope_inv_freq(c), Error);
}

TEST(Rope, RotatesHeadsLikeRotateHalf) {
  std::mt19937_64 rng(2);
  const int heads = 3, d = 16, rows = 4, half = d / 2;
  const std::int64_t stride = heads * d + 5;  // padded rows
  ModelConfig c;
  c.head_dim = d;
  const auto inv = rope_inv_freq(c);
  std::vector<std::int64_t> pos = {0, 1, 7, 1000};
  std::vector<float> cs(rows * half), sn(rows * half);
  rope_cos_sin(inv, pos.data(), rows, cs.data(), sn.data());
  auto x = random_vector(rng, rows * stride, 1.0f);
  auto y = x;
  apply_rope(y.data(), rows, stride, heads, d, cs.data(), sn.data());
  for (int r = 0; r < rows; ++r) {
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < half; ++i) {
        const double a = double(float(pos[r]) * inv[i]);
        const double x1 = x[r * stride + h * d + i], x2 = x[r * stride + h * d + i + half];
        EXPECT_NEAR(y[r * stride + h * d + i], x1 * std::cos(a) - x2 * std::sin(a), 1e-5);
        EXPECT_NEAR(y[r * stride + h * d + i + half], x2 * std::cos(a) + x1 * std::sin(a), 1e-5);
      }
    }
    for (std::int64_t i = heads * d; i < stride; ++i) EXPECT_EQ(y[r * stride + i], x[r * stride + i]);  // padding
  }
}

TEST(Exp256, WithinTwoUlpOfExp) {
  std::vector<float> xs;
  for (float x = -100.0f; x <= 100.0f; x += 0.0137f) xs.push_back(x);
  for (float x : {0.0f, -0.0f, 1e-8f, -1e-8f, -87.3f, 88.37f, -INFINITY, INFINITY}) xs.push_back(x);
  while (xs.size() % 8) xs.push_back(0.5f);
  for (std::size_t i = 0; i < xs.size(); i += 8) {
    alignas(32) float out[8];
    _mm256_store_ps(out, exp256(_mm256_loadu_ps(&xs[i])));
    for (int j = 0; j < 8; ++j) {
      const double ref = std::exp(std::min(double(xs[i + j]), double(88.3762626647949f)));
      if (xs[i + j] < -87.33654f) {
        EXPECT_EQ(out[j], 0.0f) << xs[i + j];
      } else {
        EXPECT_NEAR(out[j], ref, 2.5e-7 * ref) << xs[i + j];
      }
    }
  }
}

TEST(SiluMul, MatchesReference) {
  std::mt19937_64 rng(3);
  const int n = 20003;  // several parallel blocks and a scalar tail
  auto g = random_vector(rng, n, 4.0f), u = random_vector(rng, n, 1.0f);
  g[0] = -100.0f;  // exp overflow side
  g[1] = 100.0f;
  g[n - 1] = -100.0f;
  std::vector<float> out(n);
  silu_mul(g.data(), u.data(), n, out.data());
  for (int i = 0; i < n; ++i) {
    const double ref = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
    EXPECT_NEAR(out[i], ref, 1e-6 * std::max(1.0, std::fabs(ref))) << i;
  }
}

// fp64 causal attention of one job.
std::vector<double> reference_attention(const AttentionJob& job, const AttentionShape& s) {
  const int d = s.head_dim, qs = s.num_heads * d, ks = s.num_kv_heads * d;
  std::vector<double> out(job.n * qs);
  for (std::int64_t r = 0; r < job.n; ++r) {
    const std::int64_t pos = job.start + r;
    const std::int64_t first = s.sliding_window > 0 ? std::max<std::int64_t>(0, pos - s.sliding_window + 1) : 0;
    for (int h = 0; h < s.num_heads; ++h) {
      const int kh = h / (s.num_heads / s.num_kv_heads);
      std::vector<double> p;
      double mx = -1e300;
      for (std::int64_t j = first; j <= pos; ++j) {
        double dot = 0;
        for (int i = 0; i < d; ++i) dot += double(job.q[r * qs + h * d + i]) * job.k[j * ks + kh * d + i];
        p.push_back(dot * s.scale);
        mx = std::max(mx, p.back());
      }
      double sum = 0;
      for (double& e : p) sum += (e = std::exp(e - mx));
      for (int i = 0; i < d; ++i) {
        double acc = 0;
        for (std::int64_t j = first; j <= pos; ++j) acc += p[j - first] / sum * job.v[j * ks + kh * d + i];
        out[r * qs + h * d + i] = acc;
      }
    }
  }
  return out;
}

TEST(Attention, MatchesReferenceOverShapesWindowsAndBatches) {
  std::mt19937_64 rng(4);
  for (int d : {8, 20, 24, 64, 128}) {
    for (int window : {0, 7}) {
      AttentionShape s{6, 2, d, 1.0f / std::sqrt(float(d)), window};
      // Sequences of a batch: a decode step after history, a prefill (sgemm path), a short chunk after history
      // (row path), a long chunk after history (sgemm blocks and a row-path tail).
      const std::vector<std::pair<std::int64_t, std::int64_t>> seqs = {{1, 30}, {37, 0}, {11, 19}, {70, 5}};  // (n, start)
      std::vector<std::vector<float>> qs, ks, vs, outs;
      std::vector<AttentionJob> jobs;
      for (auto [n, start] : seqs) {
        qs.push_back(random_vector(rng, n * s.num_heads * d, 2.0f));
        ks.push_back(random_vector(rng, (start + n) * s.num_kv_heads * d, 2.0f));
        vs.push_back(random_vector(rng, (start + n) * s.num_kv_heads * d, 1.0f));
        outs.emplace_back(n * s.num_heads * d, -1.0f);
      }
      for (std::size_t i = 0; i < seqs.size(); ++i) {
        jobs.push_back({qs[i].data(), ks[i].data(), vs[i].data(), outs[i].data(), seqs[i].first, seqs[i].second});
      }
      causal_attention(jobs, s);
      for (std::size_t i = 0; i < jobs.size(); ++i) {
        const auto ref = reference_attention(jobs[i], s);
        // Scores are fp32 dot products of magnitude up to ~300 (q, k ~ N(0, 4)): a few ulp of that, through the
        // softmax, is ~1e-6 on outputs of order 1. A masking or indexing bug is O(0.1).
        EXPECT_LE(max_abs_diff(outs[i], ref), 1e-5) << "d " << d << " window " << window << " seq " << i;
      }
    }
  }
}

TEST(DenseLinear, MatchesReferenceForVectorsAndMatrices) {
  std::mt19937_64 rng(5);
  const int out = 37, in = 53;
  auto w = std::make_shared<const std::vector<float>>(random_vector(rng, out * in, 1.0f));
  for (bool with_bias : {false, true}) {
    DenseLinear op(w, out, in, with_bias ? random_vector(rng, out, 1.0f) : std::vector<float>{});
    EXPECT_EQ(op.in_features(), in);
    EXPECT_EQ(op.out_features(), out);
    for (int m : {1, 2, 9}) {
      auto x = random_vector(rng, m * in, 1.0f);
      std::vector<float> y(m * out);
      op.forward(x.data(), m, y.data());
      std::vector<double> ref(m * out);
      for (int r = 0; r < m; ++r) {
        for (int o = 0; o < out; ++o) {
          double s = with_bias ? op.bias()[o] : 0.0;
          for (int i = 0; i < in; ++i) s += double(x[r * in + i]) * (*w)[o * in + i];
          ref[r * out + o] = s;
        }
      }
      EXPECT_LE(max_abs_diff(y, ref), 1e-5) << "m " << m << " bias " << with_bias;
    }
  }
}

TEST(KvCache, AppendReadTruncate) {
  KvCache cache({2, 3, 4});
  EXPECT_EQ(cache.length(), 0);
  EXPECT_EQ(cache.dtype(), KvDType::F32);
  EXPECT_EQ(kv_dtype_name(KvDType::F32), "f32");
  EXPECT_EQ(kv_dtype_name(KvDType::U8), "u8");
  EXPECT_EQ(kv_dtype_name(KvDType::U4), "u4");
  std::vector<float> rows(5 * 12);
  std::iota(rows.begin(), rows.end(), 0.0f);
  for (int l = 0; l < 2; ++l) {
    cache.keys(l).append(rows.data(), 2);
    cache.keys(l).append(rows.data() + 24, 3);
    cache.values(l).append(rows.data(), 5);
  }
  EXPECT_EQ(cache.length(), 5);
  std::vector<float> got(3 * 12);
  cache.keys(1).read(1, 4, got.data());
  EXPECT_TRUE(std::equal(got.begin(), got.end(), rows.begin() + 12));
  EXPECT_EQ(cache.values(0).f32_rows()[59], 59.0f);
  cache.truncate(2);
  EXPECT_EQ(cache.length(), 2);
  EXPECT_EQ(cache.values(1).rows(), 2);
  EXPECT_GE(cache.bytes(), 4u * 2 * 12 * sizeof(float));
  cache.clear();
  EXPECT_EQ(cache.length(), 0);
  EXPECT_THROW(KvCache({0, 1, 1}), Error);
  EXPECT_THROW(cache.truncate(-1), Error);
}

}  // namespace
}  // namespace atom::cpu
