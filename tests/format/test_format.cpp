// Bit-exact properties of the scalar format reference (docs/FORMAT.md).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "format/format.h"

namespace atom::quant {
namespace {

std::vector<float> codes_as_float(const SymmetricGroups& q) { return {q.codes.begin(), q.codes.end()}; }

TEST(Format, SymmetricRoundsHalfToEven) {
  // max|x| = 7 -> scale = 1 exactly, so x / scale = x.
  const std::vector<float> x = {7.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.5f, 6.5f, -6.5f, 0.49f, -7.0f};
  const auto q = quantize_symmetric_groups(x, 1, 12, 12, NumberFormat::kInt4, 1.0f);
  ASSERT_EQ(q.scales.size(), 1u);
  EXPECT_EQ(q.scales[0], fp32_to_fp16(1.0f));
  EXPECT_EQ(codes_as_float(q),
            (std::vector<float>{7, 0, 2, 2, 0, -2, -2, 4, 6, -6, 0, -7}));
}

TEST(Format, SymmetricScaleIsFp16OfClipTimesMaxOverQmax) {
  const std::vector<float> x = {1.0f, -0.25f};
  EXPECT_EQ(quantize_symmetric_groups(x, 1, 2, 2, NumberFormat::kInt4, 1.0f).scales[0], 0x3092);  // fp16(1/7)
  // fp16(0.9 * 1 / 7) computed independently (numpy): 0x301D.
  EXPECT_EQ(quantize_symmetric_groups(x, 1, 2, 2, NumberFormat::kInt4, 0.9f).scales[0], 0x301D);
  EXPECT_EQ(quantize_symmetric_groups(x, 1, 2, 2, NumberFormat::kInt8, 1.0f).scales[0], fp32_to_fp16(1.0f / 127));
  EXPECT_EQ(quantize_symmetric_groups(x, 1, 2, 2, NumberFormat::kInt3, 1.0f).scales[0], fp32_to_fp16(1.0f / 3));
  EXPECT_EQ(quantize_symmetric_groups(x, 1, 2, 2, NumberFormat::kFp4, 1.0f).scales[0], fp32_to_fp16(1.0f / 6));
}

TEST(Format, SymmetricClampsToTheSignedRange) {
  // clip 0.5: scale = 0.5, so x / scale = 2x.
  const std::vector<float> x = {7.0f, -7.0f, -4.0f, -4.25f, 3.5f, 3.74f, -3.76f, 0.0f};
  const auto q = quantize_symmetric_groups(x, 1, 8, 8, NumberFormat::kInt4, 0.5f);
  EXPECT_EQ(fp16_to_fp32(q.scales[0]), 0.5f);
  EXPECT_EQ(codes_as_float(q), (std::vector<float>{7, -8, -8, -8, 7, 7, -8, 0}));
  const auto q3 = quantize_symmetric_groups(x, 1, 8, 8, NumberFormat::kInt3, 0.5f);  // scale 7*0.5/3
  for (auto c : q3.codes) {
    EXPECT_GE(c, -4);
    EXPECT_LE(c, 3);
  }
  EXPECT_EQ(q3.codes[0], 3);
  EXPECT_EQ(q3.codes[1], -4);
}

TEST(Format, ZeroAndUnderflowingGroupsQuantizeToZero) {
  const std::vector<float> x = {0, 0, 0, 0, 1e-9f, -1e-9f, 2e-9f, 0, 1, 2, 3, 4};
  const auto q = quantize_symmetric_groups(x, 1, 12, 4, NumberFormat::kInt4, 1.0f);
  EXPECT_EQ(q.scales[0], 0);
  EXPECT_EQ(q.scales[1], 0);  // 2e-9 / 7 underflows fp16
  for (int i = 0; i < 8; ++i) EXPECT_EQ(q.codes[i], 0) << i;
  EXPECT_NE(q.scales[2], 0);
  const auto d = dequantize_symmetric_groups(q, 1, 12, 4, NumberFormat::kInt4);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(d[i], 0.0f);
}

TEST(Format, SymmetricErrorIsAtMostHalfAStep) {
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  const int rows = 7, cols = 256, group = 64;
  std::vector<float> x(rows * cols);
  for (auto& v : x) v = dist(rng);
  for (auto format : {NumberFormat::kInt3, NumberFormat::kInt4, NumberFormat::kInt8}) {
    const auto q = quantize_symmetric_groups(x, rows, cols, group, format, 1.0f);
    const auto d = dequantize_symmetric_groups(q, rows, cols, group, format);
    for (int i = 0; i < rows * cols; ++i) {
      const float scale = fp16_to_fp32(q.scales[i / group]);
      EXPECT_LE(std::fabs(x[i] - d[i]), 0.5f * scale * (1 + 1e-6f)) << format_name(format) << " at " << i;
    }
  }
}

TEST(Format, NonFiniteInputsAreDeterministic) {
  const float nan = std::nanf("");
  const std::vector<float> x = {nan, 1.0f, -7.0f, 3.0f};
  const auto q = quantize_symmetric_groups(x, 1, 4, 4, NumberFormat::kInt4, 1.0f);
  EXPECT_EQ(fp16_to_fp32(q.scales[0]), 1.0f);  // NaN ignored by the max
  EXPECT_EQ(codes_as_float(q), (std::vector<float>{-8, 1, -7, 3}));  // NaN clamps to the low end
  EXPECT_EQ(fp4_encode(nan), 0);
}

TEST(Format, PackUnpackRoundTripLowNibbleFirst) {
  const std::vector<std::int8_t> pair = {1, -1};
  EXPECT_EQ(pack_nibbles(pair), (std::vector<std::uint8_t>{0xF1}));
  const std::vector<std::int8_t> pair2 = {-8, 7};
  EXPECT_EQ(pack_nibbles(pair2), (std::vector<std::uint8_t>{0x78}));
  std::vector<std::int8_t> all;
  for (int a = -8; a <= 7; ++a) {
    for (int b = -8; b <= 7; ++b) {
      all.push_back(static_cast<std::int8_t>(a));
      all.push_back(static_cast<std::int8_t>(b));
    }
  }
  const auto packed = pack_nibbles(all);
  ASSERT_EQ(packed.size(), 256u);
  std::vector<std::uint8_t> sorted = packed;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 256; ++i) EXPECT_EQ(sorted[i], i);  // every byte value reached once
  EXPECT_EQ(unpack_int4(packed, static_cast<std::int64_t>(all.size())), all);
  const auto nibbles = unpack_nibbles(packed, static_cast<std::int64_t>(all.size()));
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(nibbles[i], all[i] & 0xF);
  EXPECT_THROW(pack_nibbles(std::vector<std::int8_t>{1, 2, 3}), Error);
  EXPECT_THROW(unpack_int4(packed, 514), Error);
}

TEST(Format, Fp4AllCodesDecodeAndReencode) {
  const float expected[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(fp4_decode(static_cast<std::uint8_t>(c)), expected[c]) << c;
    EXPECT_EQ(fp4_decode_doubled(static_cast<std::uint8_t>(c)), 2 * expected[c]) << c;
    EXPECT_EQ(fp4_encode(expected[c]), c == 8 ? 0 : c) << c;  // negative zero encodes as 0
  }
}

TEST(Format, Fp4TiesGoToTheEvenCode) {
  struct Case { float v; std::uint8_t code; };
  const Case cases[] = {
      {0.25f, 0}, {0.2501f, 1}, {0.75f, 2}, {0.7499f, 1}, {1.25f, 2}, {1.2501f, 3}, {1.75f, 4}, {1.7499f, 3},
      {2.5f, 4},  {2.5001f, 5}, {3.5f, 6},  {3.4999f, 5}, {5.0f, 6},  {5.0001f, 7}, {100.0f, 7},
      {-0.25f, 0}, {-0.75f, 10}, {-2.5f, 12}, {-5.0f, 14}, {-9.0f, 15}, {-0.1f, 0},
  };
  for (const auto& c : cases) EXPECT_EQ(fp4_encode(c.v), c.code) << c.v;
}

TEST(Format, Fp4GroupUsesScaleMaxOverSix) {
  const std::vector<float> x = {6.0f, -3.0f, 1.25f, 0.1f};  // scale 1
  const auto q = quantize_symmetric_groups(x, 1, 4, 4, NumberFormat::kFp4, 1.0f);
  EXPECT_EQ(fp16_to_fp32(q.scales[0]), 1.0f);
  EXPECT_EQ(codes_as_float(q), (std::vector<float>{7, 13, 2, 0}));
  EXPECT_EQ(dequantize_symmetric_groups(q, 1, 4, 4, NumberFormat::kFp4), (std::vector<float>{6, -3, 1, 0}));
}

TEST(Format, AsymmetricConstantRowsAreExact) {
  for (int bits : {4, 8}) {
    // fp16-representable constants, one row each; last row mixes a constant group with a zero group.
    const std::vector<float> x = {0.1f, 0.1f, 0.1f, 0.1f, -3.25f, -3.25f, -3.25f, -3.25f, 0, 0, 0, 0};
    std::vector<float> xh = x;
    for (auto& v : xh) v = fp16_to_fp32(fp32_to_fp16(v));
    const auto q = quantize_asymmetric_groups(xh, 3, 4, 4, bits);
    for (int r = 0; r < 3; ++r) EXPECT_EQ(q.scales[r], 0) << r;
    EXPECT_EQ(dequantize_asymmetric_groups(q, 3, 4, 4), xh);
  }
}

TEST(Format, AsymmetricMatchesTheFormula) {
  // min -1, max 2: lo = -1, scale = fp16(3/15) = fp16(0.2).
  const std::vector<float> x = {-1.0f, 2.0f, 0.1f, 0.3f, 1.0f, -0.9f};
  const auto q = quantize_asymmetric_groups(x, 1, 6, 6, 4);
  EXPECT_EQ(q.mins[0], fp32_to_fp16(-1.0f));
  EXPECT_EQ(q.scales[0], fp32_to_fp16(3.0f / 15.0f));
  const float s = fp16_to_fp32(q.scales[0]);
  for (int i = 0; i < 6; ++i) {
    const float expected = std::min(15.0f, std::max(0.0f, std::nearbyint((x[i] + 1.0f) / s)));
    EXPECT_EQ(q.codes[i], expected) << i;
  }
  EXPECT_EQ(q.codes[0], 0);
  EXPECT_EQ(q.codes[1], 15);
}

TEST(Format, AsymmetricErrorIsAtMostHalfAStep) {
  std::mt19937 rng(2);
  std::normal_distribution<float> dist(0.5f, 2.0f);
  const int rows = 5, cols = 128, group = 64;
  std::vector<float> x(rows * cols);
  for (auto& v : x) v = dist(rng);
  for (int bits : {4, 8}) {
    const auto q = quantize_asymmetric_groups(x, rows, cols, group, bits);
    const auto d = dequantize_asymmetric_groups(q, rows, cols, group);
    for (int i = 0; i < rows * cols; ++i) {
      EXPECT_LT(q.codes[i], 1 << bits);
      const float scale = fp16_to_fp32(q.scales[i / group]);
      // Half a step, plus fp16 rounding of lo and of the scale times the largest code.
      const float bound = 0.5f * scale + std::fabs(fp16_to_fp32(q.mins[i / group])) * 1e-3f + scale * 0.01f;
      EXPECT_LE(std::fabs(x[i] - d[i]), bound) << bits << " bits at " << i;
    }
  }
}

std::vector<std::int32_t> random_perm(std::int64_t k, std::mt19937& rng) {
  std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  return perm;
}

TEST(Format, ReorderPutsPermutedChannelsFirstAndOutliersLast) {
  std::mt19937 rng(3);
  const std::int64_t k = 12, n_out = 4;
  const auto perm = random_perm(k, rng);
  std::vector<float> x(k);
  for (std::int64_t i = 0; i < k; ++i) x[i] = static_cast<float>(i + 1);  // channel i holds i+1
  const auto a = quantize_activations(x, 1, perm, n_out, 8, NumberFormat::kInt8, 1.0f);
  const auto d = dequantize(a);
  for (std::int64_t j = 0; j < k; ++j) {
    // INT8 of a small integer range: within half a step of the permuted value.
    const float step = (j < 8 ? 12.0f : 12.0f) / 127.0f;
    EXPECT_NEAR(d[j], static_cast<float>(perm[j] + 1), 0.5f * step + 1e-6f) << j;
  }
}

struct LinearCase {
  NumberFormat format;
  std::int64_t m, n, k, n_out, group;
  float a_clip, w_clip;
};

class AtomLinearReference : public ::testing::TestWithParam<LinearCase> {};

TEST_P(AtomLinearReference, IntegerProductMatchesFakeQuantFp64) {
  const LinearCase c = GetParam();
  std::mt19937 rng(static_cast<unsigned>(c.m * 131 + c.n * 7 + c.k + static_cast<int>(c.format)));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(c.m * c.k)), w(static_cast<std::size_t>(c.n * c.k));
  for (auto& v : x) v = dist(rng);
  for (auto& v : w) v = 0.05f * dist(rng);
  const auto perm = random_perm(c.k, rng);
  if (c.n_out > 0) {  // an outlier channel, kept in INT8 (without outliers it would wreck the INT4 groups)
    for (std::int64_t i = 0; i < c.m; ++i) x[i * c.k + perm[c.k - 1]] *= 30.0f;
  }
  const auto a = quantize_activations(x, c.m, perm, c.n_out, c.group, c.format, c.a_clip);
  const auto q = quantize_weights_rtn(w, c.n, perm, c.n_out, c.group, c.format, c.w_clip);
  const auto y = atom_linear_reference(a, q);
  const auto y64 = atom_linear_dequantized_reference(a, q);
  const auto da = dequantize(a);
  const auto dw = dequantize(q);
  const std::int64_t groups = (c.k - c.n_out) / c.group;
  double worst = 0;
  for (std::int64_t i = 0; i < c.m; ++i) {
    for (std::int64_t j = 0; j < c.n; ++j) {
      double magnitude = 0;
      for (std::int64_t t = 0; t < c.k; ++t) magnitude += std::fabs(double(da[i * c.k + t]) * dw[j * c.k + t]);
      // One rounding for float(D)*sa, one per fma, plus float(D) for INT8 sums beyond 2^24.
      const double bound = (groups + 3) * std::ldexp(1.0, -24) * magnitude;
      const double err = std::fabs(y[i * c.n + j] - y64[i * c.n + j]);
      EXPECT_LE(err, bound) << i << "," << j;
      worst = std::max(worst, err / (magnitude + 1e-30));
    }
  }
  EXPECT_LT(worst, 1e-5);
  // The fake-quant product is close to the float product (quantization is doing something sensible).
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < c.m; ++i) {
    for (std::int64_t j = 0; j < c.n; ++j) {
      double ref = 0;
      for (std::int64_t t = 0; t < c.k; ++t) ref += double(x[i * c.k + t]) * w[j * c.k + t];
      num += (y64[i * c.n + j] - ref) * (y64[i * c.n + j] - ref);
      den += ref * ref;
    }
  }
  const double tolerance = c.format == NumberFormat::kInt8 ? 0.02 : c.format == NumberFormat::kInt3 ? 0.6 : 0.3;
  EXPECT_LT(std::sqrt(num / den), tolerance) << format_name(c.format);
}

