// fp16 elementwise kernels (elementwise.h) vs scalar references on fresh random inputs, poisoned outputs
// (padding columns must stay poisoned), odd sizes, both launch regimes (few rows: a block per row; many
// rows: a warp per row / grid-stride). rmsnorm_f16 and silu_mul_f16 are also checked bit for bit against
// the fp16 values rmsnorm_quantize / silu_mul_quantize quantize (normed_out / act_out).
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../common/device_array.cuh"
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/elementwise/elementwise.h"
#include "backend/cuda/quantize/quantize_act.h"
#include "common/half.h"

namespace atom::cuda {
namespace {

using testing::DeviceArray;
using testing::kPoison;

constexpr std::uint16_t kPoisonHalf = kPoison * 0x0101;

std::vector<std::uint16_t> random_halves(std::mt19937& rng, std::size_t n, float sigma) {
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<std::uint16_t> out(n);
  for (auto& h : out) h = fp32_to_fp16(normal(rng));
  return out;
}

std::vector<std::int32_t> random_perm(std::mt19937& rng, int n) {
  std::vector<std::int32_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  return perm;
}

// Activation-like rows: a few channels (distinct: twice would overflow fp16) 30x larger, like the outliers
// of real models.
std::vector<std::uint16_t> activation_rows(std::mt19937& rng, int m, int width, std::int64_t stride) {
  auto x = random_halves(rng, static_cast<std::size_t>(m) * stride, 1.0f);
  const auto channels = random_perm(rng, width);
  for (int i = 0; i < 8 && i < width; ++i) {
    const int c = channels[i];
    for (int r = 0; r < m; ++r) {
      auto& v = x[static_cast<std::size_t>(r) * stride + c];
      v = fp32_to_fp16(30.0f * fp16_to_fp32(v));
    }
  }
  return x;
}

std::vector<std::uint16_t> random_gamma(std::mt19937& rng, int n) {
  std::uniform_real_distribution<float> dist(0.2f, 2.0f);
  std::vector<std::uint16_t> g(n);
  for (auto& v : g) v = fp32_to_fp16(dist(rng));
  return g;
}

// |got - want| within one fp16 ulp of want (plus the fp16 subnormal step).
bool within_one_ulp(std::uint16_t got, double want) {
  const double tol = std::ldexp(std::fabs(want), -10) + std::ldexp(1.0, -24);
  return std::fabs(fp16_to_fp32(got) - want) <= tol;  // false for NaN
}

// Runs f and expects an exception whose message contains `field`.
void expect_error(const std::function<void()>& f, const std::string& field) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one naming '" << field << "'";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
  }
}

// ---- embedding_lookup

TEST(CudaElementwise, EmbeddingLookupCopiesRowsAndZeroesBadIds) {
  struct Case {
    int vocab, hidden, tokens, pad;
  };
  const Case cases[] = {
      {1003, 576, 37, 8},     // SmolLM2 width, padded output rows
      {50, 16392, 5, 0},      // 2049 chunks: a team of 8 warps, 3 passes per lane
      {300, 64, 20000, 16},   // more rows than the grid: grid-stride
      {7, 8, 3, 0},
  };
  for (const Case& c : cases) {
    const unsigned seed = std::random_device{}();
    SCOPED_TRACE("vocab=" + std::to_string(c.vocab) + " hidden=" + std::to_string(c.hidden) +
                 " tokens=" + std::to_string(c.tokens) + " seed=" + std::to_string(seed));
    std::mt19937 rng(seed);
    const auto table = random_halves(rng, static_cast<std::size_t>(c.vocab) * c.hidden, 1.0f);
    std::vector<std::int32_t> tokens(c.tokens);
    std::uniform_int_distribution<int> pick(0, c.vocab - 1);
    for (auto& t : tokens) t = pick(rng);
    const std::int32_t bad[] = {-1, c.vocab, INT_MAX, INT_MIN};
    for (int i = 0; i < 4 && i < c.tokens; ++i) tokens[(i * 7 + 1) % c.tokens] = bad[i];
    const std::int64_t stride = c.hidden + c.pad;
    DeviceArray<std::uint16_t> d_table(table), d_out(static_cast<std::size_t>(c.tokens) * stride);
    DeviceArray<std::int32_t> d_tokens(tokens);
    EmbeddingParams p;
    p.table = d_table.get();
    p.vocab = c.vocab;
    p.hidden = c.hidden;
    p.tokens = d_tokens.get();
    p.num_tokens = c.tokens;
    p.out = d_out.get();
    p.out_stride = stride;
    embedding_lookup(p, nullptr);
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());
    const auto out = d_out.download();
    long bad_rows = 0, bad_zero = 0, bad_pad = 0;
    for (int t = 0; t < c.tokens; ++t) {
      const bool valid = tokens[t] >= 0 && tokens[t] < c.vocab;
      for (int j = 0; j < c.hidden; ++j) {
        const std::uint16_t got = out[t * stride + j];
        if (valid) bad_rows += got != table[static_cast<std::size_t>(tokens[t]) * c.hidden + j];
        else bad_zero += got != 0;
      }
      for (int j = c.hidden; j < stride; ++j) bad_pad += out[t * stride + j] != kPoisonHalf;
    }
    EXPECT_EQ(bad_rows, 0) << "elements differing from the table row";
    EXPECT_EQ(bad_zero, 0) << "out-of-range ids must give zero rows";
    EXPECT_EQ(bad_pad, 0) << "elements written past hidden";
  }
}

