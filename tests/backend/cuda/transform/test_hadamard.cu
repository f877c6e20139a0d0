// silu_mul_hadamard_f16 vs backend/cpu/hadamard.h's transform in fp64 on fresh random rows: every size class
// (K = 1, a small Paley base, the Llama-2 (344 x 32) and Llama-3 (28 x 512) intermediate sizes, P = 8), with
// and without the random signs, the SiLU product or the transform alone, in place, and more rows than one
// scratch pass. The GPU keeps fp32 until one fp16 rounding: each output within ~1 fp16 ulp of the fp64 value.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <cublas_v2.h>

#include "../common/device_array.cuh"
#include "backend/cpu/hadamard.h"
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/transform/hadamard.h"
#include <stdexcept>
#include "common/half.h"

namespace atom::cuda {
namespace {

using testing::DeviceArray;

struct Case {
  int n, rows;
  bool randomized, silu, in_place;
};

void run_case(cublasHandle_t blas, const Case& c) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("n=" + std::to_string(c.n) + " rows=" + std::to_string(c.rows) + " randomized=" +
               std::to_string(c.randomized) + " silu=" + std::to_string(c.silu) + " in_place=" +
               std::to_string(c.in_place) + " seed=" + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const quant::HadamardTransform t(c.n, c.randomized, seed);
  const HadamardHost host = hadamard_host(t);
  DeviceArray<std::uint16_t> base(host.base.empty() ? std::vector<std::uint16_t>(1) : host.base);
  DeviceArray<std::uint32_t> signs(host.sign_bits.empty() ? std::vector<std::uint32_t>(1) : host.sign_bits);
  const HadamardView view{host.n, host.k, host.p, host.scale, host.base.empty() ? nullptr : base.get(),
                          host.sign_bits.empty() ? nullptr : signs.get()};

  // gate and up interleaved per row as gate_up is ([rows][2n]); stride padded by 8.
  const std::int64_t stride = 2 * static_cast<std::int64_t>(c.n) + 8;
  std::vector<std::uint16_t> rows(static_cast<std::size_t>(c.rows * stride));
  for (auto& h : rows) h = fp32_to_fp16(normal(rng));
  DeviceArray<std::uint16_t> d_rows(rows);
  DeviceArray<std::uint16_t> d_out(static_cast<std::size_t>(c.rows) * c.n);  // poisoned
  DeviceArray<std::uint8_t> scratch(std::max<std::size_t>(16, hadamard_scratch_bytes(view)));

  SiluMulHadamardParams p;
  p.num_tokens = c.rows;
  p.transform = view;
  p.gate = d_rows.get();
  p.gate_stride = stride;
  p.up = c.silu ? d_rows.get() + c.n : nullptr;
  p.up_stride = stride;
  p.out = c.in_place ? d_rows.get() : d_out.get();
  p.out_stride = c.in_place ? stride : c.n;
  p.scratch = scratch.get();
  p.blas = blas;
  silu_mul_hadamard_f16(p, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<std::uint16_t> got_rows = c.in_place ? d_rows.download() : d_out.download();

  long bad = 0;
  double worst = 0.0;
  std::vector<double> x(static_cast<std::size_t>(c.n));
  for (int r = 0; r < c.rows; ++r) {
    for (int i = 0; i < c.n; ++i) {
      const double g = fp16_to_fp32(rows[static_cast<std::size_t>(r * stride + i)]);
      const double u = fp16_to_fp32(rows[static_cast<std::size_t>(r * stride + c.n + i)]);
      x[static_cast<std::size_t>(i)] = c.silu ? g / (1.0 + std::exp(-g)) * u : g;
    }
    t.apply(x.data(), 1);
    double rms = 0.0;
    for (const double v : x) rms += v * v;
    rms = std::sqrt(rms / c.n);
    const std::int64_t out_stride = c.in_place ? stride : c.n;
    for (int i = 0; i < c.n; ++i) {
      const double want = x[static_cast<std::size_t>(i)];
      const double got = fp16_to_fp32(got_rows[static_cast<std::size_t>(r * out_stride + i)]);
      // One fp16 rounding (2^-11 relative) plus the fast SiLU's fp32 error, spread by the transform.
      const double err = std::fabs(got - want), bound = std::ldexp(std::fabs(want), -11) * 1.01 + 2e-5 * rms;
      worst = std::max(worst, err / (std::fabs(want) + rms));
      bad += !(err <= bound);
    }
  }
  EXPECT_EQ(bad, 0) << "outputs beyond one fp16 rounding of the fp64 transform (worst relative " << worst << ")";
}

class CudaHadamard : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(cublasCreate(&blas_), CUBLAS_STATUS_SUCCESS); }
  void TearDown() override { cublasDestroy(blas_); }
  cublasHandle_t blas_ = nullptr;
};

TEST_F(CudaHadamard, SiluMulThenTransformMatchesFp64) {
  for (const int n : {4096, 640, 1536, 96, 11008, 14336}) {
    run_case(blas_, {n, 5, false, true, false});
    run_case(blas_, {n, 3, true, true, false});
  }
}

TEST_F(CudaHadamard, TransformAloneInPlaceAndManyRows) {
  run_case(blas_, {640, 300, false, false, true});  // two scratch passes (256 + 44 rows)
  run_case(blas_, {11008, 257, true, true, true});
  run_case(blas_, {2048, 300, true, false, true});  // K = 1: no GEMM
}

TEST_F(CudaHadamard, RejectsBadParams) {
  SiluMulHadamardParams p;
  p.num_tokens = 1;
  p.transform = HadamardView{640, 20, 32, 0.04f, nullptr, nullptr};
  EXPECT_THROW(check_params(p), std::runtime_error);  // K > 1 without H_K, handle or scratch
  p.transform = HadamardView{600, 20, 30, 0.04f, nullptr, nullptr};
  EXPECT_THROW(check_params(p), std::runtime_error);  // P not a power of two
  p.transform = HadamardView{1024, 1, 1024, 0.03125f, nullptr, nullptr};
  EXPECT_THROW(check_params(p), std::runtime_error);  // null gate
}

}  // namespace
}  // namespace atom::cuda
