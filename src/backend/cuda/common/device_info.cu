#include <cstdlib>
#include <cstring>

#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/common/launch.cuh"

namespace atom::cuda {

DeviceInfo current_device_info() {
  DeviceInfo info;
  ATOM_CUDA_CHECK(cudaGetDevice(&info.index));
  cudaDeviceProp prop{};
  ATOM_CUDA_CHECK(cudaGetDeviceProperties(&prop, info.index));
  info.sm_major = prop.major;
  info.sm_minor = prop.minor;
  info.num_sms = prop.multiProcessorCount;
  info.memory_gib = static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0);
  for (int i = 0; i < 255 && prop.name[i]; ++i) info.name[i] = prop.name[i];
  return info;
}

bool pdl_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("ATOM_PDL");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    return current_device_info().sm_major >= 9;
  }();
  return enabled;
}

}  // namespace atom::cuda
