// Int8Linear (int8 weights per row x int8 activations per 64-column block, the integer path's lm_head):
// quantization bit-exact against a scalar reference, products bit-exact against the documented computation
// written out (exact integer block sums, the fixed fp32 lane order) and within the quantization error of the
// fp64 product, every kernel this CPU has, rows alone == rows in a batch.
#include "backend/cpu/int8_linear.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/atom_model_loader.h"
#include "common/error.h"
#include "reference_llama.h"

namespace atom::cpu {
namespace {

using test::random_vector;

// The quantization rule, written out plainly: scale = max|v| / 127 in fp32, code = round half to even of
// v / scale (fp32 division), within [-127, 127].
float reference_scale(const float* v, std::int64_t len) {
  float max_abs = 0.0f;
  for (std::int64_t i = 0; i < len; ++i)
    if (std::fabs(v[i]) > max_abs) max_abs = std::fabs(v[i]);
  return max_abs / 127.0f;
}

std::int8_t reference_code(float v, float scale) {
  if (scale == 0.0f) return 0;
  const float ratio = v / scale;
  float rounded = std::floor(ratio);
  const float frac = ratio - rounded;
  if (frac > 0.5f || (frac == 0.5f && std::fmod(rounded, 2.0f) != 0.0f)) rounded += 1.0f;
  return static_cast<std::int8_t>(std::min(127.0f, std::max(-127.0f, rounded)));
}

std::vector<Int8Kernel> kernels_here() {
  std::vector<Int8Kernel> kernels = {Int8Kernel::kAvx2};
  if (int8_kernel_supported(Int8Kernel::kAvx512Vnni)) kernels.push_back(Int8Kernel::kAvx512Vnni);
  return kernels;
}

TEST(Int8Quantize, MatchesTheScalarRuleBitForBit) {
  std::mt19937_64 rng(11);
  for (std::int64_t len : {1, 5, 64, 577}) {
    std::vector<float> v = random_vector(rng, static_cast<std::size_t>(len), 3.0f);
    if (len > 4) {
      v[1] = 0.0f;
      v[2] = -v[3];  // a tie of magnitudes
    }
    std::vector<std::int8_t> codes(static_cast<std::size_t>(len));
    const float scale = quantize_int8_symmetric(v.data(), len, codes.data());
    ASSERT_EQ(scale, reference_scale(v.data(), len));
    for (std::int64_t i = 0; i < len; ++i) {
      ASSERT_EQ(codes[i], reference_code(v[i], scale)) << len << " " << i;
      EXPECT_LE(std::fabs(codes[i] * scale - v[i]), 0.5f * scale * (1 + 1e-6f) + 1e-30f);
    }
  }
  // Exact halves round to even; zeros give scale 0 and codes 0.
  const float halves[] = {127.0f, 0.5f, 1.5f, -2.5f, 3.49f};
  std::int8_t codes[5];
  EXPECT_EQ(quantize_int8_symmetric(halves, 5, codes), 1.0f);
  EXPECT_EQ(codes[0], 127);
  EXPECT_EQ(codes[1], 0);
  EXPECT_EQ(codes[2], 2);
  EXPECT_EQ(codes[3], -2);
  EXPECT_EQ(codes[4], 3);
  const float zeros[3] = {0.0f, -0.0f, 0.0f};
  EXPECT_EQ(quantize_int8_symmetric(zeros, 3, codes), 0.0f);
  EXPECT_EQ(codes[0] | codes[1] | codes[2], 0);
}

// The documented computation, written out: per 64-column block the activation scale and codes, exact
// integer sums per lane (columns 4l..4l+3 and 32+4l..32+4l+3 of the block), one fp32 FMA per lane and block,
// the fixed sum of the 8 lanes, times the weight scale.
float reference_output(const float* xr, std::int64_t K, const Int8Linear& op, std::int64_t n) {
  float lanes[8] = {};
  for (std::int64_t k0 = 0; k0 < op.padded_in(); k0 += 64) {
    const float sx = reference_scale(xr + k0, std::min<std::int64_t>(64, K - k0));
    for (int l = 0; l < 8; ++l) {
      std::int64_t dot = 0;
      for (std::int64_t j :
           {4 * l, 4 * l + 1, 4 * l + 2, 4 * l + 3, 32 + 4 * l, 33 + 4 * l, 34 + 4 * l, 35 + 4 * l}) {
        const std::int64_t k = k0 + j;
        if (k < K) dot += std::int64_t{reference_code(xr[k], sx)} * op.code(n, k);
      }
      lanes[l] = std::fma(static_cast<float>(dot), sx, lanes[l]);
    }
  }
  const float sum =
      ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
  return sum * op.scales()[static_cast<std::size_t>(n)];
}

TEST(Int8Linear, EveryKernelMatchesTheDocumentedComputationAndTheFp64ProductWithinQuantizationError) {
  std::mt19937_64 rng(12);
  for (auto [N, K] :
       {std::pair<std::int64_t, std::int64_t>{1, 1}, {7, 37}, {64, 576}, {13, 200}, {9, 1000}}) {
    const std::vector<float> w = random_vector(rng, static_cast<std::size_t>(N * K), 0.05f);
    const Int8Linear op(w, N, K);
    ASSERT_EQ(op.in_features(), K);
    ASSERT_EQ(op.out_features(), N);
    ASSERT_EQ(op.padded_in() % 64, 0);
    for (std::int64_t n = 0; n < N; ++n) {
      const float* row = w.data() + n * K;
      ASSERT_EQ(op.scales()[n], reference_scale(row, K));
      for (std::int64_t k = 0; k < op.padded_in(); ++k) {
        const std::int8_t want = k < K ? reference_code(row[k], op.scales()[n]) : 0;
        ASSERT_EQ(op.code(n, k), want) << n << "," << k;
      }
    }
    for (std::int64_t m : {1, 2, 3, 5, 70}) {
      std::vector<float> x = random_vector(rng, static_cast<std::size_t>(m * K), 1.0f);
      if (K >= 200) x[5] = 40.0f;  // an outlier channel: only its block loses precision
      for (Int8Kernel kernel : kernels_here()) {
        std::vector<float> y(static_cast<std::size_t>(m * N));
        op.forward(x.data(), m, y.data(), kernel);
        for (std::int64_t r = 0; r < m; ++r) {
          const float* xr = x.data() + r * K;
          for (std::int64_t n = 0; n < N; ++n) {
            const double sw = op.scales()[n];
            double exact = 0, bound = 0, magnitude = 0;
            for (std::int64_t k = 0; k < K; ++k) {
              const std::int64_t k0 = k / 64 * 64;
              const double sx = reference_scale(xr + k0, std::min<std::int64_t>(64, K - k0));
              const double wv = w[static_cast<std::size_t>(n * K + k)];
              exact += xr[k] * wv;
              magnitude += std::fabs(xr[k] * wv);
              // |x w - sx qx sw qw| <= |x| sw / 2 + |w| sx / 2 + sx sw / 4 (each code within half a step)
              bound += std::fabs(xr[k]) * sw / 2 + std::fabs(wv) * sx / 2 + sx * sw / 4;
            }
            const float got = y[static_cast<std::size_t>(r * N + n)];
            ASSERT_EQ(got, reference_output(xr, K, op, n))
                << int8_kernel_name(kernel) << " " << N << "x" << K << " m=" << m << " r=" << r << " n=" << n;
            // fp32: one rounding per block and lane, the lane sum and the scale (~2^-24 relative each).
            const double fp32 =
                (static_cast<double>(K) / 64 + 6) * std::ldexp(1.0, -23) * (magnitude + bound);
            EXPECT_LE(std::fabs(got - exact), bound + fp32) << N << "x" << K;
          }
        }
      }
    }
  }
}

TEST(Int8Linear, RowsDoNotDependOnTheBatchOrTheKernel) {
  std::mt19937_64 rng(13);
  const std::int64_t N = 50, K = 100, m = 9;
  const Int8Linear op(random_vector(rng, N * K, 0.1f), N, K);
  const std::vector<float> x = random_vector(rng, m * K, 1.0f);
  std::vector<float> first;
  for (Int8Kernel kernel : kernels_here()) {
    std::vector<float> all(m * N), one(N);
    op.forward(x.data(), m, all.data(), kernel);
    for (std::int64_t r = 0; r < m; ++r) {
      op.forward(x.data() + r * K, 1, one.data(), kernel);
      for (std::int64_t n = 0; n < N; ++n) ASSERT_EQ(all[r * N + n], one[n]) << r << "," << n;
    }
    if (first.empty()) first = all;
    EXPECT_EQ(all, first) << int8_kernel_name(kernel);
  }
}

TEST(Int8Linear, LmHeadPrecisionNames) {
  EXPECT_EQ(parse_lm_head_precision("int8"), LmHeadPrecision::kInt8);
  EXPECT_EQ(parse_lm_head_precision("f16"), LmHeadPrecision::kF16);
  EXPECT_EQ(parse_lm_head_precision("f32"), LmHeadPrecision::kF32);
  EXPECT_THROW(parse_lm_head_precision("int4"), Error);
}

}  // namespace
}  // namespace atom::cpu
