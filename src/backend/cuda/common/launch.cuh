#pragma once
// Kernel launches with programmatic dependent launch (PDL, sm_90 and up). A decode step is a chain of
// short kernels; with PDL the next kernel's blocks start while the current one finishes, and each does the
// part of its work that depends on no earlier kernel (staging a permutation, loading weights) before it
// waits. Rules for a kernel launched with `pdl`:
//   - pdl_wait() before it reads anything an earlier kernel wrote, or writes anything an earlier kernel may
//     still read; every thread that touches such data passes it (a kernel that never waits could finish
//     before its predecessor, and the kernel after it would then wait on the wrong one);
//   - pdl_allow_dependents() lets the next kernel launch once every block of this one has called it or
//     exited; called at the start, it cannot starve this kernel (all its blocks are resident by then).
// Both are no-ops in a kernel launched without PDL.
#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/common/pdl.h"

namespace atom::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}


struct LaunchShape {
  dim3 grid, block;
  std::size_t smem = 0;
  unsigned cluster_x = 1;  // > 1: consecutive blocks form thread-block clusters of this size
};

template <class... Params, class... Args>
void launch_kernel(void (*kernel)(Params...), const LaunchShape& shape, bool pdl, cudaStream_t stream,
                   Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = shape.grid;
  config.blockDim = shape.block;
  config.dynamicSmemBytes = shape.smem;
  config.stream = stream;
  cudaLaunchAttribute attrs[2];
  unsigned n = 0;
  if (shape.cluster_x > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n].val.clusterDim.x = shape.cluster_x;
    attrs[n].val.clusterDim.y = 1;
    attrs[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl && pdl_enabled()) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  config.attrs = attrs;
  config.numAttrs = n;
  ATOM_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace atom::cuda
