#include <atomic>
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

namespace {
std::atomic<int> pdl_setting{-1};  // -1: from ATOM_PDL, read at the first launch
}  // namespace

bool pdl_enabled() {
  int setting = pdl_setting.load(std::memory_order_relaxed);
  if (setting < 0) {
    const char* env = std::getenv("ATOM_PDL");
    setting = env != nullptr && std::strcmp(env, "1") == 0 ? 1 : 0;
    pdl_setting.store(setting, std::memory_order_relaxed);
  }
  static const bool supported = current_device_info().sm_major >= 9;
  return setting == 1 && supported;
}

void set_pdl_enabled(bool enabled) { pdl_setting.store(enabled ? 1 : 0, std::memory_order_relaxed); }

}  // namespace atom::cuda
