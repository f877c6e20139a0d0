#pragma once
// GPTQ on the GPU: quant::gptq_quantize's algorithm and contract (gptq.h) with the Hessian in GPU memory:
// Cholesky factorizations and the inverse on cuSOLVER (fp64), the per-column quantization and its feedback
// inside a block in one kernel (a thread per output row), the lazy update of later columns as one cuBLAS
// fp32 GEMM per block. Codes equal the CPU's except where fp32 summation order decides a rounding tie.
#include <cstdint>
#include <span>

#include "backend/cuda/calibration/device_context.h"
#include "format/format.h"
#include "quant/gptq.h"

namespace atom::quant {

// HessianAccumulator (gptq.h) on the device: H = 2/n * sum over rows of x^T x, each add() one fp32 SYRK
// (cuBLAS) joined into an fp64 sum, as the CPU joins its 256-row fp32 chunks.
class CudaHessianAccumulator {
 public:
  CudaHessianAccumulator(cuda::calib::DeviceContext& ctx, std::int64_t k);
  void add(const float* x, std::int64_t m);  // device x [m, k]
  std::int64_t samples() const { return samples_; }
  // The Hessian [k, k] (symmetric; zeros before any sample), moved out: the accumulator is spent.
  cuda::calib::StreamBuffer<double> take_hessian();

 private:
  cuda::calib::DeviceContext& ctx_;
  std::int64_t k_, samples_ = 0;
  cuda::calib::StreamBuffer<double> sum_;  // upper triangle (column-major) of sum x^T x
  cuda::calib::StreamBuffer<float> chunk_;
};

// hessian: device pointer to the K x K Hessian (original channel order, symmetric).
QuantizedLinearWeights cuda_gptq_quantize(cuda::calib::DeviceContext& ctx, std::span<const float> w, std::int64_t n,
                                          const double* hessian, std::span<const std::int32_t> perm,
                                          const WeightQuantSpec& spec, const GptqOptions& options, const char* what,
                                          GptqReport* report = nullptr);

}  // namespace atom::quant
