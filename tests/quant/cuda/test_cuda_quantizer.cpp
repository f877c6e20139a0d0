// The quantizer on the GPU against the CPU quantizer (and fp64 references), on fresh random inputs: the
// calibration kernels (activation and KV fake quantization bit for bit; RMSNorm, RoPE, SiLU within fp32
// rounding), the Hessian, GPTQ (codes equal except rounding ties, counted and bounded), the calibration
// forward of a decoder layer and the clip-search error, and whole tiny models (identical outlier sets and
// permutations, nearly identical codes).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "backend/cpu/kernels.h"
#include "backend/cpu/quant_kv_cache.h"
#include "backend/cpu/quantizer_ops.h"
#include "backend/cuda/calibration/calibration_kernels.h"
#include "backend/cuda/calibration/device_context.h"
#include "common/error.h"
#include "common/half.h"
#include "quant/cpu_quantizer_backend.h"
#include "quant/cuda/cuda_gptq.h"
#include "quant/cuda/cuda_quantizer_backend.h"
#include "quant/gptq.h"
#include "quant/quantizer.h"
#include "../test_quantizer_tiny_model.h"

namespace atom::quant {
namespace {

namespace calib = cuda::calib;
using calib::DeviceContext;
using calib::StreamBuffer;

template <typename T>
StreamBuffer<T> to_device(const std::vector<T>& host, DeviceContext& ctx) {
  StreamBuffer<T> d;
  d.upload(std::span<const T>(host), ctx.stream());
  ctx.synchronize();
  return d;
}

template <typename T>
std::vector<T> to_host(const StreamBuffer<T>& d, DeviceContext& ctx) {
  std::vector<T> host(d.size());
  ATOM_CUDA_CHECK(cudaMemcpyAsync(host.data(), d.get(), d.bytes(), cudaMemcpyDeviceToHost, ctx.stream()));
  ctx.synchronize();
  return host;
}

std::vector<float> normal(std::size_t n, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<std::int32_t> shuffled(std::int64_t k, std::mt19937& rng) {
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  return perm;
}

// Rows with a few large channels, as activations have.
std::vector<float> activations(std::int64_t m, std::int64_t k, std::mt19937& rng) {
  std::vector<float> x = normal(static_cast<std::size_t>(m * k), 1.0f, rng);
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t j = 0; j < k; j += 37) x[r * k + j] *= 20.0f;
  }
  return x;
}

double max_abs(const std::vector<float>& v) {
  double m = 0.0;
  for (float x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

// max |a - b| / max |b|.
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double e = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) e = std::max(e, std::fabs(static_cast<double>(a[i]) - b[i]));
  return e / std::max(max_abs(b), 1e-30);
}

TEST(CudaCalibrationKernels, ActivationFakeQuantizationIsBitExact) {
  DeviceContext ctx;
  std::mt19937 rng(11);
  const std::int64_t m = 37, k = 320;
  struct Case { ActivationQuant act; const char* what; };
  std::vector<Case> cases;
  ActivationQuant a;
  a.format = NumberFormat::kInt4; a.group = 64; a.n_outliers = 64; a.clip = 0.9f;
  cases.push_back({a, "int4 g64 + int8 outliers"});
  a.format = NumberFormat::kFp4; a.group = 32; a.n_outliers = 32; a.clip = 1.0f;
  cases.push_back({a, "fp4 g32"});
  a.format = NumberFormat::kInt3; a.group = 288; a.n_outliers = 32; a.clip = 0.85f;
  cases.push_back({a, "int3, one group per row"});
  a.format = NumberFormat::kInt8; a.group = 320; a.n_outliers = 0; a.clip = 1.0f;
  cases.push_back({a, "int8 per token"});
  a.format = NumberFormat::kInt4; a.group = 32; a.n_outliers = 64; a.outlier_precision = OutlierPrecision::kFp16;
  cases.push_back({a, "fp16 outliers"});
  a.enabled = false;
  cases.push_back({a, "weight-only (pass-through)"});
  for (const Case& c : cases) {
    std::vector<float> x = activations(m, k, rng);
    x[5] = 0.0f;  // a zero, and a group that is all zeros
    std::fill(x.begin() + k, x.begin() + k + 64, 0.0f);
    const std::vector<std::int32_t> perm = shuffled(k, rng);
    std::vector<float> reordered(x.size()), expected(x.size());
    for (std::int64_t r = 0; r < m; ++r) {
      for (std::int64_t j = 0; j < k; ++j) reordered[r * k + j] = x[r * k + perm[j]];
    }
    fake_quantize_reordered(reordered.data(), m, k, c.act, expected.data());
    const auto d_x = to_device(x, ctx);
    const auto d_perm = to_device(perm, ctx);
    StreamBuffer<double> out64(x.size(), ctx.stream());
    StreamBuffer<float> out32(x.size(), ctx.stream());
    calib::fake_quantize_to_reordered_f64(d_x.get(), m, k, d_perm.get(), device_act_params(c.act), out64.get(), ctx.stream());
    calib::fake_quantize_to_original_f32(d_x.get(), m, k, d_perm.get(), device_act_params(c.act), out32.get(), ctx.stream());
    const std::vector<double> got64 = to_host(out64, ctx);
    const std::vector<float> got32 = to_host(out32, ctx);
    std::int64_t mismatches = 0;
    for (std::int64_t r = 0; r < m; ++r) {
      for (std::int64_t j = 0; j < k; ++j) {
        const float e = expected[r * k + j];
        mismatches += static_cast<float>(got64[r * k + j]) != e || got32[r * k + perm[j]] != e;
      }
    }
    EXPECT_EQ(mismatches, 0) << c.what;
  }
}

TEST(CudaCalibrationKernels, KvStoreRuleIsBitExact) {
  DeviceContext ctx;
  std::mt19937 rng(12);
  const std::int64_t rows = 29, heads = 3, head_dim = 64, width = heads * head_dim;
  for (int bits : {4, 8}) {
    std::vector<float> x = normal(static_cast<std::size_t>(rows * width), 2.0f, rng);
    std::fill(x.begin(), x.begin() + head_dim, 0.75f);  // a constant group: scale 0
    const auto store = bits == 4 ? cpu::make_u4_kv_row_store(width, head_dim) : cpu::make_u8_kv_row_store(width, head_dim);
    store->append(x.data(), rows);
    std::vector<float> expected(x.size());
    store->read(0, rows, expected.data());
    auto d = to_device(x, ctx);
    StreamBuffer<double> sums(2, ctx.stream());
    sums.zero();
    calib::kv_fake_quantize_rows(d.get(), rows, width, static_cast<int>(head_dim), bits, sums.get(), ctx.stream());
    EXPECT_EQ(to_host(d, ctx), expected) << bits << " bits";
    double sq = 0.0, err = 0.0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      sq += double(x[i]) * x[i];
      err += (double(x[i]) - expected[i]) * (double(x[i]) - expected[i]);
    }
    const std::vector<double> got = to_host(sums, ctx);
    EXPECT_NEAR(got[0], sq, 1e-9 * sq);
    EXPECT_NEAR(got[1], err, 1e-9 * err + 1e-12);
  }
}

