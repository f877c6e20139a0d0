#include "backend/cuda/calibration/device_context.h"

#include <cstring>

#include "common/error.h"

namespace atom::cuda::calib {

void check_cublas(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS) fail("{} failed: {} ({})", call, cublasGetStatusString(status), int(status));
}

void check_cusolver(cusolverStatus_t status, const char* call) {
  if (status != CUSOLVER_STATUS_SUCCESS) fail("{} failed: cusolver status {}", call, int(status));
}

DeviceContext::DeviceContext(int device) : device_(device) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    fail("no CUDA device ({})", status != cudaSuccess ? cudaGetErrorString(status) : "none found");
  }
  if (device < 0 || device >= count) fail("CUDA device {} does not exist ({} found)", device, count);
  ATOM_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp prop{};
  ATOM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  std::strncpy(name_, prop.name, sizeof(name_) - 1);
  ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  check_cublas(cublasCreate(&blas_), "cublasCreate");
  check_cublas(cublasSetStream(blas_, stream_), "cublasSetStream");
  // fp32 products stay fp32 (no TF32): the calibration must compute what the CPU computes.
  check_cublas(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  check_cusolver(cusolverDnCreate(&solver_), "cusolverDnCreate");
  check_cusolver(cusolverDnSetStream(solver_, stream_), "cusolverDnSetStream");
  ATOM_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool_, device));
  // Freed blocks stay in the pool for the next layer instead of going back to the driver at each sync.
  std::uint64_t keep_all = ~std::uint64_t{0};
  ATOM_CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep_all));
  std::uint64_t zero = 0;
  ATOM_CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &zero));
}

DeviceContext::~DeviceContext() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (solver_ != nullptr) cusolverDnDestroy(solver_);
  if (blas_ != nullptr) cublasDestroy(blas_);
  if (pool_ != nullptr) cudaMemPoolTrimTo(pool_, 0);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

void DeviceContext::synchronize() const { ATOM_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

std::int64_t DeviceContext::peak_buffer_bytes() const {
  std::uint64_t high = 0;
  ATOM_CUDA_CHECK(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &high));
  return static_cast<std::int64_t>(high);
}

std::int64_t DeviceContext::device_bytes_in_use() const {
  std::size_t free = 0, total = 0;
  ATOM_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return static_cast<std::int64_t>(total - free);
}

}  // namespace atom::cuda::calib
