#pragma once
// The GPU quantizer's device state: one stream with its cuBLAS and cuSOLVER handles (everything runs in
// order on that stream), and buffers allocated in stream order from the device's memory pool, whose
// high-water mark is the run's peak GPU memory.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include "backend/cuda/common/cuda_check.h"

namespace atom::cuda::calib {

// Throw atom::Error naming the call when a cuBLAS / cuSOLVER call fails.
void check_cublas(cublasStatus_t status, const char* call);
void check_cusolver(cusolverStatus_t status, const char* call);

class DeviceContext {
 public:
  // Throws atom::Error when there is no CUDA device (or `device` is not one).
  explicit DeviceContext(int device = 0);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  cusolverDnHandle_t solver() const { return solver_; }
  void synchronize() const;
  const char* device_name() const { return name_; }

  // The most bytes the stream's buffers held at once since construction.
  std::int64_t peak_buffer_bytes() const;
  // Device memory in use now by every process and context (total - free).
  std::int64_t device_bytes_in_use() const;

 private:
  int device_ = 0;
  char name_[256] = {};
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
  cudaMemPool_t pool_ = nullptr;
};

// A device array of T allocated and freed in the order of `stream` (move-only).
template <typename T>
class StreamBuffer {
 public:
  StreamBuffer() = default;
  StreamBuffer(std::size_t count, cudaStream_t stream) { allocate(count, stream); }
  ~StreamBuffer() { reset(); }
  StreamBuffer(StreamBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)), stream_(o.stream_) {}
  StreamBuffer& operator=(StreamBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
      stream_ = o.stream_;
    }
    return *this;
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;

  void allocate(std::size_t count, cudaStream_t stream) {
    reset();
    stream_ = stream;
    if (count > 0) ATOM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&ptr_), count * sizeof(T), stream));
    size_ = count;
  }
  void reset() noexcept {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
    ptr_ = nullptr;
    size_ = 0;
  }
  void zero() {
    if (size_ > 0) ATOM_CUDA_CHECK(cudaMemsetAsync(ptr_, 0, bytes(), stream_));
  }
  // Allocates host.size() elements and copies them in (the host memory must stay valid until the stream
  // reaches the copy; callers synchronize or keep it alive).
  void upload(std::span<const T> host, cudaStream_t stream) {
    allocate(host.size(), stream);
    if (!host.empty())
      ATOM_CUDA_CHECK(cudaMemcpyAsync(ptr_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice, stream));
  }

  T* get() const { return ptr_; }
  std::size_t size() const { return size_; }
  std::size_t bytes() const { return size_ * sizeof(T); }
  bool empty() const { return size_ == 0; }

 private:
  T* ptr_ = nullptr;
  std::size_t size_ = 0;
  cudaStream_t stream_ = nullptr;
};

}  // namespace atom::cuda::calib
