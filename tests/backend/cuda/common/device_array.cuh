#pragma once
// Device buffer for CUDA tests: allocated poisoned (every byte kPoison), so unwritten outputs show.
#include <algorithm>
#include <cstddef>
#include <vector>

#include "backend/cuda/common/cuda_check.h"

namespace atom::cuda::testing {

constexpr unsigned char kPoison = 0xA5;

template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(std::size_t n) : n_(n) {
    ATOM_CUDA_CHECK(cudaMalloc(&ptr_, std::max<std::size_t>(n, 1) * sizeof(T)));
    ATOM_CUDA_CHECK(cudaMemset(ptr_, kPoison, std::max<std::size_t>(n, 1) * sizeof(T)));
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    ATOM_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(ptr_); }
  T* get() const { return ptr_; }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    ATOM_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* ptr_ = nullptr;
  std::size_t n_;
};

}  // namespace atom::cuda::testing
