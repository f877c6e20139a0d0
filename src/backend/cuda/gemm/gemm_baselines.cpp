#include "backend/cuda/gemm/gemm_baselines.h"

#include <cuda_fp16.h>

#include "backend/cuda/common/cuda_check.h"
#include "common/error.h"

namespace atom::cuda {
namespace {

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("{} failed: cuBLAS status {} ({})", what, static_cast<int>(s), cublasGetStatusString(s));
}

}  // namespace

GemmBaselines::GemmBaselines(cudaStream_t stream) : stream_(stream) {
  check_blas(cublasCreate(&blas_), "cublasCreate");
  check_blas(cublasLtCreate(&lt_), "cublasLtCreate");
  workspace_bytes_ = std::size_t{64} << 20;
  ATOM_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
  check_blas(cublasSetStream(blas_, stream_), "cublasSetStream");
  check_blas(cublasSetWorkspace(blas_, workspace_, workspace_bytes_), "cublasSetWorkspace");
}

GemmBaselines::~GemmBaselines() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }
  cublasLtDestroy(lt_);
  cublasDestroy(blas_);
  cudaFree(workspace_);
}

// Column-major view: y^T [n, m] = w [k, n]^T-op * x^T [k, m], i.e. A = w (transposed, ld k), B = x (ld k).
void GemmBaselines::f16(const void* x, const void* w, void* y, int m, int n, int k) {
  const float alpha = 1.0f, beta = 0.0f;
  check_blas(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16F, k, x, CUDA_R_16F, k,
                          &beta, y, CUDA_R_16F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx (fp16)");
}

const GemmBaselines::Plan& GemmBaselines::plan(Kind kind, int m, int n, int k) {
  const auto key = std::make_tuple(static_cast<int>(kind), m, n, k);
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  Plan p;
  const bool i8 = kind == Kind::kI8;
  const cublasComputeType_t compute = i8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F;
  const cudaDataType_t scale_type = i8 ? CUDA_R_32I : CUDA_R_32F;
  const cudaDataType_t in_type = i8 ? CUDA_R_8I : CUDA_R_8F_E4M3;
  const cudaDataType_t out_type = i8 ? CUDA_R_32I : CUDA_R_16BF;
  check_blas(cublasLtMatmulDescCreate(&p.desc, compute, scale_type), "cublasLtMatmulDescCreate");
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  check_blas(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)), "TRANSA");
  check_blas(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)), "TRANSB");
  if (!i8) {
    const std::int8_t fast = 1;
    check_blas(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)),
               "FAST_ACCUM");
  }
  check_blas(cublasLtMatrixLayoutCreate(&p.a, in_type, k, n, k), "layout A");
  check_blas(cublasLtMatrixLayoutCreate(&p.b, in_type, k, m, k), "layout B");
  check_blas(cublasLtMatrixLayoutCreate(&p.c, out_type, n, m, n), "layout C");
  cublasLtMatmulPreference_t pref = nullptr;
  check_blas(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  check_blas(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_,
                                                  sizeof(workspace_bytes_)),
             "MAX_WORKSPACE_BYTES");
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt_, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (s != CUBLAS_STATUS_SUCCESS || found == 0)
    fail("cuBLASLt has no {} algorithm for m {} n {} k {} (status {})", i8 ? "int8" : "fp8", m, n, k,
         static_cast<int>(s));
  p.algo = result.algo;
  return plans_.emplace(key, p).first->second;
}

void GemmBaselines::i8(const std::int8_t* x, const std::int8_t* w, std::int32_t* y, int m, int n, int k) {
  const Plan& p = plan(Kind::kI8, m, n, k);
  const std::int32_t alpha = 1, beta = 0;
  check_blas(cublasLtMatmul(lt_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo, workspace_,
                            workspace_bytes_, stream_),
             "cublasLtMatmul (int8)");
}

void GemmBaselines::fp8(const void* x, const void* w, void* y, int m, int n, int k) {
  const Plan& p = plan(Kind::kFp8, m, n, k);
  const float alpha = 1.0f, beta = 0.0f;
  check_blas(cublasLtMatmul(lt_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo, workspace_,
                            workspace_bytes_, stream_),
             "cublasLtMatmul (fp8)");
}

}  // namespace atom::cuda
