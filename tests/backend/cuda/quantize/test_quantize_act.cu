// Fused activation quantizers vs the scalar reference (format/format.h): fresh random inputs, poisoned
// outputs, odd sizes. The fp16 values each kernel quantizes are checked against an fp64 computation
// (within one fp16 ulp); the codes and scales are then bit-exact against quant::quantize_activations of
// those very values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../common/device_array.cuh"
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "backend/cuda/quantize/quantize_act.h"
#include "common/half.h"
#include "format/format.h"

namespace atom::cuda {
namespace {

using testing::DeviceArray;
using testing::kPoison;

struct Case {
  int m, k, n_out, group;
  ActFormat format;
  float clip;
  bool group_major_scales;  // scales [K_n/G, M] instead of [M, K_n/G]
  int packed_pad;           // extra bytes per packed row (must stay poisoned)
  int slices = 0;           // row slices: 0 = the kernels' own choice
};

std::string describe(const Case& c, unsigned seed) {
  return "m=" + std::to_string(c.m) + " k=" + std::to_string(c.k) + " n_out=" + std::to_string(c.n_out) +
         " group=" + std::to_string(c.group) + " format=" + std::to_string(static_cast<int>(c.format)) +
         " clip=" + std::to_string(c.clip) + " slices=" + std::to_string(c.slices) + " seed=" + std::to_string(seed);
}

quant::NumberFormat to_quant(ActFormat f) {
  switch (f) {
    case ActFormat::kInt4: return quant::NumberFormat::kInt4;
    case ActFormat::kInt3: return quant::NumberFormat::kInt3;
    case ActFormat::kFp4: return quant::NumberFormat::kFp4;
  }
  return quant::NumberFormat::kInt4;
}

const std::vector<Case>& cases() {
  static const std::vector<Case> all = {
      {7, 4096, 128, 128, ActFormat::kInt4, 0.9f, false, 0},    // Llama-7B hidden
      {33, 296, 40, 128, ActFormat::kInt4, 0.9f, true, 4},      // odd: 2 groups + 40 outliers
      {5, 512, 0, 64, ActFormat::kInt3, 1.0f, false, 0},        // no outliers
      {3, 264, 264, 128, ActFormat::kInt4, 0.9f, false, 0},     // outliers only
      {2500, 264, 8, 256, ActFormat::kFp4, 0.95f, false, 0},    // more tokens than resident blocks:
                                                                 // a warp per token (the others: a block)
      {9, 1032, 8, 32, ActFormat::kFp4, 1.0f, true, 0},
      {8, 11008, 11008, 128, ActFormat::kInt4, 0.9f, false, 0},  // W8A8: all INT8, a block per token
      {4000, 1040, 1040, 128, ActFormat::kInt4, 0.9f, false, 0},  // W8A8, a warp per token
      // Row slices: forced counts that split the groups unevenly, the decode default, and counts that clamp
      // (to the group count; to 8, a portable cluster; to 1 in the warp-per-token mode).
      {7, 4096, 128, 128, ActFormat::kInt4, 0.9f, false, 0, 3},
      {1, 4096, 128, 128, ActFormat::kInt4, 0.9f, false, 0, 0},
      {8, 11008, 128, 128, ActFormat::kInt4, 0.9f, false, 0, 0},
      {33, 296, 40, 128, ActFormat::kInt4, 0.9f, true, 4, 2},
      {5, 512, 0, 64, ActFormat::kInt3, 1.0f, false, 0, 5},
      {9, 1032, 8, 32, ActFormat::kFp4, 1.0f, true, 0, 16},
      {3, 264, 264, 128, ActFormat::kInt4, 0.9f, false, 0, 4},
      {2500, 264, 8, 256, ActFormat::kFp4, 0.95f, false, 0, 2},
      {5, 4096, 4096, 128, ActFormat::kInt4, 0.9f, false, 0, 3},  // W8A8 rows: outliers spread, cluster max
      {2, 1040, 1000, 8, ActFormat::kInt4, 0.9f, false, 0, 6},    // mostly outliers, a few groups
  };
  return all;
}

struct Outputs {
  DeviceArray<std::uint8_t> packed;
  DeviceArray<std::uint16_t> scales;
  DeviceArray<std::int8_t> outliers;
  DeviceArray<std::uint16_t> outlier_scales;
  QuantizedActOut view;
  int k_normal, groups;

