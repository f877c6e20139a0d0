// Int8Linear (int8 weights per row x int8 activations per row, the integer path's lm_head): quantization
// bit-exact against a scalar reference, products bit-exact against an int64 reference with the documented
// fp32 epilogue and within the quantization error of the fp64 product, every kernel this CPU has, rows
// alone == rows in a batch.
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

TEST(Int8Linear, EveryKernelMatchesTheIntegerReferenceAndTheFp64ProductWithinQuantizationError) {
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
      const std::vector<float> x = random_vector(rng, static_cast<std::size_t>(m * K), 1.0f);
      for (Int8Kernel kernel : kernels_here()) {
        std::vector<float> y(static_cast<std::size_t>(m * N));
        op.forward(x.data(), m, y.data(), kernel);
        for (std::int64_t r = 0; r < m; ++r) {
          const float* xr = x.data() + r * K;
          const float sx = reference_scale(xr, K);
          for (std::int64_t n = 0; n < N; ++n) {
            const float sw = op.scales()[n];
            std::int64_t dot = 0;
            double exact = 0, bound = 0;
            for (std::int64_t k = 0; k < K; ++k) {
              const std::int64_t qx = reference_code(xr[k], sx), qw = op.code(n, k);
              dot += qx * qw;
              const double wv = w[static_cast<std::size_t>(n * K + k)];
              exact += xr[k] * wv;
              // |x w - sx qx sw qw| <= |x| sw / 2 + |w| sx / 2 + sx sw / 4 (each code within half a step)
              bound += std::fabs(xr[k]) * sw / 2 + std::fabs(wv) * sx / 2 + double(sx) * sw / 4;
            }
            const float want = (static_cast<float>(dot) * sx) * sw;
            const float got = y[static_cast<std::size_t>(r * N + n)];
            ASSERT_EQ(got, want) << int8_kernel_name(kernel) << " " << N << "x" << K << " m=" << m
                                 << " r=" << r << " n=" << n;
            EXPECT_LE(std::fabs(got - exact), bound * 1.001 + 1e-6 * std::fabs(exact)) << N << "x" << K;
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