// ---- rmsnorm_f16

struct NormCase {
  int m, hidden;
  bool residual, alias, rows, perm;
  int pad;  // extra columns in every row stride (inputs and outputs)
};

std::string describe(const NormCase& c, unsigned seed) {
  return "m=" + std::to_string(c.m) + " hidden=" + std::to_string(c.hidden) + " residual=" +
         std::to_string(c.residual) + " alias=" + std::to_string(c.alias) + " rows=" + std::to_string(c.rows) +
         " perm=" + std::to_string(c.perm) + " pad=" + std::to_string(c.pad) + " seed=" + std::to_string(seed);
}

void check_rmsnorm(const NormCase& c) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE(describe(c, seed));
  std::mt19937 rng(seed);
  const std::int64_t stride = c.hidden + c.pad;
  const int m_in = c.rows ? c.m + 5 : c.m;  // input rows
  const auto x = activation_rows(rng, m_in, c.hidden, stride);
  const auto res = random_halves(rng, static_cast<std::size_t>(m_in) * stride, 2.0f);
  const auto gamma = random_gamma(rng, c.hidden);
  const auto perm = random_perm(rng, c.hidden);
  std::vector<std::int32_t> rows(c.m);
  std::uniform_int_distribution<int> pick(0, m_in - 1);
  for (auto& r : rows) r = pick(rng);  // repeats allowed
  const float eps = 1e-5f;

  DeviceArray<std::uint16_t> d_x(x), d_res(res), d_gamma(gamma);
  DeviceArray<std::uint16_t> d_res_out(static_cast<std::size_t>(c.m) * stride), d_out(static_cast<std::size_t>(c.m) * stride);
  DeviceArray<std::int32_t> d_perm(perm), d_rows(rows);
  RmsNormParams p;
  p.num_rows = c.m;
  p.hidden = c.hidden;
  p.input = d_x.get();
  p.input_stride = stride;
  p.rows = c.rows ? d_rows.get() : nullptr;
  if (c.residual) {
    p.residual = d_res.get();
    p.residual_stride = stride;
  }
  p.residual_out = c.alias ? d_res.get() : d_res_out.get();
  p.residual_out_stride = stride;
  p.weight = d_gamma.get();
  p.eps = eps;
  p.perm = c.perm ? d_perm.get() : nullptr;
  p.out = d_out.get();
  p.out_stride = stride;
  rmsnorm_f16(p, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());

  const auto h_got = c.alias ? d_res.download() : d_res_out.download();
  const auto out = d_out.download();
  long bad_h = 0, bad_out = 0, bad_pad = 0;
  std::vector<std::uint16_t> h(c.hidden);
  for (int r = 0; r < c.m; ++r) {
    const std::int64_t i = c.rows ? rows[r] : r;
    double ss = 0;
    for (int j = 0; j < c.hidden; ++j) {
      const std::uint16_t xv = x[i * stride + j];
      h[j] = c.residual ? fp32_to_fp16(fp16_to_fp32(xv) + fp16_to_fp32(res[i * stride + j])) : xv;
      const double v = fp16_to_fp32(h[j]);
      ss += v * v;
      bad_h += h_got[r * stride + j] != h[j];
    }
    const double inv = 1.0 / std::sqrt(ss / c.hidden + eps);
    for (int j = 0; j < c.hidden; ++j) {
      const int col = c.perm ? perm[j] : j;
      bad_out += !within_one_ulp(out[r * stride + j], fp16_to_fp32(h[col]) * inv * fp16_to_fp32(gamma[col]));
    }
    for (int j = c.hidden; j < stride; ++j) {
      bad_pad += out[r * stride + j] != kPoisonHalf;
      if (!c.alias) bad_pad += h_got[r * stride + j] != kPoisonHalf;
    }
  }
  EXPECT_EQ(bad_h, 0) << "residual_out differs from fp16(input + residual)";
  EXPECT_EQ(bad_out, 0) << "normalized values off by more than one fp16 ulp";
  EXPECT_EQ(bad_pad, 0) << "elements written past hidden";
}

