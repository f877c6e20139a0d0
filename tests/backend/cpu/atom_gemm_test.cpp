// The AVX2 Atom kernels against the scalar format reference (format/format.h): bit-exact.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>

#include "backend/cpu/atom_gemm.h"
#include "backend/cpu/cpu_features.h"
#include "common/error.h"

namespace atom::cpu {
namespace {

using quant::NumberFormat;

struct Shape {
  NumberFormat format;
  std::int64_t m, n, k_normal, n_out, group;
};

std::string describe(const Shape& s) {
  return fmt::format("{} m={} n={} k_normal={} n_out={} group={}", quant::format_name(s.format), s.m, s.n, s.k_normal,
                     s.n_out, s.group);
}

struct Problem {
  std::vector<float> x, w;
  std::vector<std::int32_t> perm;
};

Problem make_problem(const Shape& s, unsigned seed, bool special_values) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const std::int64_t k = s.k_normal + s.n_out;
  Problem p;
  p.x.resize(static_cast<std::size_t>(s.m * k));
  p.w.resize(static_cast<std::size_t>(s.n * k));
  for (auto& v : p.x) v = dist(rng);
  for (auto& v : p.w) v = 0.02f * dist(rng);
  p.perm.resize(static_cast<std::size_t>(k));
  std::iota(p.perm.begin(), p.perm.end(), 0);
  std::shuffle(p.perm.begin(), p.perm.end(), rng);
  for (std::int64_t r = 0; r < s.m; ++r) {  // large outlier channels
    for (std::int64_t o = 0; o < s.n_out; ++o) p.x[r * k + p.perm[s.k_normal + o]] *= 20.0f;
  }
  if (special_values && s.m >= 3 && s.k_normal >= s.group) {
    // Row 0: a zero group; row 1: values landing on ties of every format; row 2: a NaN, an inf, subnormals.
    for (std::int64_t j = 0; j < s.group; ++j) p.x[0 * k + p.perm[j]] = 0.0f;
    // max|x| = qmax, so the scale is exactly 1 at clip 1 and quarter steps hit every rounding tie.
    const auto half_span = static_cast<std::int64_t>(std::min(7.0f, quant::format_qmax(s.format)) * 4);
    for (std::int64_t j = 0; j < s.group; ++j) {
      p.x[1 * k + p.perm[j]] = 0.25f * static_cast<float>(j % (2 * half_span + 1) - half_span);
    }
    p.x[1 * k + p.perm[s.group - 1]] = quant::format_qmax(s.format);
    p.x[2 * k + p.perm[0]] = std::numeric_limits<float>::quiet_NaN();
    p.x[2 * k + p.perm[s.group / 2]] = 1e-40f;
    if (s.k_normal >= 2 * s.group) {
      p.x[2 * k + p.perm[s.group]] = std::numeric_limits<float>::infinity();
      for (std::int64_t j = s.group + 1; j < 2 * s.group; ++j) p.x[2 * k + p.perm[j]] = 1e-41f * float(j);
    }
  }
  return p;
}

void expect_same(const quant::QuantizedActivations& got, const quant::QuantizedActivations& want, const Shape& s) {
  EXPECT_EQ(got.packed, want.packed) << describe(s);
  EXPECT_EQ(got.scales, want.scales) << describe(s);
  EXPECT_EQ(got.outliers, want.outliers) << describe(s);
  EXPECT_EQ(got.outlier_scales, want.outlier_scales) << describe(s);
}

void check_shape(const Shape& s, unsigned seed, float a_clip = 0.9f, float w_clip = 0.85f) {
  const Problem p = make_problem(s, seed, /*special_values=*/false);
  auto q = quant::quantize_weights_rtn(p.w, s.n, p.perm, s.n_out, s.group, s.format, w_clip);
  const AtomPreparedWeights w = prepare_atom_weights(q, "test");
  AtomActivations a;
  quantize_activations_avx2(p.x.data(), s.m, w, a_clip, a);
  const auto want_a = quant::quantize_activations(p.x, s.m, p.perm, s.n_out, s.group, s.format, a_clip);
  expect_same(to_canonical(a, w), want_a, s);
  std::vector<float> y(static_cast<std::size_t>(s.m * s.n), std::nanf(""));
  atom_gemm_avx2(a, w, y.data());
  const auto want_y = quant::atom_linear_reference(want_a, q);
  ASSERT_EQ(y.size(), want_y.size());
  std::int64_t mismatches = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (std::bit_cast<std::uint32_t>(y[i]) != std::bit_cast<std::uint32_t>(want_y[i])) {
      if (mismatches++ < 5) ADD_FAILURE() << describe(s) << " y[" << i << "] = " << y[i] << " want " << want_y[i];
    }
  }
  EXPECT_EQ(mismatches, 0) << describe(s);
}

void check_special_values();

// Runs `body` with the AVX2 kernels, then with the AVX-512 VNNI ones where this CPU has them (the kernels are
// chosen when weights are prepared), and restores the default.
template <typename Body>
void for_each_isa(Body body) {
  const bool default_on = avx512_vnni_enabled();
  for (bool vnni : {false, true}) {
    if (vnni && !cpu_has_avx512_vnni()) {
      std::printf("note: this CPU has no AVX-512 VNNI; its kernels are not tested here\n");
      continue;
    }
    set_avx512_vnni_enabled(vnni);
    SCOPED_TRACE(vnni ? "avx512-vnni" : "avx2");
    body();
  }
  set_avx512_vnni_enabled(default_on);
}

