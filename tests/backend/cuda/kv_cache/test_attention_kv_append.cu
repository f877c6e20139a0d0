// kv_cache_append vs the scalar reference: without RoPE the cache rows are bit-exact with
// quant::quantize_asymmetric_groups (fp16 rows: exact copies); with RoPE, Q and K are compared with an
// fp64 rotation (one fp16 ulp) and the quantized K rows with the format's error bound. Rows of the pool
// that no token targets must keep their poison. With the Q/K Hadamard of rotated checkpoints, the fp64
// reference applies backend/cpu/hadamard.h's transform after the rotation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../common/device_array.cuh"
#include "backend/cpu/hadamard.h"
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/kv_cache/kv_cache_layout.h"
#include "common/half.h"
#include "format/format.h"

namespace atom::cuda {
namespace {

using testing::DeviceArray;
using testing::kPoison;

enum class Rope { kNone, kHalf, kInterleaved };

struct Setup {
  KvDtype dtype;
  int head_dim, num_qo_heads, num_kv_heads;
  Rope rope;
  bool qk_hadamard = false;
  bool centered = false;  // KV centering: random per-(head, channel) vectors subtracted from K and V
  int group_size = 0;     // channels per params word (0: head_dim)
};

std::string describe(const Setup& s, unsigned seed) {
  return std::string("dtype=") + kv_dtype_name(s.dtype) + " D=" + std::to_string(s.head_dim) +
         " Hq=" + std::to_string(s.num_qo_heads) + " Hkv=" + std::to_string(s.num_kv_heads) +
         " rope=" + std::to_string(static_cast<int>(s.rope)) + " hadamard=" + std::to_string(s.qk_hadamard) +
         " centered=" + std::to_string(s.centered) + " group=" + std::to_string(s.group_size) +
         " seed=" + std::to_string(seed);
}

// fp64 rotation of one head vector using the kernel's fp32 angle.
std::vector<double> rotate(const std::vector<float>& x, int pos, const std::vector<float>& inv_freq, Rope rope,
                           bool hadamard) {
  const int d = static_cast<int>(x.size());
  std::vector<double> out(x.begin(), x.end());
  if (hadamard) {
    std::vector<double> rotated = rotate(x, pos, inv_freq, rope, false);
    quant::HadamardTransform(d).apply(rotated.data(), 1);
    return rotated;
  }
  if (rope == Rope::kNone) return out;
  for (int i = 0; i < d / 2; ++i) {
    const int a = rope == Rope::kHalf ? i : 2 * i, b = rope == Rope::kHalf ? i + d / 2 : 2 * i + 1;
    const float angle = static_cast<float>(pos) * inv_freq[i];
    const double c = std::cos(static_cast<double>(angle)), s = std::sin(static_cast<double>(angle));
    out[a] = x[a] * c - x[b] * s;
    out[b] = x[b] * c + x[a] * s;
  }
  return out;
}

void run_append(const Setup& s) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE(describe(s, seed));
  std::mt19937 rng(seed);
  const int d = s.head_dim, hq = s.num_qo_heads, hkv = s.num_kv_heads;
  const int page_size = 16, num_pages = 20, num_tokens = 37;
  const int row_bytes = kv_row_bytes(s.dtype, d);
  const bool quantized = s.dtype != KvDtype::kF16;
  const int bits = s.dtype == KvDtype::kU4 ? 4 : 8;
  const int group = s.group_size == 0 ? d : s.group_size, groups = d / group;  // params words per row

  // Fused [T, Hq + 2 Hkv, D] qkv rows, as a QKV GEMM writes them.
  const int heads = hq + 2 * hkv;
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<std::uint16_t> qkv(static_cast<std::size_t>(num_tokens) * heads * d);
  for (auto& h : qkv) h = fp32_to_fp16(normal(rng));
  // Distinct random slots; every 9th token is padding.
  std::vector<std::int32_t> all_slots(num_pages * page_size);
  std::iota(all_slots.begin(), all_slots.end(), 0);
  std::shuffle(all_slots.begin(), all_slots.end(), rng);
  std::vector<std::int32_t> slots(all_slots.begin(), all_slots.begin() + num_tokens), positions(num_tokens);
  for (int t = 0; t < num_tokens; ++t) {
    if (t % 9 == 4) slots[t] = -1;
    positions[t] = std::uniform_int_distribution<int>(0, 8000)(rng);
  }
  // KV centering vectors, [Hkv, D] each; large enough to move every row's range.
  std::vector<float> k_center(static_cast<std::size_t>(hkv) * d, 0.0f), v_center(k_center.size(), 0.0f);
  if (s.centered) {
    std::normal_distribution<float> offsets(1.0f, 3.0f);
    for (auto& c : k_center) c = offsets(rng);
    for (auto& c : v_center) c = -offsets(rng);
  }
  std::vector<float> inv_freq(d / 2);
  for (int i = 0; i < d / 2; ++i) inv_freq[i] = static_cast<float>(std::pow(500000.0, -2.0 * i / d));

