// Quantized KV row stores: bit-exact against the format reference, packing, truncation, factories.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>

#include "backend/cpu/quant_kv_cache.h"
#include "common/error.h"
#include "format/format.h"

namespace atom::cpu {
namespace {

std::vector<float> random_rows(std::int64_t n, std::int64_t width, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.3f, 2.0f);
  std::vector<float> x(static_cast<std::size_t>(n * width));
  for (auto& v : x) v = dist(rng);
  return x;
}

// (head_dim, group_size) pairs: group 0 is one group per head; 6 / 2 take the scalar tails.
struct GroupCase {
  std::int64_t head_dim, group_size;
};
constexpr GroupCase kGroupCases[] = {{64, 0}, {64, 32}, {64, 16}, {128, 0}, {128, 32}, {128, 64}, {6, 0}, {6, 2}};

TEST(QuantKvRowStore, ReadsBackTheFormatReferenceBitExactly) {
  for (int bits : {4, 8}) {
    for (const auto [head_dim, group_size] : kGroupCases) {
      SCOPED_TRACE(testing::Message() << bits << " bits, head_dim " << head_dim << ", group " << group_size);
      const std::int64_t heads = 3, width = heads * head_dim;
      const std::int64_t group = group_size == 0 ? head_dim : group_size, groups = width / group;
      QuantKvRowStore store(width, head_dim, bits, group_size);
      EXPECT_EQ(store.dtype(), bits == 4 ? KvDType::U4 : KvDType::U8);
      EXPECT_EQ(store.group_size(), group);
      const auto a = random_rows(5, width, 1), b = random_rows(1, width, 2);
      store.append(a.data(), 5);
      store.append(b.data(), 1);  // decode-style append
      ASSERT_EQ(store.rows(), 6);
      std::vector<float> all(a);
      all.insert(all.end(), b.begin(), b.end());
      const auto q = quant::quantize_asymmetric_groups(all, 6, width, group, bits);
      const auto want = quant::dequantize_asymmetric_groups(q, 6, width, group);
      std::vector<float> got(want.size());
      store.read(0, 6, got.data());
      for (std::size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(std::bit_cast<std::uint32_t>(got[i]), std::bit_cast<std::uint32_t>(want[i])) << i;
      }
      // Stored form: packed codes (low nibble first), fp16 scale and minimum per group, every row.
      for (std::int64_t r = 0; r < 6; ++r) {
        for (std::int64_t g = 0; g < groups; ++g) {
          ASSERT_EQ(store.scales(r)[g], q.scales[r * groups + g]) << "row " << r << " group " << g;
          ASSERT_EQ(store.mins(r)[g], q.mins[r * groups + g]) << "row " << r << " group " << g;
        }
        for (std::int64_t i = 0; i < width; ++i) {
          const std::uint8_t code = bits == 4 ? (store.codes(r)[i / 2] >> (4 * (i & 1))) & 0x0F : store.codes(r)[i];
          ASSERT_EQ(code, q.codes[r * width + i]) << "row " << r << " value " << i;
        }
      }
      // The in-place view says where the same parameters are.
      QuantKvRows view;
      ASSERT_TRUE(store.quantized_rows(view));
      EXPECT_EQ(view.group_size, group);
      EXPECT_EQ(view.param_stride, groups * 2);
      // A partial read and truncation.
      std::vector<float> part(static_cast<std::size_t>(2 * width));
      store.read(3, 5, part.data());
      for (std::int64_t i = 0; i < 2 * width; ++i) EXPECT_EQ(part[i], want[3 * width + i]);
      store.truncate(2);
      EXPECT_EQ(store.rows(), 2);
      store.append(b.data(), 1);
      store.read(2, 3, part.data());
      for (std::int64_t i = 0; i < width; ++i) EXPECT_EQ(part[i], want[5 * width + i]);
      EXPECT_THROW(store.read(0, 4, part.data()), Error);
    }
  }
}

// A group of head_dim written out is the store of one group per head: the same bytes, the same sizes.
TEST(QuantKvRowStore, GroupOfHeadDimIsTheOneGroupPerHeadStore) {
  for (int bits : {4, 8}) {
    for (std::int64_t head_dim : {64, 128}) {
      const std::int64_t width = 2 * head_dim;
      QuantKvRowStore per_head(width, head_dim, bits), explicit_group(width, head_dim, bits, head_dim);
      const auto x = random_rows(7, width, 3);
      per_head.append(x.data(), 7);
      explicit_group.append(x.data(), 7);
      EXPECT_EQ(per_head.bytes(), explicit_group.bytes());
      for (std::int64_t r = 0; r < 7; ++r) {
        EXPECT_EQ(0, std::memcmp(per_head.codes(r), explicit_group.codes(r), static_cast<std::size_t>(width * bits / 8)));
        for (int h = 0; h < 2; ++h) {
          EXPECT_EQ(per_head.scales(r)[h], explicit_group.scales(r)[h]);
          EXPECT_EQ(per_head.mins(r)[h], explicit_group.mins(r)[h]);
        }
      }
    }
  }
}

// Groups of 32 on a head of 64: two parameter pairs per head, 8 more bytes per row of two heads.
TEST(QuantKvRowStore, SmallerGroupsCostTheirParameters) {
  const auto x = random_rows(10, 128, 4);
  QuantKvRowStore per_head(128, 64, 4), g32(128, 64, 4, 32);
  per_head.append(x.data(), 10);
  g32.append(x.data(), 10);
  // codes 64 bytes a row either way; params 2 heads x 4 bytes, or 4 groups x 4 bytes.
  EXPECT_EQ(per_head.bytes(), 10u * (64 + 8));
  EXPECT_EQ(g32.bytes(), 10u * (64 + 16));
}

TEST(QuantKvRowStore, RefusesAGroupThatDoesNotDivideHeadDim) {
  try {
    QuantKvRowStore(128, 64, 4, 48);
    FAIL() << "a group of 48 on head_dim 64 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kv_group_size 48"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("head_dim 64"), std::string::npos) << e.what();
  }
  EXPECT_THROW(QuantKvRowStore(128, 64, 4, 128), Error);  // larger than the head
  EXPECT_THROW(QuantKvRowStore(128, 64, 4, -32), Error);
  EXPECT_THROW(QuantKvRowStore(12, 6, 4, 3), Error);      // odd: UINT4 packs pairs
  EXPECT_THROW(kv_row_store_factory(KvDType::F32, 32), Error);
  EXPECT_THROW(kv_row_store_factory(KvDType::U4, 48)(128, 64), Error);
  EXPECT_EQ(kv_row_store_factory(KvDType::U8, 32)(128, 64)->dtype(), KvDType::U8);
}

