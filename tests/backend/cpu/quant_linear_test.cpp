// Quantized LinearOps: AtomLinear bit-exact against the format reference, WeightOnlyLinear against fp64.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <numeric>
#include <random>

#include "backend/cpu/quant_linear.h"
#include "common/error.h"

namespace atom::cpu {
namespace {

using quant::NumberFormat;

struct Data {
  std::vector<float> x, w, bias;
  std::vector<std::int32_t> perm;
};

Data make_data(std::int64_t m, std::int64_t n, std::int64_t k, unsigned seed, bool shuffle = true) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Data d;
  d.x.resize(static_cast<std::size_t>(m * k));
  d.w.resize(static_cast<std::size_t>(n * k));
  d.bias.resize(static_cast<std::size_t>(n));
  for (auto& v : d.x) v = dist(rng);
  for (auto& v : d.w) v = 0.05f * dist(rng);
  for (auto& v : d.bias) v = dist(rng);
  d.perm.resize(static_cast<std::size_t>(k));
  std::iota(d.perm.begin(), d.perm.end(), 0);
  if (shuffle) std::shuffle(d.perm.begin(), d.perm.end(), rng);
  return d;
}

std::vector<float> permuted(const std::vector<float>& x, std::int64_t m, const std::vector<std::int32_t>& perm) {
  const auto k = static_cast<std::int64_t>(perm.size());
  std::vector<float> out(x.size());
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t j = 0; j < k; ++j) out[r * k + j] = x[r * k + perm[j]];
  }
  return out;
}

void expect_bit_equal(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  int bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::bit_cast<std::uint32_t>(got[i]) != std::bit_cast<std::uint32_t>(want[i]) && bad++ < 5) {
      ADD_FAILURE() << what << " [" << i << "] " << got[i] << " vs " << want[i];
    }
  }
}

TEST(AtomLinear, ForwardIsTheFormatProductPlusBias) {
  const std::int64_t m = 5, n = 23, k = 384, n_out = 128, group = 128;
  const Data d = make_data(m, n, k, 21);
  const auto q = quant::quantize_weights_rtn(d.w, n, d.perm, n_out, group, NumberFormat::kInt4, 0.85f);
  const AtomLinear op(q, 0.9f, "layers.0.mlp.up_proj", InputOrder::kOriginal, d.bias);
  EXPECT_EQ(op.in_features(), k);
  EXPECT_EQ(op.out_features(), n);
  std::vector<float> y(static_cast<std::size_t>(m * n));
  op.forward(d.x.data(), m, y.data());
  const auto a = quant::quantize_activations(d.x, m, d.perm, n_out, group, NumberFormat::kInt4, 0.9f);
  auto want = quant::atom_linear_reference(a, q);
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) want[i * n + j] += d.bias[j];
  }
  expect_bit_equal(y, want, "original order");

  // The same layer fed an input already permuted (perm fused into the RMSNorm) gives the same result.
  const AtomLinear reordered(q, 0.9f, "layers.0.mlp.up_proj", InputOrder::kReordered, d.bias);
  const auto xp = permuted(d.x, m, d.perm);
  std::vector<float> y2(y.size());
  reordered.forward(xp.data(), m, y2.data());
  expect_bit_equal(y2, want, "reordered input");
  EXPECT_NE(op.describe().find("int4 g128 + 128 int8 outliers"), std::string::npos) << op.describe();
}

TEST(AtomLinear, W8A8AndRtnW4A4Baselines) {
  const std::int64_t m = 3, n = 17, k = 576;
  const Data d = make_data(m, n, k, 22, /*shuffle=*/false);
  for (auto format : {NumberFormat::kInt8, NumberFormat::kInt4}) {
    const auto q = quant::quantize_weights_rtn(d.w, n, d.perm, 0, k, format, 1.0f);
    const AtomLinear op(q, 1.0f, "w8a8");
    std::vector<float> y(static_cast<std::size_t>(m * n));
    op.forward(d.x.data(), m, y.data());
    const auto a = quant::quantize_activations(d.x, m, d.perm, 0, k, format, 1.0f);
    expect_bit_equal(y, quant::atom_linear_reference(a, q), quant::format_name(format));
  }
}