TEST(CudaCalibrationKernels, NormRopeSiluAndStatisticsMatchTheCpu) {
  DeviceContext ctx;
  std::mt19937 rng(13);
  const std::int64_t rows = 50, dim = 256;
  const int heads = 4, head_dim = 64;
  const std::vector<float> x = activations(rows, dim, rng), weight = normal(dim, 1.0f, rng);
  std::vector<float> expected(x.size());
  cpu::rms_norm(x.data(), rows, dim, weight.data(), 1e-5f, {}, expected.data());
  const auto d_x = to_device(x, ctx), d_w = to_device(weight, ctx);
  StreamBuffer<float> y(x.size(), ctx.stream());
  calib::rms_norm_rows(d_x.get(), rows, dim, d_w.get(), 1e-5f, y.get(), ctx.stream());
  EXPECT_LT(relative_error(to_host(y, ctx), expected), 1e-6) << "rms_norm";

  ModelConfig c = test::tiny_config();
  c.head_dim = head_dim;
  const std::vector<float> inv = cpu::rope_inv_freq(c);
  std::vector<std::int64_t> positions(static_cast<std::size_t>(rows));
  std::iota(positions.begin(), positions.end(), std::int64_t{0});
  std::vector<float> cos(static_cast<std::size_t>(rows) * inv.size()), sin(cos.size());
  cpu::rope_cos_sin(inv, positions.data(), rows, cos.data(), sin.data());
  std::vector<float> roped = x;
  cpu::apply_rope(roped.data(), rows, dim, heads, head_dim, cos.data(), sin.data());
  auto d_roped = to_device(x, ctx);
  const auto d_cos = to_device(cos, ctx), d_sin = to_device(sin, ctx);
  calib::apply_rope_rows(d_roped.get(), rows, dim, heads, head_dim, d_cos.get(), d_sin.get(), ctx.stream());
  EXPECT_LT(relative_error(to_host(d_roped, ctx), roped), 1e-6) << "rope";

  const std::vector<float> up = normal(x.size(), 1.0f, rng);
  std::vector<float> silu(x.size());
  cpu::silu_mul(x.data(), up.data(), static_cast<std::int64_t>(x.size()), silu.data());
  const auto d_up = to_device(up, ctx);
  StreamBuffer<float> d_silu(x.size(), ctx.stream());
  calib::silu_mul(d_x.get(), d_up.get(), static_cast<std::int64_t>(x.size()), d_silu.get(), ctx.stream());
  EXPECT_LT(relative_error(to_host(d_silu, ctx), silu), 1e-5) << "silu_mul (the CPU's exp is a polynomial)";

  std::vector<double> sum_sq(dim, 0.0);
  std::vector<float> absmax(dim, 0.0f);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < dim; ++j) {
      sum_sq[j] += double(x[r * dim + j]) * x[r * dim + j];
      absmax[j] = std::max(absmax[j], std::fabs(x[r * dim + j]));
    }
  }
  StreamBuffer<double> d_sum(dim, ctx.stream());
  StreamBuffer<float> d_max(dim, ctx.stream());
  d_sum.zero();
  d_max.zero();
  calib::channel_stats_accumulate(d_x.get(), rows, dim, d_sum.get(), d_max.get(), ctx.stream());
  EXPECT_EQ(to_host(d_max, ctx), absmax);
  const std::vector<double> got = to_host(d_sum, ctx);
  for (std::int64_t j = 0; j < dim; ++j) EXPECT_NEAR(got[j], sum_sq[j], 1e-12 * sum_sq[j]) << j;
}