TEST(CudaElementwise, RmsNormMatchesFp64) {
  const NormCase cases[] = {
      {7, 4096, true, true, false, true, 0},       // decoder layer: residual added in place, reordered
      {33, 296, true, false, true, false, 8},      // rows gather (repeats), separate residual_out, padding
      {5000, 264, false, false, false, true, 0},   // many rows: a warp per row; residual_out = input
      {2500, 4096, true, true, false, false, 0},   // a warp per row, in place
      {3, 16384, true, false, true, true, 0},      // the widest row
      {300, 16384, true, false, false, true, 8},   // the widest row, a warp per row (192 KB of shared memory)
      {1, 8, false, false, false, false, 0},
      {65, 11008, true, false, false, false, 0},   // chunks past the last full 1024
  };
  for (const NormCase& c : cases) check_rmsnorm(c);
}

TEST(CudaElementwise, RmsNormInPlaceOutput) {
  // out == input (rows null): every row is read whole before it is written.
  const int m = 9, hidden = 1032;
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937 rng(seed);
  const auto x = activation_rows(rng, m, hidden, hidden);
  const auto gamma = random_gamma(rng, hidden);
  DeviceArray<std::uint16_t> d_x(x), d_gamma(gamma), d_ref(static_cast<std::size_t>(m) * hidden);
  RmsNormParams p;
  p.num_rows = m;
  p.hidden = hidden;
  p.input = d_x.get();
  p.input_stride = hidden;
  p.weight = d_gamma.get();
  p.out = d_ref.get();
  p.out_stride = hidden;
  rmsnorm_f16(p, nullptr);
  p.out = d_x.get();
  rmsnorm_f16(p, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(d_x.download(), d_ref.download());
}

// rmsnorm_f16's out and rmsnorm_quantize's normed_out, bit for bit, in both launch regimes of each.
TEST(CudaElementwise, RmsNormBitIdenticalToRmsNormQuantize) {
  struct Case {
    int m, hidden;
    bool perm;  // false: rmsnorm_f16 without perm, rmsnorm_quantize with the identity
  };
  const Case cases[] = {{7, 4096, true}, {2500, 4096, true}, {5, 296, false}, {3000, 264, false}, {40, 11008, true}};
  for (const Case& c : cases) {
    const unsigned seed = std::random_device{}();
    SCOPED_TRACE("m=" + std::to_string(c.m) + " hidden=" + std::to_string(c.hidden) + " perm=" +
                 std::to_string(c.perm) + " seed=" + std::to_string(seed));
    std::mt19937 rng(seed);
    const std::size_t n = static_cast<std::size_t>(c.m) * c.hidden;
    const auto x = activation_rows(rng, c.m, c.hidden, c.hidden);
    const auto res = random_halves(rng, n, 2.0f);
    const auto gamma = random_gamma(rng, c.hidden);
    std::vector<std::int32_t> perm(c.hidden);
    std::iota(perm.begin(), perm.end(), 0);
    if (c.perm) perm = random_perm(rng, c.hidden);
    const int n_out = c.hidden % 128 == 0 ? 128 : c.hidden % 128;  // the normal part a multiple of 128
    const int kn = c.hidden - n_out;
    DeviceArray<std::uint16_t> d_x(x), d_res(res), d_gamma(gamma), d_normed(n), d_out(n);
    DeviceArray<std::int32_t> d_perm(perm);
    DeviceArray<std::uint8_t> packed(static_cast<std::size_t>(c.m) * kn / 2 + 1);
    DeviceArray<std::uint16_t> scales(static_cast<std::size_t>(c.m) * kn / 128 + 1), out_scales(c.m);
    DeviceArray<std::int8_t> outliers(static_cast<std::size_t>(c.m) * n_out);

    RmsNormQuantParams q;
    q.num_tokens = c.m;
    q.layout = {c.hidden, n_out, 128, ActFormat::kInt4, 0.9f};
    q.input = d_x.get();
    q.input_stride = c.hidden;
    q.residual = d_res.get();
    q.residual_stride = c.hidden;
    q.weight = d_gamma.get();
    q.eps = 1e-6f;
    q.perm = d_perm.get();
    q.out = {packed.get(), kn / 2, scales.get(), kn / 128, 1, outliers.get(), n_out, out_scales.get(), 1};
    q.normed_out = d_normed.get();
    q.normed_stride = c.hidden;
    rmsnorm_quantize(q, nullptr);

    RmsNormParams p;
    p.num_rows = c.m;
    p.hidden = c.hidden;
    p.input = d_x.get();
    p.input_stride = c.hidden;
    p.residual = d_res.get();
    p.residual_stride = c.hidden;
    p.weight = d_gamma.get();
    p.eps = 1e-6f;
    p.perm = c.perm ? d_perm.get() : nullptr;
    p.out = d_out.get();
    p.out_stride = c.hidden;
    rmsnorm_f16(p, nullptr);
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());
    const auto a = d_normed.download(), b = d_out.download();
    long differing = 0;
    for (std::size_t i = 0; i < n; ++i) differing += a[i] != b[i];
    EXPECT_EQ(differing, 0) << "rmsnorm_f16 differs from rmsnorm_quantize's normed_out";
  }
}

