// dequantize_w4a4_weights_f16 against a scalar loop over the CANONICAL layout (FORMAT.md): fresh random codes
// and scales, prepacked on the device, dequantized into a poisoned buffer, compared bit for bit; columns past
// k and rows past n must keep the poison.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../common/device_array.cuh"
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/gemm/dequantize_weights.h"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "backend/cuda/gemm/gemm_w4a4_layout.h"
#include "common/half.h"

namespace atom::cuda {
namespace {

using testing::DeviceArray;
using testing::kPoison;

bool have_gpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}
#define ATOM_REQUIRE_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device"

constexpr std::uint16_t kPoison16 = kPoison * 0x0101u;

// Canonical weights on the host (fp16 scales as bits).
struct HostWeights {
  int n = 0, k_normal = 0, n_outliers = 0;
  std::vector<std::uint8_t> packed;           // [n, k_normal/2]
  std::vector<std::uint16_t> scales;          // [n, k_normal/128]
  std::vector<std::int8_t> outliers;          // [n, n_outliers]
  std::vector<std::uint16_t> outlier_scales;  // [n]
  int groups() const { return k_normal / kW4A4Group; }
  int k() const { return k_normal + n_outliers; }
};

// Any finite fp16: zero, subnormal, up to 65504, a quarter of them negative; large ones overflow the product
// to inf, subnormal ones round in the subnormal range.
std::uint16_t random_finite_fp16(std::mt19937& rng) {
  std::uniform_int_distribution<int> exponent(0, 30), mantissa(0, 1023), quarter(0, 3);
  return static_cast<std::uint16_t>((quarter(rng) == 0 ? 0x8000 : 0) | exponent(rng) << 10 | mantissa(rng));
}

HostWeights make_weights(int n, int k_normal, int n_outliers, std::mt19937& rng) {
  HostWeights w;
  w.n = n;
  w.k_normal = k_normal;
  w.n_outliers = n_outliers;
  std::uniform_int_distribution<int> byte(0, 255);
  w.packed.resize((std::size_t)n * k_normal / 2);
  for (auto& b : w.packed) b = static_cast<std::uint8_t>(byte(rng));
  w.scales.resize((std::size_t)n * w.groups());
  for (auto& s : w.scales) s = random_finite_fp16(rng);
  w.outliers.resize((std::size_t)n * n_outliers);
  for (auto& o : w.outliers) o = static_cast<std::int8_t>(byte(rng) - 128);
  w.outlier_scales.resize(n_outliers > 0 ? n : 0);
  for (auto& s : w.outlier_scales) s = random_finite_fp16(rng);
  return w;
}

int int4_code(const HostWeights& w, int row, int j) {
  const std::uint8_t b = w.packed[(std::size_t)row * (w.k_normal / 2) + j / 2];
  const int nibble = (j % 2 == 0) ? (b & 0xF) : (b >> 4);
  return nibble >= 8 ? nibble - 16 : nibble;
}

// out[r, j] of the contract, from the canonical layout. scale_of(row, g) gives the fp32 scale of group g
// (g == groups: the outlier scale).
template <class ScaleOf>
std::uint16_t reference_value(const HostWeights& w, int row, int j, ScaleOf scale_of) {
  if (j < w.k_normal)
    return fp32_to_fp16(static_cast<float>(int4_code(w, row, j)) * scale_of(row, j / kW4A4Group));
  const int o = j - w.k_normal;
  return fp32_to_fp16(static_cast<float>(w.outliers[(std::size_t)row * w.n_outliers + o]) *
                      scale_of(row, w.groups()));
}

// The canonical weights on the device and their prepacked copy.
struct DeviceWeights {
  DeviceArray<std::uint8_t> packed_canonical;
  DeviceArray<std::uint16_t> scales_canonical, outlier_scales_canonical;
  DeviceArray<std::int8_t> outliers_canonical;
  DeviceArray<std::uint8_t> packed;
  DeviceArray<std::int8_t> outliers;
  DeviceArray<float> scales;
  W4A4PackedWeights view;