TEST(CudaHessianAccumulator, MatchesTheCpuAccumulator) {
  DeviceContext ctx;
  std::mt19937 rng(14);
  const std::int64_t k = 200;
  HessianAccumulator cpu_h(k);
  CudaHessianAccumulator gpu_h(ctx, k);
  for (std::int64_t m : {300, 77}) {
    const std::vector<float> x = activations(m, k, rng);
    cpu_h.add(x.data(), m);
    const auto d = to_device(x, ctx);
    gpu_h.add(d.get(), m);
    ctx.synchronize();
  }
  const std::vector<double> expected = cpu_h.hessian();
  const std::vector<double> got = to_host(gpu_h.take_hessian(), ctx);
  double scale = 0.0, err = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    scale = std::max(scale, std::fabs(expected[i]));
    err = std::max(err, std::fabs(got[i] - expected[i]));
  }
  EXPECT_LT(err / scale, 1e-6);  // both sum fp32 chunks; only the order differs
  for (std::int64_t i = 0; i < k; ++i) {
    for (std::int64_t j = 0; j < i; ++j) EXPECT_EQ(got[i * k + j], got[j * k + i]);
  }
}

// Codes of every row of q as integers (normal part, reordered order).
std::vector<std::int8_t> codes_of(const QuantizedLinearWeights& q) {
  std::vector<std::int8_t> out;
  const std::int64_t row_bytes = format_row_bytes(q.format, q.k_normal);
  for (std::int64_t r = 0; r < q.n; ++r) {
    const std::span<const std::uint8_t> row(q.packed.data() + r * row_bytes, static_cast<std::size_t>(row_bytes));
    const std::vector<std::int8_t> c = q.format == NumberFormat::kFp4
                                           ? [&] {
                                               const auto u = unpack_nibbles(row, q.k_normal);
                                               return std::vector<std::int8_t>(u.begin(), u.end());
                                             }()
                                           : normal_row_integers(row, q.k_normal, q.format);
    out.insert(out.end(), c.begin(), c.end());
  }
  return out;
}