// ---- silu_mul_f16

TEST(CudaElementwise, SiluMulMatchesFp64AndSiluMulQuantize) {
  struct Case {
    int m, width;
    bool halves;  // gate and up as the two halves of one [M, 2 * width] row (else separate, padded arrays)
    int pad;
  };
  const Case cases[] = {
      {7, 11008, true, 0}, {33, 296, false, 8}, {20000, 64, true, 0}, {1, 8, false, 0}, {3, 16392, false, 16},
  };
  for (const Case& c : cases) {
    const unsigned seed = std::random_device{}();
    SCOPED_TRACE("m=" + std::to_string(c.m) + " width=" + std::to_string(c.width) + " halves=" +
                 std::to_string(c.halves) + " seed=" + std::to_string(seed));
    std::mt19937 rng(seed);
    const std::int64_t in_stride = c.halves ? 2 * c.width : c.width + c.pad;
    const std::int64_t out_stride = c.width + c.pad;
    auto gate_buf = random_halves(rng, static_cast<std::size_t>(c.m) * in_stride, 3.0f);
    const auto up_buf = random_halves(rng, static_cast<std::size_t>(c.m) * in_stride, 3.0f);
    for (std::size_t i = 0; i < gate_buf.size(); i += 97) gate_buf[i] = fp32_to_fp16(i % 2 ? 12.0f : -15.0f);
    DeviceArray<std::uint16_t> d_gate(gate_buf), d_up(up_buf);
    DeviceArray<std::uint16_t> d_out(static_cast<std::size_t>(c.m) * out_stride), d_act(static_cast<std::size_t>(c.m) * c.width);
    const std::uint16_t* gate = d_gate.get();
    const std::uint16_t* up = c.halves ? d_gate.get() + c.width : d_up.get();
    const std::vector<std::uint16_t>& up_host = c.halves ? gate_buf : up_buf;
    const std::int64_t up_offset = c.halves ? c.width : 0;

    SiluMulParams p;
    p.num_tokens = c.m;
    p.width = c.width;
    p.gate = gate;
    p.gate_stride = in_stride;
    p.up = up;
    p.up_stride = in_stride;
    p.out = d_out.get();
    p.out_stride = out_stride;
    silu_mul_f16(p, nullptr);

    DeviceArray<std::uint8_t> packed(static_cast<std::size_t>(c.m) * c.width / 2);
    DeviceArray<std::uint16_t> scales(static_cast<std::size_t>(c.m) * c.width / 8);
    SiluMulQuantParams q;
    q.num_tokens = c.m;
    q.layout = {c.width, 0, 8, ActFormat::kInt4, 1.0f};
    q.gate = gate;
    q.gate_stride = in_stride;
    q.up = up;
    q.up_stride = in_stride;
    q.out.packed = packed.get();
    q.out.packed_stride = c.width / 2;
    q.out.scales = scales.get();
    q.out.scale_token_stride = c.width / 8;
    q.act_out = d_act.get();
    q.act_stride = c.width;
    silu_mul_quantize(q, nullptr);
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());

    const auto out = d_out.download(), act = d_act.download();
    long bad = 0, differing = 0, bad_pad = 0;
    for (int t = 0; t < c.m; ++t) {
      for (int j = 0; j < c.width; ++j) {
        const double g = fp16_to_fp32(gate_buf[t * in_stride + j]);
        const double u = fp16_to_fp32(up_host[t * in_stride + up_offset + j]);
        const std::uint16_t got = out[t * out_stride + j];
        bad += !within_one_ulp(got, g / (1.0 + std::exp(-g)) * u);
        differing += got != act[static_cast<std::size_t>(t) * c.width + j];
      }
      for (int j = c.width; j < out_stride; ++j) bad_pad += out[t * out_stride + j] != kPoisonHalf;
    }
    EXPECT_EQ(bad, 0) << "silu(gate) * up off by more than one fp16 ulp";
    EXPECT_EQ(differing, 0) << "silu_mul_f16 differs from silu_mul_quantize's act_out";
    EXPECT_EQ(bad_pad, 0) << "elements written past width";
  }
}

