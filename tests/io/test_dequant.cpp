// Dequantization of every DType: bit-exact against gguf-py references (scripts/dev/make_dequant_refs.py)
// and against the format formulas on hand-built blocks.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/half.h"
#include "io/dtype.h"
#include "io/ggml_quants.h"

namespace atom {
namespace {

const std::string kRefDir = std::string(ATOM_TEST_DATA_DIR) + "/io/gguf";

std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) ADD_FAILURE() << "cannot open " << path << " (run scripts/dev/make_dequant_refs.py)";
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

DType dtype_named(const std::string& name) {
  for (int i = 0; i <= static_cast<int>(DType::Q6_K); ++i) {
    if (dtype_name(static_cast<DType>(i)) == name) return static_cast<DType>(i);
  }
  ADD_FAILURE() << "no DType named " << name;
  return DType::F32;
}

// Bit-exact, except that any NaN matches any NaN (x86 F16C quiets signalling NaNs, table conversions
// do not; both are ggml).
::testing::AssertionResult same_float(float expected, float got, std::size_t i) {
  if (std::isnan(expected) && std::isnan(got)) return ::testing::AssertionSuccess();
  if (std::bit_cast<std::uint32_t>(expected) == std::bit_cast<std::uint32_t>(got)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << fmt::format("element {}: expected {} ({:#010x}), got {} ({:#010x})", i, expected,
                        std::bit_cast<std::uint32_t>(expected), got, std::bit_cast<std::uint32_t>(got));
}

TEST(DType, TraitsMatchBlockStructs) {
  EXPECT_EQ(dtype_traits(DType::F32).block_bytes, 4u);
  EXPECT_EQ(dtype_traits(DType::BF16).block_bytes, 2u);
  EXPECT_EQ(dtype_traits(DType::F64).block_bytes, 8u);
  EXPECT_EQ(dtype_traits(DType::U8).block_bytes, 1u);
  EXPECT_EQ(dtype_traits(DType::I64).block_bytes, 8u);
  EXPECT_EQ(dtype_traits(DType::Q4_0).block_bytes, 18u);
  EXPECT_EQ(dtype_traits(DType::Q4_1).block_bytes, 20u);
  EXPECT_EQ(dtype_traits(DType::Q5_0).block_bytes, 22u);
  EXPECT_EQ(dtype_traits(DType::Q5_1).block_bytes, 24u);
  EXPECT_EQ(dtype_traits(DType::Q8_0).block_bytes, 34u);
  EXPECT_EQ(dtype_traits(DType::Q4_K).block_bytes, 144u);
  EXPECT_EQ(dtype_traits(DType::Q5_K).block_bytes, 176u);
  EXPECT_EQ(dtype_traits(DType::Q6_K).block_bytes, 210u);
  EXPECT_EQ(dtype_traits(DType::Q6_K).block_elems, 256u);
  EXPECT_EQ(dtype_traits(DType::Q8_0).block_elems, 32u);
  EXPECT_EQ(dtype_name(DType::Q5_K), "Q5_K");
  EXPECT_EQ(dtype_bytes(DType::Q4_K, 512), 288u);
  EXPECT_THROW(dtype_traits(static_cast<DType>(200)), Error);
}

TEST(DType, GgmlTypeIdsRoundTrip) {
  for (int i = 0; i <= static_cast<int>(DType::Q6_K); ++i) {
    const auto t = static_cast<DType>(i);
    if (t == DType::U8) {
      EXPECT_THROW(ggml::ggml_type_from_dtype(t), Error);
      continue;
    }
    const std::uint32_t id = ggml::ggml_type_from_dtype(t);
    EXPECT_EQ(ggml::dtype_from_ggml_type(id), t);
    EXPECT_EQ(ggml::ggml_type_name(id), dtype_name(t));
  }
  EXPECT_EQ(ggml::ggml_type_from_dtype(DType::Q4_K), 12u);
  EXPECT_EQ(ggml::ggml_type_from_dtype(DType::BF16), 30u);
  EXPECT_FALSE(ggml::dtype_from_ggml_type(16).has_value());  // IQ2_XXS: known to ggml, not readable here
  EXPECT_EQ(ggml::ggml_type_name(16), "IQ2_XXS");
  EXPECT_FALSE(ggml::dtype_from_ggml_type(4).has_value());  // removed Q4_2
  EXPECT_EQ(ggml::ggml_type_name(4), "");
}

TEST(Dequant, MatchesGgufPyReferences) {
  std::ifstream manifest_in(kRefDir + "/dequant_refs.json");
  ASSERT_TRUE(manifest_in) << "missing " << kRefDir << "/dequant_refs.json";
  const auto manifest = nlohmann::json::parse(manifest_in);
  std::set<std::string> covered;
  for (const auto& c : manifest.at("cases")) {
    const std::string name = c.at("name");
    SCOPED_TRACE(name);
    const DType t = dtype_named(c.at("dtype"));
    const std::size_t n = c.at("n");
    const auto stored = read_bytes(kRefDir + "/" + name + ".blocks");
    const auto expected_bytes = read_bytes(kRefDir + "/" + name + ".f32");
    ASSERT_EQ(stored.size(), dtype_bytes(t, n));
    ASSERT_EQ(expected_bytes.size(), n * sizeof(float));
    std::vector<float> expected(n), got(n, -12345.0f);
    std::memcpy(expected.data(), expected_bytes.data(), expected_bytes.size());
    dequantize_to_f32(t, stored.data(), got.data(), n);
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < n && mismatches < 5; ++i) {
      const auto r = same_float(expected[i], got[i], i);
      if (!r) {
        ADD_FAILURE() << r.message();
        ++mismatches;
      }
    }
    covered.insert(std::string(dtype_name(t)));
  }
  // Every DType has a reference.
  for (int i = 0; i <= static_cast<int>(DType::Q6_K); ++i) {
    const std::string name(dtype_name(static_cast<DType>(i)));
    if (name != "F32") {
      EXPECT_TRUE(covered.count(name)) << "no reference case for " << name;
    }
  }
}

TEST(Dequant, UnalignedSourceAndOffsets) {
  // Blocks may start at any address in a mapped file (GGUF alignment can be 1).
  std::mt19937 rng(7);
  std::vector<std::uint8_t> buf(1 + 3 * sizeof(ggml::BlockQ6_K));
  for (auto& b : buf) b = static_cast<std::uint8_t>(rng());
  for (std::size_t i = 0; i < 3; ++i) {
    const std::size_t off = 1 + i * sizeof(ggml::BlockQ6_K) + 208;
    const std::uint16_t d = fp32_to_fp16(0.125f);
    std::memcpy(&buf[off], &d, 2);
  }
  std::vector<std::uint8_t> aligned(buf.begin() + 1, buf.end());
  std::vector<float> a(3 * 256), b(3 * 256);
  dequantize_to_f32(DType::Q6_K, buf.data() + 1, a.data(), a.size());
  dequantize_to_f32(DType::Q6_K, aligned.data(), b.data(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST(Dequant, RejectsPartialBlocks) {
  std::vector<std::uint8_t> src(1024);
  std::vector<float> dst(1024);
  try {
    dequantize_to_f32(DType::Q4_K, src.data(), dst.data(), 100);
    FAIL() << "expected atom::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q4_K"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("256"), std::string::npos) << e.what();
  }
  EXPECT_THROW(dequantize_to_f32(DType::Q8_0, src.data(), dst.data(), 33), Error);
  EXPECT_NO_THROW(dequantize_to_f32(DType::Q8_0, src.data(), dst.data(), 0));
}

// The parallel chunked path of dequantize_to_f32 equals one sequential pass of the block functions.
TEST(Dequant, LargeInputsMatchSequentialBlocks) {
  std::mt19937 rng(11);
  const std::size_t n = 5 * 65536 + 3 * 256;  // several chunks and a partial one
  for (const DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q4_K,
                        DType::Q5_K, DType::Q6_K, DType::F16, DType::BF16}) {
    SCOPED_TRACE(std::string(dtype_name(t)));
    std::vector<std::uint8_t> src(dtype_bytes(t, n));
    for (auto& b : src) b = static_cast<std::uint8_t>(rng());
    std::vector<float> got(n), want(n);
    dequantize_to_f32(t, src.data(), got.data(), n);
    const std::size_t blocks = n / dtype_traits(t).block_elems;
    switch (t) {
      case DType::Q4_0: ggml::dequantize_q4_0(src.data(), want.data(), blocks); break;
      case DType::Q4_1: ggml::dequantize_q4_1(src.data(), want.data(), blocks); break;
      case DType::Q5_0: ggml::dequantize_q5_0(src.data(), want.data(), blocks); break;
      case DType::Q5_1: ggml::dequantize_q5_1(src.data(), want.data(), blocks); break;
      case DType::Q8_0: ggml::dequantize_q8_0(src.data(), want.data(), blocks); break;
      case DType::Q4_K: ggml::dequantize_q4_k(src.data(), want.data(), blocks); break;
      case DType::Q5_K: ggml::dequantize_q5_k(src.data(), want.data(), blocks); break;
      case DType::Q6_K: ggml::dequantize_q6_k(src.data(), want.data(), blocks); break;
      case DType::F16:
      case DType::BF16:
        for (std::size_t i = 0; i < n; ++i) {
          std::uint16_t h;
          std::memcpy(&h, &src[2 * i], 2);
          want[i] = t == DType::F16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
        }
        break;
      default: FAIL();
    }
    EXPECT_EQ(std::memcmp(got.data(), want.data(), n * sizeof(float)), 0);
  }
}

// ---- hand-built blocks against the format formulas (double arithmetic, exact here)

std::uint16_t h(float x) {
  const std::uint16_t bits = fp32_to_fp16(x);
  EXPECT_EQ(fp16_to_fp32(bits), x) << "test scale must be exact in fp16";
  return bits;
}

template <class Block>
std::vector<float> dequant_block(DType t, const Block& b) {
  std::vector<float> y(dtype_traits(t).block_elems);
  dequantize_to_f32(t, &b, y.data(), y.size());
  return y;
}

TEST(Dequant, Q4_0Formula) {
  ggml::BlockQ4_0 b{};
  b.d = h(-0.375f);
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<std::uint8_t>(j | ((15 - j) << 4));
  const auto y = dequant_block(DType::Q4_0, b);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], (j - 8) * -0.375);
    EXPECT_EQ(y[j + 16], ((15 - j) - 8) * -0.375);
  }
}