  PagedKvCache cache;
  cache.dtype = s.dtype;
  cache.num_pages = num_pages;
  cache.page_size = page_size;
  cache.num_kv_heads = hkv;
  cache.head_dim = d;
  cache.group_size = s.group_size;
  DeviceArray<std::uint8_t> k_codes(cache.codes_bytes()), v_codes(cache.codes_bytes());
  DeviceArray<std::uint32_t> k_params(quantized ? cache.rows() * groups : 1),
      v_params(quantized ? cache.rows() * groups : 1);
  if (quantized) EXPECT_EQ(cache.params_bytes(), cache.rows() * groups * sizeof(std::uint32_t));
  cache.k_codes = k_codes.get();
  cache.v_codes = v_codes.get();
  cache.k_params = quantized ? k_params.get() : nullptr;
  cache.v_params = quantized ? v_params.get() : nullptr;
  DeviceArray<std::uint16_t> d_qkv(qkv), d_q_out(static_cast<std::size_t>(num_tokens) * hq * d);
  DeviceArray<std::int32_t> d_slots(slots), d_positions(positions);
  DeviceArray<float> d_inv_freq(inv_freq), d_k_center(k_center), d_v_center(v_center);

  KvAppendParams p;
  p.cache = cache;
  p.num_tokens = num_tokens;
  p.num_qo_heads = hq;
  p.q = d_qkv.get();
  p.q_token_stride = static_cast<std::int64_t>(heads) * d;
  p.q_head_stride = d;
  p.q_out = d_q_out.get();
  p.q_out_token_stride = static_cast<std::int64_t>(hq) * d;
  p.q_out_head_stride = d;
  p.k = d_qkv.get() + static_cast<std::size_t>(hq) * d;
  p.k_token_stride = p.q_token_stride;
  p.k_head_stride = d;
  p.v = d_qkv.get() + static_cast<std::size_t>(hq + hkv) * d;
  p.v_token_stride = p.q_token_stride;
  p.v_head_stride = d;
  p.positions = d_positions.get();
  p.slots = d_slots.get();
  p.rope_inv_freq = s.rope == Rope::kNone ? nullptr : d_inv_freq.get();
  p.rope_interleaved = s.rope == Rope::kInterleaved;
  p.qk_hadamard = s.qk_hadamard;
  p.k_center = s.centered ? d_k_center.get() : nullptr;
  p.v_center = s.centered ? d_v_center.get() : nullptr;
  kv_cache_append(p, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());

  const auto kc = k_codes.download(), vc = v_codes.download();
  const auto kp = k_params.download(), vp = v_params.download();
  const auto q_out = d_q_out.download();
  const auto head_of = [&](int t, int h) {  // fp32 copy of qkv head h of token t
    std::vector<float> x(d);
    for (int i = 0; i < d; ++i) x[i] = fp16_to_fp32(qkv[(static_cast<std::size_t>(t) * heads + h) * d + i]);
    return x;
  };
  const auto within_rounding = [](double got, double want, double scale_of_inputs) {
    return std::fabs(got - want) <= std::ldexp(std::fabs(want), -10) + 1e-6 * scale_of_inputs + std::ldexp(1.0, -24);
  };

  // Q: rotated (or copied), one fp16 ulp.
  long bad_q = 0;
  for (int t = 0; t < num_tokens; ++t) {
    for (int h = 0; h < hq; ++h) {
      const auto x = head_of(t, h);
      const auto want = rotate(x, positions[t], inv_freq, s.rope, s.qk_hadamard);
      for (int i = 0; i < d; ++i) {
        const double got = fp16_to_fp32(q_out[(static_cast<std::size_t>(t) * hq + h) * d + i]);
        bad_q += !within_rounding(got, want[i], 8.0);
      }
    }
  }
  EXPECT_EQ(bad_q, 0) << "rotated q";