  explicit DeviceWeights(const HostWeights& w)
      : packed_canonical(w.packed),
        scales_canonical(w.scales),
        outlier_scales_canonical(w.outlier_scales),
        outliers_canonical(w.outliers),
        packed(w4a4_packed_sizes(w.n, w.k_normal, w.n_outliers).packed_bytes),
        outliers(w4a4_packed_sizes(w.n, w.k_normal, w.n_outliers).outlier_bytes),
        scales(w4a4_packed_sizes(w.n, w.k_normal, w.n_outliers).scale_bytes / sizeof(float)) {
    W4A4CanonicalWeights c;
    c.packed = packed_canonical.get();
    c.scales = scales_canonical.get();
    c.outliers = outliers_canonical.get();
    c.outlier_scales = outlier_scales_canonical.get();
    c.n = w.n;
    c.k_normal = w.k_normal;
    c.n_outliers = w.n_outliers;
    view.packed = packed.get();
    view.outliers = outliers.get();
    view.scales = scales.get();
    view.n = w.n;
    view.k_normal = w.k_normal;
    view.n_outliers = w.n_outliers;
    prepack_w4a4_weights_device(c, view, nullptr);
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  }
};

// Dequantizes into a poisoned [n + extra rows, out_stride] buffer and checks every element: values for
// r < n, j < k; poison elsewhere.
template <class ScaleOf>
void dequantize_and_check(const HostWeights& w, const W4A4PackedWeights& packed, std::int64_t out_stride,
                          ScaleOf scale_of) {
  constexpr int kExtraRows = 80;  // more than the tile padding of any shape: rows past n must stay poisoned
  DeviceArray<std::uint16_t> out((std::size_t)(w.n + kExtraRows) * out_stride);
  dequantize_w4a4_weights_f16(packed, out.get(), out_stride, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<std::uint16_t> got = out.download();
  int bad = 0;
  for (int r = 0; r < w.n + kExtraRows && bad < 10; ++r)
    for (std::int64_t j = 0; j < out_stride && bad < 10; ++j) {
      const std::uint16_t g = got[(std::size_t)r * out_stride + j];
      const bool inside = r < w.n && j < w.k();
      const std::uint16_t want = inside ? reference_value(w, r, static_cast<int>(j), scale_of) : kPoison16;
      if (g != want) {
        ++bad;
        ADD_FAILURE() << "row " << r << " column " << j << (inside ? "" : " (outside the matrix)")
                      << ": got 0x" << std::hex << g << ", want 0x" << want << std::dec;
      }
    }
}

struct Shape {
  int n, k_normal, n_outliers;
};

std::string describe(const Shape& s, std::int64_t stride) {
  return "n=" + std::to_string(s.n) + " k_normal=" + std::to_string(s.k_normal) +
         " n_outliers=" + std::to_string(s.n_outliers) + " out_stride=" + std::to_string(stride);
}

TEST(DequantizeW4A4, MatchesCanonicalReferenceBitExactly) {
  ATOM_REQUIRE_GPU();
  std::mt19937 rng(4417);
  // n: partial tiles (not multiples of 128, one smaller than a block of 64 rows); groups: 1, odd and even
  // counts; outliers: none, 16, a full chunk, partial second and third chunks.
  const Shape shapes[] = {{200, 256, 0},   {8, 128, 0},    {328, 384, 16},   {136, 1024, 128},
                          {264, 640, 144}, {72, 128, 272}, {1032, 4096, 128}};
  for (const Shape& s : shapes)
    for (const int pad : {0, 24}) {
      const std::int64_t stride = s.k_normal + s.n_outliers + pad;
      SCOPED_TRACE(describe(s, stride));
      const HostWeights w = make_weights(s.n, s.k_normal, s.n_outliers, rng);
      const DeviceWeights d(w);
      dequantize_and_check(w, d.view, stride, [&](int row, int g) {
        return fp16_to_fp32(g < w.groups() ? w.scales[(std::size_t)row * w.groups() + g]
                                           : w.outlier_scales[row]);
      });
    }
}

// The W8A8 shape: no INT4 part, every channel an INT8 "outlier".
TEST(DequantizeW4A4, W8A8AllOutlierShape) {
  ATOM_REQUIRE_GPU();
  std::mt19937 rng(4418);
  for (const Shape s : {Shape{200, 0, 272}, Shape{392, 0, 1024}, Shape{8, 0, 16}}) {
    const std::int64_t stride = s.n_outliers + 8;
    SCOPED_TRACE(describe(s, stride));
    const HostWeights w = make_weights(s.n, s.k_normal, s.n_outliers, rng);
    const DeviceWeights d(w);
    dequantize_and_check(w, d.view, stride,
                         [&](int row, int) { return fp16_to_fp32(w.outlier_scales[row]); });
  }
}

// Every code extreme: all INT4 codes -8 and 7, INT8 codes -128 and 127, with the largest and smallest scales.
TEST(DequantizeW4A4, ExtremeCodesAndScales) {
  ATOM_REQUIRE_GPU();
  std::mt19937 rng(4419);
  HostWeights w = make_weights(136, 256, 32, rng);
  for (std::size_t i = 0; i < w.packed.size(); ++i)
    w.packed[i] = (i % 3 == 0) ? 0x88 : (i % 3 == 1 ? 0x77 : 0x87);
  for (std::size_t i = 0; i < w.outliers.size(); ++i) w.outliers[i] = (i % 2 == 0) ? -128 : 127;
  const std::uint16_t extremes[] = {0x7BFF, 0xFBFF, 0x0001, 0x8001, 0x0400, 0x0000, 0x8000, 0x3C00, 0x03FF};
  for (std::size_t i = 0; i < w.scales.size(); ++i) w.scales[i] = extremes[i % std::size(extremes)];
  for (std::size_t i = 0; i < w.outlier_scales.size(); ++i)
    w.outlier_scales[i] = extremes[(i + 3) % std::size(extremes)];
  const DeviceWeights d(w);
  dequantize_and_check(w, d.view, w.k(), [&](int row, int g) {
    return fp16_to_fp32(g < w.groups() ? w.scales[(std::size_t)row * w.groups() + g] : w.outlier_scales[row]);
  });
}

// Prepack writes fp16 values as scales; other fp32 scales (not produced by prepack, but allowed by the
// contract) must still give fp16(code * scale) with the product rounded in fp32.
TEST(DequantizeW4A4, Fp32ScalesThatAreNotFp16Values) {
  ATOM_REQUIRE_GPU();
  std::mt19937 rng(4420);
  const HostWeights w = make_weights(200, 384, 144, rng);
  const DeviceWeights d(w);
  std::vector<float> packed_scales = d.scales.download();
  std::uniform_real_distribution<float> log2s(-30.0f, 12.0f);
  std::uniform_int_distribution<int> coin(0, 2);
  for (float& s : packed_scales)
    if (coin(rng) != 0) s = std::exp2(log2s(rng)) * (1.0f + std::ldexp(1.0f, -20));  // 2/3 not fp16 values
  ATOM_CUDA_CHECK(cudaMemcpy(d.scales.get(), packed_scales.data(), packed_scales.size() * sizeof(float),
                             cudaMemcpyHostToDevice));
  const int groups = w.groups();
  dequantize_and_check(w, d.view, w.k() + 8, [&](int row, int g) {
    const int tile = row / kW4A4TileRows;
    const int pos = layout::scale_position_of_channel(row % kW4A4TileRows);
    return packed_scales[((std::size_t)tile * (groups + 1) + g) * kW4A4TileRows + pos];
  });
}

// The checks run on the host before any launch; without a GPU, aligned fake addresses stand in for the
// buffers (a check that let one through would then fail on the launch, not pass).
TEST(DequantizeW4A4, BadArgumentsAreRejected) {
  std::mt19937 rng(4421);
  const HostWeights w = make_weights(200, 256, 16, rng);
  const std::int64_t k = w.k();
  std::optional<DeviceWeights> device_weights;
  std::optional<DeviceArray<std::uint16_t>> device_out;
  W4A4PackedWeights good;
  std::uint16_t* out_ptr = nullptr;
  if (have_gpu()) {
    device_weights.emplace(w);
    device_out.emplace((std::size_t)w.n * (k + 8) + 8);
    good = device_weights->view;
    out_ptr = device_out->get();
  } else {
    constexpr std::uintptr_t kFake = std::uintptr_t{1} << 20;
    good.packed = reinterpret_cast<std::uint8_t*>(kFake);
    good.outliers = reinterpret_cast<std::int8_t*>(2 * kFake);
    good.scales = reinterpret_cast<float*>(3 * kFake);
    good.n = w.n;
    good.k_normal = w.k_normal;
    good.n_outliers = w.n_outliers;
    out_ptr = reinterpret_cast<std::uint16_t*>(4 * kFake);
  }
  const auto expect_error = [](const W4A4PackedWeights& pw, std::uint16_t* o, std::int64_t stride,
                               const std::string& mention) {
    try {
      dequantize_w4a4_weights_f16(pw, o, stride, nullptr);
      ADD_FAILURE() << "no error; expected one mentioning '" << mention << "'";
    } catch (const std::runtime_error& e) {  // atom::Error
      EXPECT_NE(std::string(e.what()).find(mention), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("dequantize_w4a4_weights_f16"), std::string::npos) << e.what();
    }
  };
  expect_error(good, nullptr, k, "out is null");
  expect_error(good, out_ptr + 1, k, "16-byte aligned");
  expect_error(good, out_ptr, k - 8, "out_stride");
  expect_error(good, out_ptr, k + 4, "out_stride");
  const auto with = [&](auto change) {
    W4A4PackedWeights bad = good;
    change(bad);
    return bad;
  };
  expect_error(with([](auto& b) { b.packed = nullptr; }), out_ptr, k, "packed");
  expect_error(with([](auto& b) { b.packed += 4; }), out_ptr, k, "packed");
  expect_error(with([](auto& b) { b.outliers = nullptr; }), out_ptr, k, "outlier");
  expect_error(with([](auto& b) { b.scales = nullptr; }), out_ptr, k, "scales");
  expect_error(with([](auto& b) { b.n = 100; }), out_ptr, k, "100");         // not a multiple of 8
  expect_error(with([](auto& b) { b.k_normal = 200; }), out_ptr, k, "200");  // not a multiple of 128
  expect_error(with([](auto& b) { b.n_outliers = 24; }), out_ptr, k, "24");  // not a multiple of 16
  if (device_out) {                                                          // nothing was written
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());
    for (const std::uint16_t v : device_out->download()) ASSERT_EQ(v, kPoison16);
  }
}

// The layer shapes of a 7B Llama MLP (down: n 4096, k 11008; gate/up: n 11008, k 4096) with a chunk of
// outliers: checks the full output and prints the time and effective bandwidth (bytes read + written).
TEST(DequantizeW4A4, LlamaMlpShapesWithTiming) {
  ATOM_REQUIRE_GPU();
  std::mt19937 rng(4422);
  for (const Shape s : {Shape{4096, 10880, 128}, Shape{11008, 3968, 128}}) {
    const std::int64_t stride = s.k_normal + s.n_outliers;
    SCOPED_TRACE(describe(s, stride));
    const HostWeights w = make_weights(s.n, s.k_normal, s.n_outliers, rng);
    const DeviceWeights d(w);
    dequantize_and_check(w, d.view, stride, [&](int row, int g) {
      return fp16_to_fp32(g < w.groups() ? w.scales[(std::size_t)row * w.groups() + g]
                                         : w.outlier_scales[row]);
    });
    DeviceArray<std::uint16_t> out((std::size_t)s.n * stride);
    cudaEvent_t start, stop;
    ATOM_CUDA_CHECK(cudaEventCreate(&start));
    ATOM_CUDA_CHECK(cudaEventCreate(&stop));
    dequantize_w4a4_weights_f16(d.view, out.get(), stride, nullptr);  // warm-up
    constexpr int kIters = 20;
    ATOM_CUDA_CHECK(cudaEventRecord(start));
    for (int i = 0; i < kIters; ++i) dequantize_w4a4_weights_f16(d.view, out.get(), stride, nullptr);
    ATOM_CUDA_CHECK(cudaEventRecord(stop));
    ATOM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    ATOM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    ATOM_CUDA_CHECK(cudaEventDestroy(start));
    ATOM_CUDA_CHECK(cudaEventDestroy(stop));
    const auto sizes = w4a4_packed_sizes(s.n, s.k_normal, s.n_outliers);
    const double bytes =
        (double)sizes.packed_bytes + sizes.outlier_bytes + sizes.scale_bytes + 2.0 * s.n * (double)stride;
    const double us = 1000.0 * ms / kIters;
    std::printf("[ dequant  ] n %d k %lld: %.1f us, %.0f GB/s\n", s.n, (long long)stride, us,
                bytes / us / 1e3);
  }
}

}  // namespace
}  // namespace atom::cuda