TEST(Dequant, Q4_1Formula) {
  ggml::BlockQ4_1 b{};
  b.d = h(0.25f);
  b.m = h(-1.5f);
  for (int j = 0; j < 16; ++j)
    b.qs[j] = static_cast<std::uint8_t>(((j * 7) & 15) | (((j * 3 + 1) & 15) << 4));
  const auto y = dequant_block(DType::Q4_1, b);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], ((j * 7) & 15) * 0.25 - 1.5);
    EXPECT_EQ(y[j + 16], ((j * 3 + 1) & 15) * 0.25 - 1.5);
  }
}

// Q5: bit 4 of element j (0..31) is bit j of the little-endian u32 qh.
template <class Block>
void fill_q5(Block& b, const int (&q)[32]) {
  std::uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<std::uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
  for (int j = 0; j < 32; ++j) qh |= static_cast<std::uint32_t>((q[j] >> 4) & 1) << j;
  std::memcpy(b.qh, &qh, 4);
}

TEST(Dequant, Q5_0AndQ5_1Formula) {
  int q[32];
  std::mt19937 rng(5);
  for (int& v : q) v = static_cast<int>(rng() % 32);
  q[0] = 0;
  q[31] = 31;
  ggml::BlockQ5_0 b0{};
  b0.d = h(1.0f / 64);
  fill_q5(b0, q);
  ggml::BlockQ5_1 b1{};
  b1.d = h(3.0f);
  b1.m = h(-40.0f);
  fill_q5(b1, q);
  const auto y0 = dequant_block(DType::Q5_0, b0);
  const auto y1 = dequant_block(DType::Q5_1, b1);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(y0[j], (q[j] - 16) / 64.0) << j;
    EXPECT_EQ(y1[j], q[j] * 3.0 - 40.0) << j;
  }
}