// q/k/v and gate/up share their input: one activation quantization and one OpenMP loop over all products must
// give each product the format reference's bits (with its bias); ops that quantize differently, or are not
// AtomLinears, each run alone, with the same results.
TEST(AtomLinear, ProductsSharingAnInputMatchTheReference) {
  const std::int64_t k = 384, n_out = 128, group = 128;
  const std::int64_t widths[] = {40, 9, 200};  // the last one large enough for the parallel loop
  for (std::int64_t m : {1, 3, 70}) {
    const Data d = make_data(m, 230, k, 24);
    std::vector<AtomLinear> ops;
    std::vector<quant::QuantizedLinearWeights> qs;
    std::vector<std::vector<float>> want;
    const auto a = quant::quantize_activations(d.x, m, d.perm, n_out, group, NumberFormat::kInt4, 0.9f);
    for (std::size_t i = 0; i < 3; ++i) {
      const std::int64_t n = widths[i];
      const std::vector<float> w(d.w.begin() + static_cast<std::ptrdiff_t>(i * 7 * k),
                                 d.w.begin() + static_cast<std::ptrdiff_t>((i * 7 + n) * k));
      const std::vector<float> bias(d.bias.begin(), d.bias.begin() + n);
      const auto q = quant::quantize_weights_rtn(w, n, d.perm, n_out, group, NumberFormat::kInt4, 0.85f);
      ops.emplace_back(q, 0.9f, "shared", InputOrder::kOriginal, bias);
      qs.push_back(q);
      want.push_back(quant::atom_linear_reference(a, q));
      for (std::int64_t r = 0; r < m; ++r)
        for (std::int64_t j = 0; j < n; ++j) want.back()[r * n + j] += bias[j];
    }
    std::vector<std::vector<float>> got(3);
    for (std::size_t i = 0; i < 3; ++i) got[i].assign(static_cast<std::size_t>(m * widths[i]), 0.0f);
    const LinearOp* shared[] = {&ops[0], &ops[1], &ops[2]};
    float* outs[] = {got[0].data(), got[1].data(), got[2].data()};
    EXPECT_TRUE(ops[0].shares_activations_with(ops[2]));
    forward_shared_input(shared, d.x.data(), m, outs);
    for (std::size_t i = 0; i < 3; ++i)
      expect_bit_equal(got[i], want[i], "shared product " + std::to_string(i));

    // Another clip ratio quantizes the input differently: no sharing, still each op's own result.
    const AtomLinear other_clip(qs[1], 1.0f, "other clip");
    EXPECT_FALSE(ops[0].shares_activations_with(other_clip));
    std::vector<float> alone(static_cast<std::size_t>(m * widths[1])), mixed(alone.size());
    other_clip.forward(d.x.data(), m, alone.data());
    const LinearOp* mixed_ops[] = {&ops[0], &other_clip};
    float* mixed_outs[] = {got[0].data(), mixed.data()};
    forward_shared_input(mixed_ops, d.x.data(), m, mixed_outs);
    expect_bit_equal(got[0], want[0], "mixed, first");
    expect_bit_equal(mixed, alone, "mixed, second");
  }
}

TEST(AtomLinear, RejectsBadConfiguration) {
  const Data d = make_data(1, 4, 64, 23);
  const auto q = quant::quantize_weights_rtn(d.w, 4, d.perm, 0, 64, NumberFormat::kInt4, 1.0f);
  EXPECT_THROW(AtomLinear(q, 0.0f, "x"), Error);
  EXPECT_THROW(AtomLinear(q, 0.9f, "x", InputOrder::kOriginal, std::vector<float>(3)), Error);
}

class WeightOnly : public ::testing::TestWithParam<std::tuple<NumberFormat, std::int64_t, std::int64_t, std::int64_t>> {};

TEST_P(WeightOnly, MatchesFp64OfDequantizedWeights) {
  const auto [format, m, group, n_out] = GetParam();
  const std::int64_t n = 300, k = 2 * group + n_out;  // n spans two sgemm blocks
  const Data d = make_data(m, n, k, 24 + static_cast<unsigned>(m));
  const auto q = quant::quantize_weights_rtn(d.w, n, d.perm, n_out, group, format, 1.0f);
  const WeightOnlyLinear op(q, "w4a16", InputOrder::kOriginal, d.bias);
  std::vector<float> y(static_cast<std::size_t>(m * n));
  op.forward(d.x.data(), m, y.data());
  const auto dw = quant::dequantize(q);  // reordered channel order
  const auto xp = permuted(d.x, m, d.perm);
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double ref = d.bias[j], magnitude = std::fabs(d.bias[j]);
      for (std::int64_t t = 0; t < k; ++t) {
        ref += double(xp[i * k + t]) * dw[j * k + t];
        magnitude += std::fabs(double(xp[i * k + t]) * dw[j * k + t]);
      }
      ASSERT_NEAR(y[i * n + j], ref, 2e-6 * magnitude + 1e-6) << i << "," << j;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, WeightOnly,
                         ::testing::Values(std::make_tuple(NumberFormat::kInt4, 1, 128, 0),
                                           std::make_tuple(NumberFormat::kInt4, 3, 32, 8),
                                           std::make_tuple(NumberFormat::kFp4, 5, 64, 0),
                                           std::make_tuple(NumberFormat::kInt3, 20, 128, 0),
                                           std::make_tuple(NumberFormat::kInt4, 33, 64, 12)));

}  // namespace
}  // namespace atom::cpu