INSTANTIATE_TEST_SUITE_P(Formats, AtomLinearReference,
                         ::testing::Values(LinearCase{NumberFormat::kInt4, 5, 7, 160, 32, 64, 0.9f, 0.85f},
                                           LinearCase{NumberFormat::kInt4, 3, 9, 128, 0, 128, 1.0f, 1.0f},
                                           LinearCase{NumberFormat::kInt3, 4, 6, 96, 32, 32, 1.0f, 1.0f},
                                           LinearCase{NumberFormat::kFp4, 6, 5, 144, 16, 64, 0.9f, 0.9f},
                                           LinearCase{NumberFormat::kInt8, 2, 8, 200, 8, 192, 1.0f, 1.0f},
                                           LinearCase{NumberFormat::kInt4, 2, 3, 64, 64, 32, 1.0f, 1.0f}));

TEST(Format, ValidateNamesTheFieldAtFault) {
  std::mt19937 rng(4);
  const auto perm = random_perm(64, rng);
  std::vector<float> w(3 * 64, 0.5f);
  auto q = quantize_weights_rtn(w, 3, perm, 0, 32, NumberFormat::kInt4, 1.0f);
  EXPECT_NO_THROW(validate(q, "layer"));
  auto bad = q;
  bad.perm[5] = bad.perm[6];
  try {
    validate(bad, "model.layers.0.mlp.down_proj");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.down_proj: perm[6]"), std::string::npos) << e.what();
  }
  bad = q;
  bad.scales.pop_back();
  EXPECT_THROW(validate(bad, "w"), Error);
  EXPECT_THROW(quantize_weights_rtn(w, 3, perm, 4, 32, NumberFormat::kInt4, 1.0f), Error);  // 60 % 32 != 0
  EXPECT_THROW(quantize_weights_rtn(w, 3, perm, 0, 32, NumberFormat::kInt4, 1.5f), Error);  // clip > 1
  EXPECT_THROW(parse_format("int5", "--wbits"), Error);
  EXPECT_EQ(parse_format("fp4", "--wbits"), NumberFormat::kFp4);
}