// Rows whose codes, scales or outliers differ between a and b. A rounding tie decided differently by fp32
// summation order changes one code, and GPTQ's error feedback then carries the change along its row.
std::int64_t differing_rows(const QuantizedLinearWeights& a, const QuantizedLinearWeights& b) {
  const std::vector<std::int8_t> ca = codes_of(a), cb = codes_of(b);
  const std::int64_t groups = a.k_normal / a.group;
  std::int64_t rows = 0;
  for (std::int64_t r = 0; r < a.n; ++r) {
    bool differ = !std::equal(ca.begin() + r * a.k_normal, ca.begin() + (r + 1) * a.k_normal, cb.begin() + r * a.k_normal);
    differ = differ || !std::equal(a.scales.begin() + r * groups, a.scales.begin() + (r + 1) * groups,
                                   b.scales.begin() + r * groups);
    differ = differ || !std::equal(a.outliers.begin() + r * a.n_outliers, a.outliers.begin() + (r + 1) * a.n_outliers,
                                   b.outliers.begin() + r * a.n_outliers);
    rows += differ;
  }
  return rows;
}

// Inputs with correlated channels (x = z A + noise), so that GPTQ's error feedback matters.
std::vector<float> correlated(std::int64_t m, std::int64_t k, std::mt19937& rng) {
  const std::int64_t latent = k / 4;
  const std::vector<float> z = normal(static_cast<std::size_t>(m * latent), 1.0f, rng),
                           a = normal(static_cast<std::size_t>(latent * k), 1.0f, rng);
  std::vector<float> x = normal(static_cast<std::size_t>(m * k), 0.1f, rng);
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t l = 0; l < latent; ++l) {
      for (std::int64_t j = 0; j < k; ++j) x[r * k + j] += z[r * latent + l] * a[l * k + j];
    }
  }
  return x;
}

TEST(CudaGptq, CodesEqualTheCpuExceptTies) {
  DeviceContext ctx;
  std::mt19937 rng(15);
  struct Case { NumberFormat format; std::int64_t n, k, n_out, group, block; float clip; bool static_groups; };
  for (const Case c : {Case{NumberFormat::kInt4, 192, 512, 128, 128, 128, 0.85f, false},
                       Case{NumberFormat::kFp4, 100, 288, 32, 64, 48, 1.0f, false},
                       Case{NumberFormat::kInt3, 64, 256, 0, 32, 32, 1.0f, true},
                       Case{NumberFormat::kInt8, 80, 384, 0, 384, 128, 1.0f, false}}) {
    HessianAccumulator acc(c.k);
    const std::vector<float> x = correlated(4 * c.k, c.k, rng);
    acc.add(x.data(), 4 * c.k);
    std::vector<double> h = acc.hessian();
    const std::int64_t dead = 7;  // a channel never active: zeroed by both
    for (std::int64_t j = 0; j < c.k; ++j) h[dead * c.k + j] = h[j * c.k + dead] = 0.0;
    const std::vector<float> w = normal(static_cast<std::size_t>(c.n * c.k), 0.05f, rng);
    const std::vector<std::int32_t> perm = shuffled(c.k, rng);
    const WeightQuantSpec spec{c.format, c.group, c.n_out, c.clip};
    GptqOptions options;
    options.block = c.block;
    options.static_groups = c.static_groups;
    GptqReport cpu_report, gpu_report;
    const QuantizedLinearWeights expected = gptq_quantize(w, c.n, h, perm, spec, options, "w", &cpu_report);
    const auto d_h = to_device(h, ctx);
    const QuantizedLinearWeights got = cuda_gptq_quantize(ctx, w, c.n, d_h.get(), perm, spec, options, "w", &gpu_report);
    const std::string what = std::string(format_name(c.format)) + " k " + std::to_string(c.k);
    EXPECT_EQ(got.perm, expected.perm) << what;
    EXPECT_EQ(got.packed.size(), expected.packed.size()) << what;
    const std::int64_t rows = differing_rows(got, expected);
    std::printf("%s: %lld of %lld rows differ (rounding ties)\n", what.c_str(), static_cast<long long>(rows),
                static_cast<long long>(c.n));
    EXPECT_LE(rows, std::max<std::int64_t>(1, c.n / 50)) << what;
    EXPECT_EQ(gpu_report.dead_columns, 1) << what;
    EXPECT_EQ(gpu_report.retries, cpu_report.retries) << what;
    EXPECT_NEAR(gpu_report.loss, cpu_report.loss, 1e-3 * cpu_report.loss) << what;
  }
}