  explicit Outputs(const Case& c)
      : packed(static_cast<std::size_t>(c.m) * ((c.k - c.n_out) / 2 + c.packed_pad)),
        scales(static_cast<std::size_t>(c.m) * ((c.k - c.n_out) / c.group)),
        outliers(static_cast<std::size_t>(c.m) * c.n_out),
        outlier_scales(static_cast<std::size_t>(c.m)),
        k_normal(c.k - c.n_out),
        groups((c.k - c.n_out) / c.group) {
    view.packed = packed.get();
    view.packed_stride = k_normal / 2 + c.packed_pad;
    view.scales = scales.get();
    view.scale_token_stride = c.group_major_scales ? 1 : groups;
    view.scale_group_stride = c.group_major_scales ? c.m : 1;
    view.outliers = outliers.get();
    view.outlier_stride = c.n_out;
    view.outlier_scales = outlier_scales.get();
    view.outlier_scale_stride = 1;
  }

  // Bit-exact comparison with the reference (canonical layout inside `ref`).
  void expect_equal(const Case& c, const quant::QuantizedActivations& ref) const {
    const auto p = packed.download();
    const auto s = scales.download();
    const auto o = outliers.download();
    const auto os = outlier_scales.download();
    const int row_bytes = k_normal / 2;
    long bad_codes = 0, bad_pad = 0, bad_scales = 0, bad_outliers = 0;
    for (int m = 0; m < c.m; ++m) {
      for (int i = 0; i < row_bytes; ++i) bad_codes += p[m * view.packed_stride + i] != ref.packed[m * row_bytes + i];
      for (int i = row_bytes; i < view.packed_stride; ++i) bad_pad += p[m * view.packed_stride + i] != kPoison;
      for (int g = 0; g < groups; ++g) {
        bad_scales += s[m * view.scale_token_stride + g * view.scale_group_stride] != ref.scales[m * groups + g];
      }
      for (int i = 0; i < c.n_out; ++i) bad_outliers += o[m * c.n_out + i] != ref.outliers[m * c.n_out + i];
      if (c.n_out > 0) bad_outliers += os[m] != ref.outlier_scales[m];
    }
    EXPECT_EQ(bad_codes, 0) << "packed bytes differing from quant::quantize_activations";
    EXPECT_EQ(bad_pad, 0) << "bytes written past a packed row";
    EXPECT_EQ(bad_scales, 0) << "group scales differing";
    EXPECT_EQ(bad_outliers, 0) << "outlier codes / scales differing";
  }
};

std::vector<std::uint16_t> random_halves(std::mt19937& rng, std::size_t n, float sigma) {
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<std::uint16_t> out(n);
  for (auto& h : out) h = fp32_to_fp16(normal(rng));
  return out;
}

std::vector<float> to_float(const std::vector<std::uint16_t>& h) {
  std::vector<float> out(h.size());
  for (std::size_t i = 0; i < h.size(); ++i) out[i] = fp16_to_fp32(h[i]);
  return out;
}

// Activation-like rows: a few channels 30x larger (the outliers Atom keeps in INT8), a few zero groups.
std::vector<std::uint16_t> activation_rows(std::mt19937& rng, int m, int k) {
  auto x = random_halves(rng, static_cast<std::size_t>(m) * k, 1.0f);
  std::uniform_int_distribution<int> pick(0, k - 1);
  std::vector<int> hot(8);
  for (auto& c : hot) c = pick(rng);
  for (int r = 0; r < m; ++r) {
    for (int c : hot) x[static_cast<std::size_t>(r) * k + c] = fp32_to_fp16(30.0f * fp16_to_fp32(x[r * k + c]));
  }
  return x;
}

std::vector<std::int32_t> random_perm(std::mt19937& rng, int k) {
  std::vector<std::int32_t> perm(k);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  return perm;
}

// |got - want| within one fp16 ulp of want (plus the fp16 subnormal step).
long count_beyond_one_ulp(const std::vector<float>& got, const std::vector<double>& want) {
  long bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double tol = std::ldexp(std::fabs(want[i]), -10) + std::ldexp(1.0, -24);
    if (!(std::fabs(got[i] - want[i]) <= tol)) ++bad;
  }
  return bad;
}

std::vector<std::int32_t> identity(int k) {
  std::vector<std::int32_t> id(k);
  std::iota(id.begin(), id.end(), 0);
  return id;
}

ActQuantLayout layout_of(const Case& c) { return {c.k, c.n_out, c.group, c.format, c.clip}; }

TEST(CudaQuantizeAct, RmsNormResidualReorderQuantize) {
  for (const Case& c : cases()) {
    const unsigned seed = std::random_device{}();
    SCOPED_TRACE(describe(c, seed));
    std::mt19937 rng(seed);
    const std::size_t n = static_cast<std::size_t>(c.m) * c.k;
    const auto x = activation_rows(rng, c.m, c.k);
    const auto r = random_halves(rng, n, 2.0f);
    std::vector<std::uint16_t> gamma(c.k);
    std::uniform_real_distribution<float> gamma_dist(0.2f, 2.0f);
    for (auto& g : gamma) g = fp32_to_fp16(gamma_dist(rng));
    const auto perm = random_perm(rng, c.k);
    const float eps = 1e-5f;

    DeviceArray<std::uint16_t> d_x(x), d_r(r), d_gamma(gamma), d_normed(n);
    DeviceArray<std::int32_t> d_perm(perm);
    Outputs out(c);
    RmsNormQuantParams p;
    p.num_tokens = c.m;
    p.layout = layout_of(c);
    p.input = d_x.get();
    p.input_stride = c.k;
    p.residual = d_r.get();
    p.residual_stride = c.k;
    p.residual_out = d_r.get();  // in place, as the decoder layer does
    p.residual_out_stride = c.k;
    p.weight = d_gamma.get();
    p.eps = eps;
    p.perm = d_perm.get();
    p.out = out.view;
    p.normed_out = d_normed.get();
    p.normed_stride = c.k;
    p.slices = c.slices;
    rmsnorm_quantize(p, nullptr);
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());

    // New residual: fp16(float(x) + float(r)), exactly.
    const auto h = d_r.download();
    long bad_residual = 0;
    for (std::size_t i = 0; i < n; ++i) {
      bad_residual += h[i] != fp32_to_fp16(fp16_to_fp32(x[i]) + fp16_to_fp32(r[i]));
    }
    EXPECT_EQ(bad_residual, 0) << "residual_out differs from fp16(x + residual)";

    // Normalized, reordered values vs fp64.
    std::vector<double> want(n);
    for (int m = 0; m < c.m; ++m) {
      double ss = 0;
      for (int j = 0; j < c.k; ++j) {
        const double v = fp16_to_fp32(h[m * c.k + j]);
        ss += v * v;
      }
      const double inv = 1.0 / std::sqrt(ss / c.k + eps);
      for (int j = 0; j < c.k; ++j) {
        want[m * c.k + j] = fp16_to_fp32(h[m * c.k + perm[j]]) * inv * fp16_to_fp32(gamma[perm[j]]);
      }
    }
    const auto normed = to_float(d_normed.download());
    EXPECT_EQ(count_beyond_one_ulp(normed, want), 0) << "normed values off by more than one fp16 ulp";

    const auto ref = quant::quantize_activations(normed, c.m, identity(c.k), c.n_out, c.group, to_quant(c.format), c.clip);
    out.expect_equal(c, ref);
  }
}