TEST(QuantKvRowStore, ConstantHeadsAreExactAndBytesShrink) {
  const std::int64_t head_dim = 64, width = 2 * head_dim;
  std::vector<float> x(static_cast<std::size_t>(width), 0.75f);
  for (std::int64_t i = head_dim; i < width; ++i) x[i] = -2.5f;
  for (auto factory : {make_u4_kv_row_store, make_u8_kv_row_store}) {
    auto store = factory(width, head_dim);
    for (int i = 0; i < 100; ++i) store->append(x.data(), 1);
    std::vector<float> out(static_cast<std::size_t>(width));
    store->read(99, 100, out.data());
    EXPECT_EQ(out, x);
    EXPECT_LT(store->bytes(), 100 * width * sizeof(float) / 2);  // fp32 would take 4 bytes a value
  }
  EXPECT_THROW(QuantKvRowStore(100, 64, 4), Error);
  EXPECT_THROW(QuantKvRowStore(15, 5, 4), Error);
  EXPECT_THROW(QuantKvRowStore(64, 64, 3), Error);
  EXPECT_EQ(kv_row_store_factory(KvDType::U4)(128, 64)->dtype(), KvDType::U4);
}


// The AVX2 group quantizer against the format's scalar rule, bit for bit: codes, fp16 scale and minimum, over
// lengths with and without a scalar tail, both widths, and groups that are constant, hold signed zeros at the
// extremes, span tiny (subnormal fp16 scale) or huge (fp16 overflow) ranges, or hold a NaN or an infinity.
TEST(QuantizeKvGroup, MatchesTheFormatRuleBitForBit) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 9);
  int checked = 0;
  for (int bits : {4, 8}) {
    for (std::int64_t n : {64, 128, 8, 9, 20, 6, 1}) {
      for (int trial = 0; trial < 300; ++trial) {
        std::vector<float> x(static_cast<std::size_t>(n));
        const int kind = pick(rng);
        const float spread = kind == 1 ? 1e-6f : kind == 2 ? 3e4f : 2.0f;
        for (auto& v : x) v = normal(rng) * spread + (kind == 3 ? 5.0f : 0.0f);
        if (kind == 4) std::fill(x.begin(), x.end(), -1.25f);                 // constant: scale 0
        if (kind == 5) for (auto& v : x) v = std::fabs(v);                    // minimum near zero
        if (kind == 6) { for (auto& v : x) v = std::fabs(v); x[n / 2] = 0.0f; x[n - 1] = -0.0f; }  // zeros at the minimum
        if (kind == 7) { for (auto& v : x) v = -std::fabs(v); x[0] = -0.0f; x[n / 3] = 0.0f; }    // zeros at the maximum
        if (kind == 8) x[static_cast<std::size_t>(trial) % n] = std::numeric_limits<float>::quiet_NaN();
        if (kind == 9) x[static_cast<std::size_t>(trial) % n] = -std::numeric_limits<float>::infinity();
        std::vector<std::uint8_t> want(x.size()), got(x.size());
        std::uint16_t want_scale = 1, want_lo = 1, got_scale = 2, got_lo = 2;
        quant::quantize_asymmetric_group(x.data(), n, bits, want.data(), want_scale, want_lo);
        quantize_kv_group(x.data(), n, bits, got.data(), got_scale, got_lo);
        ASSERT_EQ(got, want) << bits << " bits, n " << n << ", kind " << kind << ", trial " << trial;
        ASSERT_EQ(got_scale, want_scale) << bits << " bits, n " << n << ", kind " << kind;
        // A zero minimum's sign is the one thing the rule leaves to the compiler: fminf between +0 and -0 may
        // return either, and GCC builds the inline rule differently per translation unit (seen: +0 here, -0
        // there). Its value, and so every dequantized value, is the same.
        if (want_lo == 0x0000 || want_lo == 0x8000) {
          ASSERT_TRUE(got_lo == 0x0000 || got_lo == 0x8000) << bits << " bits, n " << n << ", kind " << kind;
        } else {
          ASSERT_EQ(got_lo, want_lo) << bits << " bits, n " << n << ", kind " << kind;
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 2 * 7 * 300);
}

}  // namespace
}  // namespace atom::cpu
