#include "backend/cuda/common/cuda_check.h"

#include "common/error.h"

namespace atom::cuda {

void throw_cuda_error(cudaError_t status, const char* expr, const char* file, int line) {
  fail("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(status), cudaGetErrorString(status), expr, file,
       line);
}

}  // namespace atom::cuda