TEST(CudaQuantizeAct, RmsNormWithoutResidual) {
  const Case c{17, 1024, 128, 128, ActFormat::kInt4, 0.9f, false, 0};
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE(describe(c, seed));
  std::mt19937 rng(seed);
  const std::size_t n = static_cast<std::size_t>(c.m) * c.k;
  auto x = activation_rows(rng, c.m, c.k);
  for (int j = 0; j < c.k; ++j) x[3 * c.k + j] = 0;  // an all-zero token: every scale 0, every code 0
  std::vector<std::uint16_t> gamma(c.k, fp32_to_fp16(1.0f));
  const auto perm = random_perm(rng, c.k);
  DeviceArray<std::uint16_t> d_x(x), d_gamma(gamma), d_normed(n), d_res_out(n);
  DeviceArray<std::int32_t> d_perm(perm);
  Outputs out(c);
  RmsNormQuantParams p;
  p.num_tokens = c.m;
  p.layout = layout_of(c);
  p.input = d_x.get();
  p.input_stride = c.k;
  p.residual_out = d_res_out.get();  // first layer: the residual stream starts as the input
  p.residual_out_stride = c.k;
  p.weight = d_gamma.get();
  p.eps = 1e-6f;
  p.perm = d_perm.get();
  p.out = out.view;
  p.normed_out = d_normed.get();
  p.normed_stride = c.k;
  rmsnorm_quantize(p, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(d_res_out.download(), x);
  const auto normed = to_float(d_normed.download());
  for (int j = 0; j < c.k; ++j) ASSERT_EQ(normed[3 * c.k + j], 0.0f);
  const auto ref = quant::quantize_activations(normed, c.m, identity(c.k), c.n_out, c.group, quant::NumberFormat::kInt4, c.clip);
  out.expect_equal(c, ref);
}

TEST(CudaQuantizeAct, ReorderQuantizeIsBitExact) {
  for (const Case& c : cases()) {
    const unsigned seed = std::random_device{}();
    SCOPED_TRACE(describe(c, seed));
    std::mt19937 rng(seed);
    auto x = activation_rows(rng, c.m, c.k);
    const auto perm = random_perm(rng, c.k);
    if (c.k - c.n_out >= c.group && c.m > 1) {  // one all-zero group (scale 0)
      for (int j = 0; j < c.group; ++j) x[1 * c.k + perm[j]] = 0;
    }
    DeviceArray<std::uint16_t> d_x(x);
    DeviceArray<std::int32_t> d_perm(perm);
    Outputs out(c);
    ReorderQuantParams p;
    p.num_tokens = c.m;
    p.layout = layout_of(c);
    p.input = d_x.get();
    p.input_stride = c.k;
    p.perm = d_perm.get();
    p.out = out.view;
    p.slices = c.slices;
    reorder_quantize(p, nullptr);
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());
    const auto ref = quant::quantize_activations(to_float(x), c.m, perm, c.n_out, c.group, to_quant(c.format), c.clip);
    out.expect_equal(c, ref);
  }
}

