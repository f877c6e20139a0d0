#pragma once
// Library GEMMs the Atom kernels are measured against (bench/backend/cuda/gemm/bench_gemm.cu): cuBLAS FP16,
// cuBLASLt INT8 and cuBLASLt FP8 (E4M3). All compute y[m, n] = x[m, k] * w[n, k]^T with row-major x, w, y.
#include <cstdint>
#include <map>
#include <tuple>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace atom::cuda {

class GemmBaselines {
 public:
  explicit GemmBaselines(cudaStream_t stream);
  ~GemmBaselines();
  GemmBaselines(const GemmBaselines&) = delete;
  GemmBaselines& operator=(const GemmBaselines&) = delete;

  // fp16 x fp16 -> fp16, fp32 accumulation (cublasGemmEx).
  void f16(const void* x, const void* w, void* y, int m, int n, int k);
  // int8 x int8 -> int32 (cuBLASLt, exact).
  void i8(const std::int8_t* x, const std::int8_t* w, std::int32_t* y, int m, int n, int k);
  // e4m3 x e4m3 -> bf16, fp32 accumulation with cuBLASLt's fast accumulation (as torch._scaled_mm's
  // use_fast_accum), unit scales.
  void fp8(const void* x, const void* w, void* y, int m, int n, int k);

 private:
  enum class Kind { kI8, kFp8 };
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  const Plan& plan(Kind kind, int m, int n, int k);

  cudaStream_t stream_;
  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  std::map<std::tuple<int, int, int, int>, Plan> plans_;
};

}  // namespace atom::cuda
