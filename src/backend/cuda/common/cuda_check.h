#pragma once
// Error checking for CUDA runtime and cuBLAS calls: every call's status is checked and turned
// into atom::Error naming the call, file and line.
#include <cuda_runtime.h>


#define ATOM_CUDA_CHECK(expr)                                                                \
  do {                                                                                       \
    cudaError_t atom_status_ = (expr);                                                       \
    if (atom_status_ != cudaSuccess)                                                         \
      ::atom::cuda::throw_cuda_error(atom_status_, #expr, __FILE__, __LINE__);               \
  } while (0)

// After a kernel launch: launch-configuration errors surface here, execution errors at the next sync.
#define ATOM_CUDA_CHECK_LAUNCH() ATOM_CUDA_CHECK(cudaGetLastError())

namespace atom::cuda {

// Out of line: nvcc cannot evaluate fmt's compile-time format checks.
[[noreturn]] void throw_cuda_error(cudaError_t status, const char* expr, const char* file, int line);

struct DeviceInfo {
  int index = 0;
  int sm_major = 0, sm_minor = 0;
  int num_sms = 0;
  double memory_gib = 0;
  char name[256] = {};
};

DeviceInfo current_device_info();

}  // namespace atom::cuda