  std::vector<char> written(cache.rows(), 0);
  long bad_exact = 0, bad_bound = 0, bad_params = 0;
  for (int t = 0; t < num_tokens; ++t) {
    if (slots[t] < 0) continue;
    for (int h = 0; h < hkv; ++h) {
      const std::size_t row = (static_cast<std::size_t>(slots[t] / page_size) * hkv + h) * page_size + slots[t] % page_size;
      written[row] = 1;
      for (int which = 0; which < 2; ++which) {  // 0: K, 1: V
        auto x = head_of(t, hq + which * hkv + h);
        const float* center = (which == 0 ? k_center : v_center).data() + static_cast<std::size_t>(h) * d;
        const bool rotated = which == 0 && (s.rope != Rope::kNone || s.qk_hadamard);
        if (s.centered && !rotated) {  // the kernel's rule: fp32 difference, rounded to fp16, then stored
          for (int i = 0; i < d; ++i) x[i] = fp16_to_fp32(fp32_to_fp16(x[i] - center[i]));
        }
        const auto& codes = which == 0 ? kc : vc;
        const std::uint8_t* got = codes.data() + row * row_bytes;
        const bool exact_expected = which == 1 || (s.rope == Rope::kNone && !s.qk_hadamard);
        if (exact_expected) {
          if (!quantized) {
            for (int i = 0; i < d; ++i) {
              const std::uint16_t want16 = fp32_to_fp16(x[i]);  // the input itself when not centered
              bad_exact += std::memcmp(got + 2 * i, &want16, 2) != 0;
            }
          } else {
            const auto ref = quant::quantize_asymmetric_groups(x, 1, d, group, bits);
            const auto want = bits == 4 ? quant::pack_nibbles(ref.codes) : ref.codes;
            for (int i = 0; i < row_bytes; ++i) bad_exact += got[i] != want[i];
            for (int g = 0; g < groups; ++g) {
              const std::uint32_t param = (which == 0 ? kp : vp)[row * groups + g];
              bad_exact += (param & 0xFFFFu) != ref.scales[g];
              bad_exact += (param >> 16) != ref.mins[g];
            }
          }
          continue;
        }
        // K after RoPE: decoded row vs the fp64 rotation (minus the centering vector).
        auto want = rotate(x, positions[t], inv_freq, s.rope, s.qk_hadamard);
        if (s.centered) {
          for (int i = 0; i < d; ++i) want[i] -= center[i];
        }
        if (!quantized) {
          for (int i = 0; i < d; ++i) {
            std::uint16_t h16;
            std::memcpy(&h16, got + 2 * i, 2);
            bad_bound += !within_rounding(fp16_to_fp32(h16), want[i], 8.0);
          }
          continue;
        }
        const double qmax = (1 << bits) - 1;
        for (int g = 0; g < groups; ++g) {  // each group's scale and minimum against its own range
          const std::uint32_t param = kp[row * groups + g];
          const float scale = fp16_to_fp32(static_cast<std::uint16_t>(param & 0xFFFFu));
          const float lo = fp16_to_fp32(static_cast<std::uint16_t>(param >> 16));
          const double lo_want = *std::min_element(want.begin() + g * group, want.begin() + (g + 1) * group);
          const double hi_want = *std::max_element(want.begin() + g * group, want.begin() + (g + 1) * group);
          bad_params += std::fabs(scale - (hi_want - lo_want) / qmax) > 0.01 * scale + 1e-4;
          bad_params += std::fabs(lo - lo_want) > std::ldexp(std::fabs(lo_want), -9) + 1e-5;
        }
        const auto codes_row = bits == 4 ? quant::unpack_nibbles({got, static_cast<std::size_t>(row_bytes)}, d)
                                         : std::vector<std::uint8_t>(got, got + d);
        for (int i = 0; i < d; ++i) {
          const std::uint32_t param = kp[row * groups + i / group];
          const float scale = fp16_to_fp32(static_cast<std::uint16_t>(param & 0xFFFFu));
          const float lo = fp16_to_fp32(static_cast<std::uint16_t>(param >> 16));
          const double deq = quant::dequantize_asymmetric_value(codes_row[i], static_cast<std::uint16_t>(param & 0xFFFFu),
                                                                static_cast<std::uint16_t>(param >> 16));
          const double bound = scale * (0.5 + 15.0 * std::ldexp(1.0, -10)) + std::ldexp(std::fabs(lo), -10) +
                               std::ldexp(std::fabs(want[i]), -10) + 1e-5;
          bad_bound += std::fabs(deq - want[i]) > bound;
        }
      }
    }
  }
  EXPECT_EQ(bad_exact, 0) << "rows differing from the scalar reference";
  EXPECT_EQ(bad_bound, 0) << "rotated K rows beyond the quantization error bound";
  EXPECT_EQ(bad_params, 0) << "rotated K scale/min far from the row's range";

  long touched = 0;
  for (std::size_t row = 0; row < cache.rows(); ++row) {
    if (written[row]) continue;
    for (int i = 0; i < row_bytes; ++i) touched += kc[row * row_bytes + i] != kPoison || vc[row * row_bytes + i] != kPoison;
    for (int g = 0; quantized && g < groups; ++g) {
      touched += kp[row * groups + g] != 0xA5A5A5A5u || vp[row * groups + g] != 0xA5A5A5A5u;
    }
  }
  EXPECT_EQ(touched, 0) << "bytes written outside the target slots";
}

TEST(CudaKvAppend, BitExactWithoutRope) {
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kU8, KvDtype::kU4}) {
    run_append({dtype, 128, 8, 2, Rope::kNone});
    run_append({dtype, 64, 9, 3, Rope::kNone});
  }
}