TEST(CudaQuantizeAct, SiluMulQuantize) {
  for (const Case& c : cases()) {
    const unsigned seed = std::random_device{}();
    SCOPED_TRACE(describe(c, seed));
    std::mt19937 rng(seed);
    // gate and up as the two halves of one [M, 2K] GEMM output row.
    const auto gate_up = random_halves(rng, static_cast<std::size_t>(c.m) * 2 * c.k, 3.0f);
    DeviceArray<std::uint16_t> d_gu(gate_up), d_act(static_cast<std::size_t>(c.m) * c.k);
    Outputs out(c);
    SiluMulQuantParams p;
    p.num_tokens = c.m;
    p.layout = layout_of(c);
    p.gate = d_gu.get();
    p.gate_stride = 2 * c.k;
    p.up = d_gu.get() + c.k;
    p.up_stride = 2 * c.k;
    p.out = out.view;
    p.act_out = d_act.get();
    p.act_stride = c.k;
    p.slices = c.slices;
    silu_mul_quantize(p, nullptr);
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<double> want(static_cast<std::size_t>(c.m) * c.k);
    for (int m = 0; m < c.m; ++m) {
      for (int j = 0; j < c.k; ++j) {
        const double g = fp16_to_fp32(gate_up[m * 2 * c.k + j]), u = fp16_to_fp32(gate_up[m * 2 * c.k + c.k + j]);
        want[m * c.k + j] = g / (1.0 + std::exp(-g)) * u;
      }
    }
    const auto act = to_float(d_act.download());
    EXPECT_EQ(count_beyond_one_ulp(act, want), 0) << "silu(gate)*up off by more than one fp16 ulp";
    const auto ref = quant::quantize_activations(act, c.m, identity(c.k), c.n_out, c.group, to_quant(c.format), c.clip);
    out.expect_equal(c, ref);
  }
}