TEST(CudaGptq, IdentityHessianEqualsRtnAndBadInputIsRefused) {
  DeviceContext ctx;
  std::mt19937 rng(16);
  const std::int64_t n = 40, k = 256;
  std::vector<double> h(static_cast<std::size_t>(k * k), 0.0);
  for (std::int64_t i = 0; i < k; ++i) h[i * k + i] = 1.0;
  const auto d_h = to_device(h, ctx);
  const std::vector<float> w = normal(static_cast<std::size_t>(n * k), 1.0f, rng);
  const std::vector<std::int32_t> perm = shuffled(k, rng);
  const WeightQuantSpec spec{NumberFormat::kInt4, 64, 64, 0.9f};
  const QuantizedLinearWeights got = cuda_gptq_quantize(ctx, w, n, d_h.get(), perm, spec, {}, "w");
  const QuantizedLinearWeights rtn = rtn_quantize(w, n, perm, spec);
  EXPECT_EQ(got.packed, rtn.packed);
  EXPECT_EQ(got.scales, rtn.scales);
  EXPECT_EQ(got.outliers, rtn.outliers);
  EXPECT_EQ(got.outlier_scales, rtn.outlier_scales);
  EXPECT_THROW(cuda_gptq_quantize(ctx, w, n, d_h.get(), perm, {NumberFormat::kInt4, 48, 0, 1.0f}, {}, "w"), Error);
  EXPECT_THROW(cuda_gptq_quantize(ctx, w, n + 1, d_h.get(), perm, spec, {}, "w"), Error);
  // Far from positive definite: the damping retries run out, with the CPU's message.
  std::vector<double> bad = h;
  for (std::int64_t i = 0; i < k; ++i) bad[i * k + i] = i == 3 ? -100.0 : 1.0;
  const auto d_bad = to_device(bad, ctx);
  try {
    cuda_gptq_quantize(ctx, w, n, d_bad.get(), perm, spec, {}, "model.layers.2.mlp.down_proj");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.2.mlp.down_proj: Hessian is not positive definite"),
              std::string::npos)
        << e.what();
  }
}

// The two backends on the same tiny model and windows.
struct BackendPair {
  LlamaWeights weights;
  std::vector<std::int32_t> tokens;
  CalibrationSetup setup;
  std::unique_ptr<QuantizerBackend> cpu, gpu;
  explicit BackendPair(const QuantRecipe& recipe, bool qwen2 = false) {
    const ModelConfig c = test::tiny_config(qwen2);
    weights = test::tiny_weights(c, 21);
    tokens = test::tiny_tokens(600, 0, c.vocab_size, 9);
    setup.config = c;
    setup.recipe = recipe;
    setup.embed_tokens = weights.embed_tokens;
    setup.tokens = tokens;
    setup.window_starts = calibration_window_starts(600, recipe.calib_windows, recipe.calib_len, 0);
    setup.window_length = recipe.calib_len;
    cpu = make_cpu_quantizer_backend(setup);
    gpu = cuda_quantizer_backend()(setup);
  }
};

void expect_close_stats(const ChannelStats& got, const ChannelStats& expected, double tolerance, const char* what) {
  ASSERT_EQ(got.sum_sq.size(), expected.sum_sq.size()) << what;
  for (std::size_t j = 0; j < got.sum_sq.size(); ++j) {
    EXPECT_NEAR(got.sum_sq[j], expected.sum_sq[j], tolerance * expected.sum_sq[j]) << what << " channel " << j;
    EXPECT_NEAR(got.absmax[j], expected.absmax[j], tolerance * expected.absmax[j]) << what << " channel " << j;
  }
}