TEST(AtomGemm, BitExactAcrossFormatsAndShapes) {
  for_each_isa([] {
    unsigned seed = 100;
    for (auto format : {NumberFormat::kInt4, NumberFormat::kInt3, NumberFormat::kFp4, NumberFormat::kInt8}) {
      check_shape({format, 1, 37, 128, 0, 128}, seed++);    // decode row, one group, no outliers
      check_shape({format, 3, 13, 256, 128, 128}, seed++);  // odd M, N not a multiple of any tile
      check_shape({format, 5, 9, 64, 5, 64}, seed++);       // odd outlier count (padded)
      check_shape({format, 7, 21, 96, 32, 32}, seed++);     // 32-wide groups (split chunk of 32)
      check_shape({format, 66, 19, 192, 64, 64}, seed++);   // crosses the 64-row block
      check_shape({format, 2, 8, 2048, 16, 2048}, seed++);  // one group longer than an int16 segment
      check_shape({format, 1, 70, 640, 64, 128}, seed++);   // SmolLM2's decode shape, several groups
      check_shape({format, 5, 17, 768, 64, 256}, seed++);   // 256-wide groups (two VNNI chunks each)
    }
  });
}

TEST(AtomGemm, VnniLayoutIsUsedWhereItFits) {
  if (!cpu_has_avx512_vnni()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  std::vector<float> w(8 * 256, 0.5f);
  std::vector<std::int32_t> perm(256);
  std::iota(perm.begin(), perm.end(), 0);
  for_each_isa([&] {
    for (auto [format, group, want_vnni] : {std::tuple{NumberFormat::kInt4, 128, true},
                                            {NumberFormat::kInt3, 256, true},
                                            {NumberFormat::kInt4, 64, false},
                                            {NumberFormat::kFp4, 128, false},
                                            {NumberFormat::kInt8, 128, false}}) {
      const auto q = quant::quantize_weights_rtn(w, 8, perm, 0, group, format, 1.0f);
      const AtomPreparedWeights p = prepare_atom_weights(q, "test");
      EXPECT_EQ(p.chunk == 128, want_vnni && avx512_vnni_enabled()) << quant::format_name(format) << group;
    }
  });
}

TEST(AtomGemm, PerChannelBaselinesAreBitExact) {
  // W8A8 (SmoothQuant layout) and plain RTN W4A4: one group per row, no outliers.
  for_each_isa([] {
    check_shape({NumberFormat::kInt8, 4, 29, 576, 0, 576}, 7, 1.0f, 1.0f);
    check_shape({NumberFormat::kInt4, 3, 11, 576, 0, 576}, 8, 1.0f, 1.0f);
    check_shape({NumberFormat::kInt4, 3, 11, 640, 0, 640}, 9, 1.0f, 1.0f);
  });
}

TEST(AtomGemm, ActivationQuantizationHandlesSpecialValues) {
  for_each_isa([] { check_special_values(); });
}

void check_special_values() {
  for (auto format : {NumberFormat::kInt4, NumberFormat::kInt3, NumberFormat::kFp4, NumberFormat::kInt8}) {
    for (std::int64_t group : {32, 64, 128}) {
      const Shape s{format, 3, 1, 2 * group, 16, group};
      const std::int64_t groups_per_row = 2;
      const Problem p = make_problem(s, 9, /*special_values=*/true);
      const auto q = quant::quantize_weights_rtn(p.w, s.n, p.perm, s.n_out, s.group, s.format, 1.0f);
      const AtomPreparedWeights w = prepare_atom_weights(q, "test");
      AtomActivations a;
      quantize_activations_avx2(p.x.data(), s.m, w, 1.0f, a);
      const auto want = quant::quantize_activations(p.x, s.m, p.perm, s.n_out, s.group, s.format, 1.0f);
      expect_same(to_canonical(a, w), want, s);
      EXPECT_EQ(want.scales[0], 0) << "zero group";
      EXPECT_EQ(want.scales[groups_per_row], fp32_to_fp16(1.0f)) << "tie row";
    }
  }
}

TEST(AtomGemm, MatchesFakeQuantProductToFp32Rounding) {
  // An independent check of the whole path: the fp64 product of dequantized tensors.
  const Shape s{NumberFormat::kInt4, 4, 10, 512, 128, 128};
  const Problem p = make_problem(s, 11, false);
  const auto q = quant::quantize_weights_rtn(p.w, s.n, p.perm, s.n_out, s.group, s.format, 0.85f);
  const AtomPreparedWeights w = prepare_atom_weights(q, "test");
  AtomActivations a;
  quantize_activations_avx2(p.x.data(), s.m, w, 0.9f, a);
  std::vector<float> y(static_cast<std::size_t>(s.m * s.n));
  atom_gemm_avx2(a, w, y.data());
  const auto y64 = quant::atom_linear_dequantized_reference(to_canonical(a, w), q);
  for (std::size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], y64[i], 1e-5 * (std::fabs(y64[i]) + 1.0)) << i;
}

TEST(AtomGemm, RejectsGroupsTheKernelsCannotRun) {
  std::vector<float> w(4 * 96, 1.0f);
  std::vector<std::int32_t> perm(96);
  std::iota(perm.begin(), perm.end(), 0);
  const auto q = quant::quantize_weights_rtn(w, 4, perm, 0, 48, NumberFormat::kInt4, 1.0f);
  try {
    prepare_atom_weights(q, "model.layers.3.self_attn.o_proj");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.3.self_attn.o_proj: group size 48"), std::string::npos);
  }
}

}  // namespace
}  // namespace atom::cpu