// The int8 rows of the serving-size GEMM (QuantizedActOut::codes_s8): each quantizer's output must equal
// the reference codes converted into that layout (gemm_w4a4.h), byte for byte, padding zeroed.
TEST(CudaQuantizeAct, WritesTheInt8LayoutOfTheServingGemm) {
  struct S8Case {
    int m, k, n_out, slices;
  };
  for (const S8Case sc : {S8Case{7, 4096, 128, 0}, S8Case{33, 304, 48, 0}, S8Case{3, 272, 272, 0},
                          S8Case{150, 1168, 144, 0}, S8Case{4, 4096, 128, 5}, S8Case{2, 1168, 144, 8},
                          S8Case{3, 1040, 1040, 3}}) {
    const unsigned seed = std::random_device{}();
    const Case c{sc.m, sc.k, sc.n_out, 128, ActFormat::kInt4, 0.9f, true, 0, sc.slices};
    SCOPED_TRACE(describe(c, seed));
    std::mt19937 rng(seed);
    const int kn = c.k - c.n_out, groups = kn / 128, row_bytes = w4a4_s8_row_bytes(kn, c.n_out);
    DeviceArray<std::int8_t> codes(static_cast<std::size_t>(c.m) * row_bytes);
    DeviceArray<std::uint16_t> scales(static_cast<std::size_t>(c.m) * groups), oscales(c.m);
    QuantizedActOut o;
    o.codes_s8 = codes.get();
    o.codes_s8_stride = row_bytes;
    o.scales = scales.get();
    o.scale_token_stride = 1;
    o.scale_group_stride = c.m;
    o.outlier_scales = oscales.get();
    auto expect_layout = [&](const std::vector<float>& values, const std::vector<std::int32_t>& perm, const char* who) {
      SCOPED_TRACE(who);
      const auto ref = quant::quantize_activations(values, c.m, perm, c.n_out, 128, quant::NumberFormat::kInt4, c.clip);
      std::vector<std::int8_t> want_codes(static_cast<std::size_t>(c.m) * row_bytes);
      std::vector<std::uint16_t> want_scales(static_cast<std::size_t>(c.m) * groups), want_oscales(c.n_out > 0 ? c.m : 0);
      const W4A4Activations src{ref.packed.data(), ref.scales.data(), ref.outliers.data(), ref.outlier_scales.data(),
                                c.m};
      convert_w4a4_activations_s8_host(src, kn, c.n_out,
                                       W4A4ActivationsS8{want_codes.data(), want_scales.data(), want_oscales.data(), c.m});
      EXPECT_EQ(codes.download(), want_codes);
      EXPECT_EQ(scales.download(), want_scales);
      if (c.n_out > 0) EXPECT_EQ(oscales.download(), want_oscales);
    };
    auto x = activation_rows(rng, c.m, c.k);
    const auto perm = random_perm(rng, c.k);
    DeviceArray<std::uint16_t> d_x(x), gamma(random_halves(rng, c.k, 1.0f)), normed(static_cast<std::size_t>(c.m) * c.k);
    DeviceArray<std::int32_t> d_perm(perm);
    {
      ReorderQuantParams p;
      p.num_tokens = c.m;
      p.layout = layout_of(c);
      p.input = d_x.get();
      p.input_stride = c.k;
      p.perm = d_perm.get();
      p.out = o;
      p.slices = c.slices;
      reorder_quantize(p, nullptr);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      expect_layout(to_float(x), perm, "reorder_quantize");
    }
    {
      ATOM_CUDA_CHECK(cudaMemset(codes.get(), kPoison, static_cast<std::size_t>(c.m) * row_bytes));
      RmsNormQuantParams p;
      p.num_tokens = c.m;
      p.layout = layout_of(c);
      p.input = d_x.get();
      p.input_stride = c.k;
      p.weight = gamma.get();
      p.perm = d_perm.get();
      p.out = o;
      p.normed_out = normed.get();
      p.normed_stride = c.k;
      p.slices = c.slices;
      rmsnorm_quantize(p, nullptr);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      expect_layout(to_float(normed.download()), identity(c.k), "rmsnorm_quantize (normed values, reordered)");
    }
    {
      ATOM_CUDA_CHECK(cudaMemset(codes.get(), kPoison, static_cast<std::size_t>(c.m) * row_bytes));
      const auto gate_up = random_halves(rng, static_cast<std::size_t>(c.m) * 2 * c.k, 3.0f);
      DeviceArray<std::uint16_t> d_gu(gate_up), d_act(static_cast<std::size_t>(c.m) * c.k);
      SiluMulQuantParams p;
      p.num_tokens = c.m;
      p.layout = layout_of(c);
      p.gate = d_gu.get();
      p.gate_stride = 2 * c.k;
      p.up = d_gu.get() + c.k;
      p.up_stride = 2 * c.k;
      p.out = o;
      p.act_out = d_act.get();
      p.act_stride = c.k;
      p.slices = c.slices;
      silu_mul_quantize(p, nullptr);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      expect_layout(to_float(d_act.download()), identity(c.k), "silu_mul_quantize");
    }
  }
}