QuantizedLinear rtn_linear(const std::vector<float>& w, std::int64_t n, std::int64_t k, const QuantRecipe& recipe) {
  const std::int64_t n_out = recipe.outlier_count(k);
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.rbegin(), perm.rend(), 0);  // not the identity: the gathers matter
  QuantizedLinear l;
  l.weights = rtn_quantize(w, n, perm, {recipe.weight_format, recipe.group_for(k - n_out), n_out, recipe.w_clip});
  return l;
}

TEST(CudaQuantizerBackend, DecoderLayerForwardMatchesTheCpu) {
  for (const char* preset : {"atom-w4a4", "w8a8-smoothquant", "quarot-w4a4"}) {
    const QuantRecipe recipe = test::tiny_recipe(preset);
    BackendPair b(recipe, std::string(preset) == "w8a8-smoothquant");
    LayerWeights& l = b.weights.layers[0];
    const ModelConfig& c = b.setup.config;
    const std::int64_t h = c.hidden_size, qd = std::int64_t{c.num_heads} * c.head_dim,
                       kvd = std::int64_t{c.num_kv_heads} * c.head_dim, inter = c.intermediate_size;
    expect_close_stats(b.gpu->normed_input(l.input_norm)->channel_stats(),
                       b.cpu->normed_input(l.input_norm)->channel_stats(), 1e-5, preset);
    QuantizedLinear q = rtn_linear(l.q_proj, qd, h, recipe), k = rtn_linear(l.k_proj, kvd, h, recipe),
                    v = rtn_linear(l.v_proj, kvd, h, recipe);
    q.bias = l.q_bias;
    k.bias = l.k_bias;
    v.bias = l.v_bias;
    KvErrorStats cpu_kv, gpu_kv;
    auto cpu_in = b.cpu->attention_input(l.input_norm, {&q, "q"}, {&k, "k"}, {&v, "v"}, true, &cpu_kv, {}, {});
    auto gpu_in = b.gpu->attention_input(l.input_norm, {&q, "q"}, {&k, "k"}, {&v, "v"}, true, &gpu_kv, {}, {});
    expect_close_stats(gpu_in->channel_stats(), cpu_in->channel_stats(), 1e-4, preset);
    if (recipe.kv_bits != 16) {
      EXPECT_NEAR(gpu_kv.key_err_sq / gpu_kv.key_sq, cpu_kv.key_err_sq / cpu_kv.key_sq,
                  1e-3 * cpu_kv.key_err_sq / cpu_kv.key_sq);
    }
    const QuantizedLinear o = rtn_linear(l.o_proj, h, qd, recipe);
    cpu_in->add_projection(o, "o");
    gpu_in->add_projection(o, "o");
    expect_close_stats(b.gpu->normed_input(l.post_attention_norm)->channel_stats(),
                       b.cpu->normed_input(l.post_attention_norm)->channel_stats(), 1e-4, preset);
    const QuantizedLinear gate = rtn_linear(l.gate_proj, inter, h, recipe), up = rtn_linear(l.up_proj, inter, h, recipe);
    auto cpu_mlp = b.cpu->down_proj_input(l.post_attention_norm, {&gate, "gate"}, {&up, "up"}, false);
    auto gpu_mlp = b.gpu->down_proj_input(l.post_attention_norm, {&gate, "gate"}, {&up, "up"}, false);
    expect_close_stats(gpu_mlp->channel_stats(), cpu_mlp->channel_stats(), 1e-4, preset);

    // The clip search's error and GPTQ through each backend's moments of the same input.
    const std::int64_t n_out = recipe.outlier_count(inter);
    std::vector<std::int32_t> perm(static_cast<std::size_t>(inter));
    std::iota(perm.begin(), perm.end(), 0);
    std::reverse(perm.begin(), perm.end());
    const ActivationQuant act = activation_quant(recipe, inter - n_out, n_out);
    const auto cpu_m = cpu_mlp->moments(perm, act, true, true), gpu_m = gpu_mlp->moments(perm, act, true, true);
    const WeightQuantSpec spec{recipe.weight_format, recipe.group_for(inter - n_out), n_out, recipe.w_clip};
    const ActQuantSpec act_spec{recipe.act_format, recipe.group_for(inter - n_out), n_out, recipe.a_clip};
    const QuantizedLinearWeights cq = b.cpu->gptq(l.down_proj, h, *cpu_m, perm, spec, {}, "down", nullptr);
    const QuantizedLinearWeights gq = b.gpu->gptq(l.down_proj, h, *gpu_m, perm, spec, {}, "down", nullptr);
    EXPECT_LE(differing_rows(gq, cq), 2) << preset;
    const double cpu_mse = b.cpu->output_mse(*cpu_m, l.down_proj, cq, &act_spec);
    const double gpu_mse = b.gpu->output_mse(*gpu_m, l.down_proj, cq, &act_spec);
    EXPECT_NEAR(gpu_mse, cpu_mse, 1e-4 * cpu_mse) << preset;
  }
}