TEST(CudaKvAppend, RopeRotateHalf) {
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kU8, KvDtype::kU4}) {
    run_append({dtype, 128, 4, 4, Rope::kHalf});
    run_append({dtype, 64, 9, 3, Rope::kHalf});
  }
}

TEST(CudaKvAppend, RopeThenQkHadamard) {
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kU8, KvDtype::kU4}) {
    run_append({dtype, 128, 8, 2, Rope::kHalf, true});
    run_append({dtype, 64, 9, 3, Rope::kHalf, true});
  }
  run_append({KvDtype::kU4, 128, 4, 4, Rope::kInterleaved, true});
  run_append({KvDtype::kF16, 64, 4, 2, Rope::kNone, true});
}

// KV centering: without RoPE K and V rows are bit-exact against the scalar rule on fp16(x - c); with RoPE and
// the Q/K Hadamard, K is rotated, then centered, within the format's bound. Q never changes.
TEST(CudaKvAppend, KvCentering) {
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kU8, KvDtype::kU4}) {
    run_append({dtype, 128, 8, 2, Rope::kNone, false, true});
    run_append({dtype, 64, 9, 3, Rope::kNone, false, true});
    run_append({dtype, 64, 9, 3, Rope::kHalf, true, true});
  }
  run_append({KvDtype::kU4, 128, 4, 4, Rope::kHalf, false, true});
  run_append({KvDtype::kU4, 128, 4, 2, Rope::kInterleaved, true, true});
}

TEST(CudaKvAppend, RopeInterleaved) {
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kU4}) {
    run_append({dtype, 128, 8, 1, Rope::kInterleaved});
    run_append({dtype, 64, 3, 3, Rope::kInterleaved});
  }
}

// Groups of 32 and 64 channels: every params word of a row, bit for bit against the scalar rule per group.
TEST(CudaKvAppend, GroupsOfChannels) {
  for (KvDtype dtype : {KvDtype::kU8, KvDtype::kU4}) {
    for (int group : {32, 64}) {
      run_append({dtype, 128, 8, 2, Rope::kNone, false, false, group});
      run_append({dtype, 128, 4, 4, Rope::kHalf, true, true, group});
    }
    run_append({dtype, 64, 9, 3, Rope::kNone, false, false, 32});
    run_append({dtype, 64, 9, 3, Rope::kHalf, true, true, 32});
    run_append({dtype, 64, 9, 3, Rope::kNone, false, true, 64});  // = head_dim written out
  }
}

TEST(CudaKvAppend, RejectsBadCaches) {
  DeviceArray<std::uint8_t> buf(1 << 16);
  DeviceArray<std::uint16_t> input(512);
  DeviceArray<std::int32_t> slots(std::vector<std::int32_t>{0});
  PagedKvCache cache;
  cache.dtype = KvDtype::kU4;
  cache.num_pages = 4;
  cache.page_size = 16;
  cache.num_kv_heads = 2;
  cache.head_dim = 128;
  cache.k_codes = cache.v_codes = buf.get();
  cache.k_params = cache.v_params = reinterpret_cast<std::uint32_t*>(buf.get());
  KvAppendParams p;
  p.cache = cache;
  p.num_tokens = 1;
  p.k = p.v = input.get();
  p.k_token_stride = p.v_token_stride = 256;
  p.k_head_stride = p.v_head_stride = 128;
  p.slots = slots.get();
  EXPECT_NO_THROW(kv_cache_append(p, nullptr));
  auto bad = p;
  bad.cache.head_dim = 96;
  EXPECT_THROW(kv_cache_append(bad, nullptr), std::exception);
  bad = p;
  bad.cache.page_size = 12;
  EXPECT_THROW(kv_cache_append(bad, nullptr), std::exception);
  bad = p;
  bad.cache.k_params = nullptr;
  EXPECT_THROW(kv_cache_append(bad, nullptr), std::exception);
  for (int group : {16, 48, 256}) {  // under 32, not dividing head_dim, larger than it
    bad = p;
    bad.cache.group_size = group;
    try {
      kv_cache_append(bad, nullptr);
      ADD_FAILURE() << "group_size " << group << " accepted";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find("cache.group_size " + std::to_string(group)), std::string::npos) << e.what();
    }
  }
  bad = p;
  bad.cache.dtype = KvDtype::kF16;
  bad.cache.group_size = 32;
  EXPECT_THROW(kv_cache_append(bad, nullptr), std::exception);
  bad = p;
  bad.rope_inv_freq = reinterpret_cast<const float*>(buf.get());  // RoPE without positions
  EXPECT_THROW(kv_cache_append(bad, nullptr), std::exception);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace atom::cuda