TEST(CudaQuantizeAct, RejectsBadLayouts) {
  DeviceArray<std::uint16_t> buf(4096);
  DeviceArray<std::int32_t> perm(identity(256));
  Case c{1, 256, 0, 128, ActFormat::kInt4, 0.9f, false, 0};
  Outputs out(c);
  ReorderQuantParams p;
  p.num_tokens = 1;
  p.layout = layout_of(c);
  p.input = buf.get();
  p.input_stride = 256;
  p.perm = perm.get();
  p.out = out.view;
  EXPECT_NO_THROW(reorder_quantize(p, nullptr));
  auto bad = p;
  bad.layout.group_size = 96;
  EXPECT_THROW(reorder_quantize(bad, nullptr), std::exception);
  bad = p;
  bad.layout.n_outliers = 8;  // 248 normal channels: not a multiple of 128
  EXPECT_THROW(reorder_quantize(bad, nullptr), std::exception);
  bad = p;
  bad.input = buf.get() + 1;  // misaligned rows
  EXPECT_THROW(reorder_quantize(bad, nullptr), std::exception);
  bad = p;
  bad.layout.clip_ratio = 0.0f;
  EXPECT_THROW(reorder_quantize(bad, nullptr), std::exception);
  bad = p;
  bad.perm = perm.get() + 1;  // read with 16-byte loads
  EXPECT_THROW(reorder_quantize(bad, nullptr), std::exception);
  bad = p;
  bad.slices = -1;
  EXPECT_THROW(reorder_quantize(bad, nullptr), std::exception);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace atom::cuda