// Whole tiny models: identical channel orders, nearly identical codes, the same report.
TEST(CudaQuantizer, TinyModelsAgreeWithTheCpuQuantizer) {
  struct Case { const char* preset; bool qwen2, search_clip; };
  for (const Case c : {Case{"atom-w4a4", false, false}, Case{"atom-w4a4", true, true}, Case{"w8a8-smoothquant", false, false},
                       Case{"w4a16", false, false}, Case{"atom-fp4", true, false}, Case{"atom-rot-w4a4", false, false}}) {
    QuantRecipe recipe = test::tiny_recipe(c.preset);
    recipe.search_clip = c.search_clip;
    const ModelConfig config = test::tiny_config(c.qwen2);
    const std::vector<std::int32_t> calib = test::tiny_tokens(600, 0, config.vocab_size, 9);
    QuantizeOptions cpu_options, gpu_options;
    cpu_options.show_progress = gpu_options.show_progress = false;
    gpu_options.backend = cuda_quantizer_backend();
    QuantizeReport cpu_report, gpu_report;
    const QuantizedModel expected =
        quantize_model(model_source(test::tiny_weights(config, 5)), calib, recipe, cpu_options, &cpu_report);
    const QuantizedModel got =
        quantize_model(model_source(test::tiny_weights(config, 5)), calib, recipe, gpu_options, &gpu_report);
    const std::string what = std::string(c.preset) + (c.qwen2 ? " qwen2" : "") + (c.search_clip ? " clip search" : "");
    ASSERT_EQ(got.layers.size(), expected.layers.size());
    std::int64_t rows = 0, total_rows = 0;
    for (std::size_t i = 0; i < got.layers.size(); ++i) {
      const QuantizedLayer &g = got.layers[i], &e = expected.layers[i];
      for (const auto member : {&QuantizedLayer::q_proj, &QuantizedLayer::k_proj, &QuantizedLayer::v_proj,
                                &QuantizedLayer::o_proj, &QuantizedLayer::gate_proj, &QuantizedLayer::up_proj,
                                &QuantizedLayer::down_proj}) {
        EXPECT_EQ((g.*member).weights.perm, (e.*member).weights.perm) << what << " layer " << i;
        rows += differing_rows((g.*member).weights, (e.*member).weights);
        total_rows += (e.*member).weights.n;
      }
      EXPECT_LT(relative_error(g.input_norm, e.input_norm), 1e-5) << what;  // SmoothQuant's folded scales
    }
    std::printf("%s: %lld of %lld weight rows differ\n", what.c_str(), static_cast<long long>(rows),
                static_cast<long long>(total_rows));
    EXPECT_LE(rows, total_rows / 50) << what;
    ASSERT_EQ(gpu_report.linears.size(), cpu_report.linears.size());
    for (std::size_t i = 0; i < gpu_report.linears.size(); ++i) {
      EXPECT_EQ(gpu_report.linears[i].w_clip, cpu_report.linears[i].w_clip) << what << " " << cpu_report.linears[i].name;
    }
    ASSERT_EQ(gpu_report.inputs.size(), cpu_report.inputs.size());
    for (std::size_t i = 0; i < gpu_report.inputs.size(); ++i) {
      EXPECT_NEAR(gpu_report.inputs[i].outlier_energy, cpu_report.inputs[i].outlier_energy, 1e-4) << what;
    }
    EXPECT_NE(gpu_report.backend_status.find("GPU peak"), std::string::npos);
  }
}

}  // namespace
}  // namespace atom::quant
