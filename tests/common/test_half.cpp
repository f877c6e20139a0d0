// fp16/bf16 conversions against the compiler's own _Float16 and exhaustive round trips.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>

#include "common/half.h"

namespace atom {
namespace {

TEST(Half, EveryFp16ValueRoundTripsThroughFp32) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_fp32(static_cast<std::uint16_t>(h));
    const _Float16 ref = std::bit_cast<_Float16>(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(static_cast<float>(ref))) << h;
      continue;
    }
    EXPECT_EQ(std::bit_cast<std::uint32_t>(f), std::bit_cast<std::uint32_t>(static_cast<float>(ref))) << h;
    EXPECT_EQ(fp32_to_fp16(f), h) << h;
  }
}

TEST(Half, Fp32ToFp16RoundsLikeTheCompiler) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 2'000'000; ++i) {
    const float f = std::bit_cast<float>(bits(rng));
    if (std::isnan(f)) continue;
    const std::uint16_t ref = std::bit_cast<std::uint16_t>(static_cast<_Float16>(f));
    ASSERT_EQ(fp32_to_fp16(f), ref) << std::hexfloat << f;
  }
  // Ties to even at the subnormal and normal boundaries, and the overflow threshold.
  for (float f : {65504.0f, 65519.99f, 65520.0f, 5.9604645e-08f, 2.9802322e-08f, 8.940697e-08f, 6.1035156e-05f})
    EXPECT_EQ(fp32_to_fp16(f), std::bit_cast<std::uint16_t>(static_cast<_Float16>(f))) << f;
}

TEST(Half, Bf16RoundsToNearestEven) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3F808000u)), 0x3F80);  // tie -> even
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3F818000u)), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3F808001u)), 0x3F81);
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(std::nanf("")))));
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> u(-1e6f, 1e6f);
  for (int i = 0; i < 100000; ++i) {
    const float f = u(rng);
    const float back = bf16_to_fp32(fp32_to_bf16(f));
    EXPECT_LE(std::fabs(back - f), std::ldexp(std::fabs(f), -8)) << f;
  }
}

}  // namespace
}  // namespace atom