// ---- fills

float reference_uniform(std::uint64_t seed, std::uint64_t i, float lo, float hi) {
  const float u = static_cast<float>(fill_hash(seed, i) >> 40) * 0x1p-24f;
  return std::fmin(std::fmax(std::fma(hi - lo, u, lo), lo), hi);
}

// n elements at `offset` elements into a poisoned buffer (unaligned starts take the element-wise path);
// everything outside must stay poisoned.
template <class T, class Fill, class Reference>
void check_fill(std::size_t n, std::size_t offset, Fill fill, Reference reference) {
  SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(offset));
  constexpr std::size_t kGuard = 32;
  DeviceArray<T> buf(n + offset + kGuard);
  fill(buf.get() + offset);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = buf.download();
  T poison;
  std::memset(&poison, kPoison, sizeof(T));
  long bad = 0, bad_guard = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const T want = reference(i);
    bad += std::memcmp(&got[offset + i], &want, sizeof(T)) != 0;
  }
  for (std::size_t i = 0; i < offset; ++i) bad_guard += std::memcmp(&got[i], &poison, sizeof(T)) != 0;
  for (std::size_t i = offset + n; i < got.size(); ++i) bad_guard += std::memcmp(&got[i], &poison, sizeof(T)) != 0;
  EXPECT_EQ(bad, 0) << "elements differing from the scalar reference of the hash";
  EXPECT_EQ(bad_guard, 0) << "elements written outside [data, data + n)";
}

TEST(CudaElementwise, FillsFollowTheHashAnywhere) {
  const std::uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  const float lo = -0.75f, hi = 1.5f;
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{100003}}) {
    for (std::size_t offset : {0, 1, 3}) {
      check_fill<float>(n, offset, [&](float* d) { fill_uniform_f32(d, n, seed, lo, hi, nullptr); },
                        [&](std::size_t i) { return reference_uniform(seed, i, lo, hi); });
      check_fill<std::uint16_t>(n, offset, [&](std::uint16_t* d) { fill_uniform_f16(d, n, seed, lo, hi, nullptr); },
                                [&](std::size_t i) { return fp32_to_fp16(reference_uniform(seed, i, lo, hi)); });
    }
  }
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{15}, std::size_t{17}, std::size_t{1000003}}) {
    for (std::size_t offset : {0, 1, 5, 8, 13}) {
      check_fill<std::uint8_t>(n, offset, [&](std::uint8_t* d) { fill_random_bytes(d, n, seed, nullptr); },
                               [&](std::size_t i) { return static_cast<std::uint8_t>(fill_hash(seed, i / 8) >> (8 * (i % 8))); });
    }
  }
}