TEST(Dequant, Q8_0Formula) {
  ggml::BlockQ8_0 b{};
  b.d = h(0.125f);
  for (int j = 0; j < 32; ++j) b.qs[j] = static_cast<std::int8_t>(j * 8 - 128);
  const auto y = dequant_block(DType::Q8_0, b);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], (j * 8 - 128) * 0.125);
}

// Packs 8 six-bit scales and mins as ggml's Q4_K/Q5_K scales[12] (inverse of get_scale_min_k4).
void pack_k_scales(const int (&sc)[8], const int (&mn)[8], std::uint8_t (&out)[12]) {
  std::memset(out, 0, 12);
  for (int j = 0; j < 4; ++j) {
    out[j] = static_cast<std::uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    out[j + 4] = static_cast<std::uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6));
    out[j + 8] = static_cast<std::uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
}

TEST(Dequant, KScalePackingRoundTrips) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    int sc[8], mn[8];
    for (int j = 0; j < 8; ++j) sc[j] = static_cast<int>(rng() % 64), mn[j] = static_cast<int>(rng() % 64);
    std::uint8_t packed[12];
    pack_k_scales(sc, mn, packed);
    for (int j = 0; j < 8; ++j) {
      std::uint8_t s, m;
      ggml::k_quant_scale_min(j, packed, &s, &m);
      ASSERT_EQ(s, sc[j]);
      ASSERT_EQ(m, mn[j]);
    }
  }
}