// Golden codes computed independently with numpy (scripts/dev/quant_format_golden.py).
TEST(Format, MatchesIndependentNumpyGolden) {
  const std::string path = std::string(ATOM_TEST_DATA_DIR) + "/quant/format_golden.json";
  std::ifstream file(path);
  ASSERT_TRUE(file) << "missing " << path << " (run scripts/dev/quant_format_golden.py)";
  const auto golden = nlohmann::json::parse(file);
  const std::int64_t rows = golden["rows"], cols = golden["cols"], group = golden["group"];
  int checked = 0;
  for (const auto& c : golden["cases"]) {
    std::vector<float> x;
    for (std::uint32_t bits : c["x_bits"]) x.push_back(std::bit_cast<float>(bits));
    if (c["kind"] == "symmetric") {
      const NumberFormat format = parse_format(c["format"].get<std::string>().c_str(), "golden");
      const float clip = std::bit_cast<float>(c["clip_bits"].get<std::uint32_t>());
      const auto q = quantize_symmetric_groups(x, rows, cols, group, format, clip);
      EXPECT_EQ(q.scales, c["scales"].get<std::vector<std::uint16_t>>()) << c["format"] << " clip " << clip;
      EXPECT_EQ(codes_as_float(q), c["codes"].get<std::vector<float>>()) << c["format"] << " clip " << clip;
    } else {
      const auto q = quantize_asymmetric_groups(x, rows, cols, group, c["bits"].get<int>());
      EXPECT_EQ(q.scales, c["scales"].get<std::vector<std::uint16_t>>()) << c["bits"];
      EXPECT_EQ(q.mins, c["mins"].get<std::vector<std::uint16_t>>()) << c["bits"];
      EXPECT_EQ(std::vector<int>(q.codes.begin(), q.codes.end()), c["codes"].get<std::vector<int>>()) << c["bits"];
    }
    ++checked;
  }
  EXPECT_EQ(checked, 10);
}

}  // namespace
}  // namespace atom::quant