TEST(CudaElementwise, FillsAreDeterministicAndInRange) {
  const std::size_t n = 1 << 20;
  const std::uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  DeviceArray<float> a(n), b(n), c(n);
  fill_uniform_f32(a.get(), n, seed, -2.0f, 3.0f, nullptr);
  fill_uniform_f32(b.get(), n, seed, -2.0f, 3.0f, nullptr);
  fill_uniform_f32(c.get(), n, seed + 1, -2.0f, 3.0f, nullptr);
  DeviceArray<std::uint16_t> h(n);
  fill_uniform_f16(h.get(), n, seed, 0.25f, 0.5f, nullptr);
  DeviceArray<std::uint8_t> bytes(n), bytes2(n);
  fill_random_bytes(bytes.get(), n, seed, nullptr);
  fill_random_bytes(bytes2.get(), n, seed + 1, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  const auto va = a.download(), vb = b.download(), vc = c.download();
  EXPECT_EQ(va, vb) << "same seed, different data";
  long same = 0;
  double sum = 0;
  float mn = va[0], mx = va[0];
  for (std::size_t i = 0; i < n; ++i) {
    same += va[i] == vc[i];
    sum += va[i];
    mn = std::min(mn, va[i]);
    mx = std::max(mx, va[i]);
  }
  EXPECT_LT(same, 16) << "seed + 1 repeats the data";
  EXPECT_GE(mn, -2.0f);
  EXPECT_LE(mx, 3.0f);
  EXPECT_LT(mn, -1.99f) << "the range is not covered";
  EXPECT_GT(mx, 2.99f) << "the range is not covered";
  EXPECT_NEAR(sum / n, 0.5, 0.02);  // mean of U(-2, 3); its standard error is 0.0014
  long out_of_range = 0;
  for (std::uint16_t v : h.download()) out_of_range += !(fp16_to_fp32(v) >= 0.25f && fp16_to_fp32(v) <= 0.5f);
  EXPECT_EQ(out_of_range, 0) << "fp16 values outside [0.25, 0.5]";
  std::vector<long> histogram(256);
  const auto vbytes = bytes.download(), vbytes2 = bytes2.download();
  long same_bytes = 0;
  for (std::size_t i = 0; i < n; ++i) {
    ++histogram[vbytes[i]];
    same_bytes += vbytes[i] == vbytes2[i];
  }
  for (int v = 0; v < 256; ++v) {  // 4096 expected per value, standard deviation 64
    EXPECT_NEAR(histogram[v], 4096, 400) << "byte value " << v;
  }
  EXPECT_NEAR(same_bytes, 4096, 400) << "seed + 1 correlates with seed";
}

// ---- argument checks

TEST(CudaElementwise, RejectsBadArguments) {
  DeviceArray<std::uint16_t> buf(1 << 16);
  DeviceArray<std::int32_t> ids(256);  // token ids, and a perm of 256 channels
  std::uint16_t* b = buf.get();

  EmbeddingParams e;
  e.table = b;
  e.vocab = 16;
  e.hidden = 64;
  e.tokens = ids.get();
  e.num_tokens = 4;
  e.out = b + 2048;
  e.out_stride = 64;
  ATOM_CUDA_CHECK(cudaMemset(ids.get(), 0, 256 * sizeof(std::int32_t)));
  EXPECT_NO_THROW(embedding_lookup(e, nullptr));
  auto be = e;
  be.vocab = 0;
  expect_error([&] { embedding_lookup(be, nullptr); }, "vocab");
  be = e;
  be.hidden = 60;
  expect_error([&] { embedding_lookup(be, nullptr); }, "hidden");
  be = e;
  be.tokens = nullptr;
  expect_error([&] { embedding_lookup(be, nullptr); }, "tokens");
  be = e;
  be.out = b + 2049;
  expect_error([&] { embedding_lookup(be, nullptr); }, "out");
  be = e;
  be.out_stride = 56;
  expect_error([&] { embedding_lookup(be, nullptr); }, "out stride");
  be = e;
  be.table = b + 4;
  expect_error([&] { embedding_lookup(be, nullptr); }, "table");
  be = e;
  be.num_tokens = -1;
  expect_error([&] { embedding_lookup(be, nullptr); }, "num_tokens");

  RmsNormParams r;
  r.num_rows = 4;
  r.hidden = 256;
  r.input = b;
  r.input_stride = 256;
  r.residual = b + 4096;
  r.residual_stride = 256;
  r.residual_out = b + 4096;
  r.residual_out_stride = 256;
  r.weight = b + 8192;
  r.perm = ids.get();
  r.out = b + 16384;
  r.out_stride = 256;
  EXPECT_NO_THROW(rmsnorm_f16(r, nullptr));
  auto br = r;
  br.hidden = 16392;
  br.input_stride = br.residual_stride = br.residual_out_stride = br.out_stride = 16392;
  expect_error([&] { rmsnorm_f16(br, nullptr); }, "hidden");
  br = r;
  br.hidden = 0;
  expect_error([&] { rmsnorm_f16(br, nullptr); }, "hidden");
  br = r;
  br.perm = ids.get() + 1;
  expect_error([&] { rmsnorm_f16(br, nullptr); }, "perm");
  br = r;
  br.rows = ids.get();
  expect_error([&] { rmsnorm_f16(br, nullptr); }, "rows");
  br = r;
  br.residual_out_stride = 512;
  expect_error([&] { rmsnorm_f16(br, nullptr); }, "stride");
  br = r;
  br.eps = 0.0f;
  expect_error([&] { rmsnorm_f16(br, nullptr); }, "eps");
  br = r;
  br.weight = nullptr;
  expect_error([&] { rmsnorm_f16(br, nullptr); }, "weight");
  br = r;
  br.weight = b + 8193;
  expect_error([&] { rmsnorm_f16(br, nullptr); }, "weight");
  br = r;
  br.input = nullptr;
  expect_error([&] { rmsnorm_f16(br, nullptr); }, "input");
  br = r;
  br.out_stride = 248;
  expect_error([&] { rmsnorm_f16(br, nullptr); }, "out stride");
  br = r;
  br.residual = b + 4100;
  br.residual_out = b + 32768;
  expect_error([&] { rmsnorm_f16(br, nullptr); }, "residual");

  SiluMulParams s;
  s.num_tokens = 4;
  s.width = 128;
  s.gate = b;
  s.gate_stride = 256;
  s.up = b + 128;
  s.up_stride = 256;
  s.out = b + 4096;
  s.out_stride = 128;
  EXPECT_NO_THROW(silu_mul_f16(s, nullptr));
  auto bs = s;
  bs.width = 0;
  expect_error([&] { silu_mul_f16(bs, nullptr); }, "width");
  bs = s;
  bs.up = b + 129;
  expect_error([&] { silu_mul_f16(bs, nullptr); }, "up");
  bs = s;
  bs.gate_stride = 100;
  expect_error([&] { silu_mul_f16(bs, nullptr); }, "gate stride");
  bs = s;
  bs.out = nullptr;
  expect_error([&] { silu_mul_f16(bs, nullptr); }, "out");

  float* f = reinterpret_cast<float*>(b);
  EXPECT_NO_THROW(fill_uniform_f32(f, 0, 1, 0.0f, 1.0f, nullptr));
  EXPECT_NO_THROW(fill_random_bytes(nullptr, 0, 1, nullptr));
  expect_error([] { fill_uniform_f32(nullptr, 8, 1, 0.0f, 1.0f, nullptr); }, "data");
  expect_error([&] { fill_uniform_f32(f, 8, 1, 1.0f, 0.0f, nullptr); }, "lo > hi");
  expect_error([&] { fill_uniform_f32(f, 8, 1, 0.0f, NAN, nullptr); }, "finite");
  expect_error([&] { fill_uniform_f16(b, 8, 1, 0.0f, 70000.0f, nullptr); }, "finite");
  expect_error([&] { fill_uniform_f32(reinterpret_cast<float*>(reinterpret_cast<char*>(b) + 2), 8, 1, 0.0f, 1.0f, nullptr); },
               "aligned");
  expect_error([] { fill_random_bytes(nullptr, 3, 1, nullptr); }, "data");
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace atom::cuda