TEST(Dequant, Q4_KAndQ5_KFormula) {
  std::mt19937 rng(9);
  int sc[8], mn[8], q[256];
  for (int j = 0; j < 8; ++j) sc[j] = static_cast<int>(rng() % 64), mn[j] = static_cast<int>(rng() % 64);
  sc[7] = 63;
  mn[7] = 63;
  for (int& v : q) v = static_cast<int>(rng() % 32);
  const double d = 0.0078125, dmin = -0.5;

  // Sub-block s (32 elements) uses bytes qs[32 * (s / 2) + l], low nibble for even s, high for odd s.
  ggml::BlockQ4_K b4{};
  ggml::BlockQ5_K b5{};
  b4.d = b5.d = h(static_cast<float>(d));
  b4.dmin = b5.dmin = h(static_cast<float>(dmin));
  pack_k_scales(sc, mn, b4.scales);
  pack_k_scales(sc, mn, b5.scales);
  for (int s = 0; s < 8; ++s) {
    for (int l = 0; l < 32; ++l) {
      const int v = q[32 * s + l];
      const int shift = (s % 2) * 4;
      b4.qs[32 * (s / 2) + l] |= static_cast<std::uint8_t>((v & 15) << shift);
      b5.qs[32 * (s / 2) + l] |= static_cast<std::uint8_t>((v & 15) << shift);
      b5.qh[l] |= static_cast<std::uint8_t>(((v >> 4) & 1) << s);  // bit 4 of element l of sub-block s
    }
  }
  const auto y4 = dequant_block(DType::Q4_K, b4);
  const auto y5 = dequant_block(DType::Q5_K, b5);
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32;
    EXPECT_EQ(y4[e], static_cast<float>(d * sc[s] * (q[e] & 15) - dmin * mn[s])) << e;
    EXPECT_EQ(y5[e], static_cast<float>(d * sc[s] * q[e] - dmin * mn[s])) << e;
  }
}

TEST(Dequant, Q6_KFormula) {
  // Element e: half n = e / 128, group g = (e % 128) / 32, lane l = e % 32. Low 4 bits in
  // ql[64n + 32 * (g % 2) + l] (low nibble for g < 2, high for g >= 2), high 2 bits in bits 2g..2g+1 of
  // qh[32n + l], scale scales[8n + 2g + l / 16]; x = d * scale * (q - 32).
  std::mt19937 rng(13);
  int q[256];
  for (int& v : q) v = static_cast<int>(rng() % 64);
  q[0] = 0;
  q[255] = 63;
  ggml::BlockQ6_K b{};
  const double d = 0.03125;
  b.d = h(static_cast<float>(d));
  for (int i = 0; i < 16; ++i) b.scales[i] = static_cast<std::int8_t>(static_cast<int>(rng() % 256) - 128);
  b.scales[3] = -128;
  b.scales[4] = 127;
  for (int e = 0; e < 256; ++e) {
    const int n = e / 128, g = (e % 128) / 32, l = e % 32;
    b.ql[64 * n + 32 * (g % 2) + l] |= static_cast<std::uint8_t>((q[e] & 15) << (g >= 2 ? 4 : 0));
    b.qh[32 * n + l] |= static_cast<std::uint8_t>((q[e] >> 4) << (2 * g));
  }
  const auto y = dequant_block(DType::Q6_K, b);
  for (int e = 0; e < 256; ++e) {
    const int n = e / 128, g = (e % 128) / 32, l = e % 32;
    EXPECT_EQ(y[e], static_cast<float>(d * b.scales[8 * n + 2 * g + l / 16] * (q[e] - 32))) << e;
  }
}

TEST(Dequant, PlainTypesAsValues) {
  const std::int64_t i64[] = {0, -1, (std::int64_t{1} << 53) + 1, std::numeric_limits<std::int64_t>::min()};
  float y[4];
  dequantize_to_f32(DType::I64, i64, y, 4);
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[1], -1.0f);
  EXPECT_EQ(y[2], 9007199254740992.0f);  // rounded to nearest
  EXPECT_EQ(y[3], -9223372036854775808.0f);
  const std::uint8_t u8[] = {0, 1, 200, 255};
  dequantize_to_f32(DType::U8, u8, y, 4);
  EXPECT_EQ(y[2], 200.0f);
  EXPECT_EQ(y[3], 255.0f);
  const std::int8_t i8[] = {-128, 127, 0, -1};
  dequantize_to_f32(DType::I8, i8, y, 4);
  EXPECT_EQ(y[0], -128.0f);
  EXPECT_EQ(y[1], 127.0f);
  const double f64[] = {1e300, -1e-320, 0.1, -2.5};
  dequantize_to_f32(DType::F64, f64, y, 4);
  EXPECT_TRUE(std::isinf(y[0]));
  EXPECT_EQ(std::bit_cast<std::uint32_t>(y[1]), 0x80000000u);  // underflows to -0
  EXPECT_EQ(y[2], 0.1f);
  EXPECT_EQ(y[3], -2.5f);
  const float f32[] = {1.5f, -0.0f, std::numeric_limits<float>::infinity(), 3e-40f};
  dequantize_to_f32(DType::F32, f32, y, 4);
  EXPECT_EQ(std::memcmp(y, f32, sizeof(f32)), 0);
}

}  // namespace
}  // namespace atom
