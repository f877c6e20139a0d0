#include "backend/cuda/model/argmax.h"

#include <climits>
#include <cmath>

#include "backend/cuda/common/cuda_check.h"

namespace atom::cuda {
namespace {

constexpr int kThreads = 512;

// The better of two (value, index) candidates: larger value, then smaller index.
__device__ __forceinline__ void keep_better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

__global__ void __launch_bounds__(kThreads)
    argmax_rows_kernel(const float* logits, int vocab, std::int32_t* out) {
  const float* x = logits + static_cast<long long>(blockIdx.x) * vocab;
  float best = -INFINITY;
  int index = INT_MAX;
  // Increasing indices per thread with a strict '>': each thread keeps its lowest index of its maximum.
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = x[i];
    if (v > best || (index == INT_MAX && v == best)) {  // -inf rows still get an index
      best = v;
      index = i;
    }
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, off);
    const int oi = __shfl_xor_sync(0xffffffffu, index, off);
    keep_better(best, index, ov, oi);
  }
  __shared__ float s_v[kThreads / 32];
  __shared__ int s_i[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    s_v[warp] = best;
    s_i[warp] = index;
  }
  __syncthreads();
  if (warp == 0) {
    best = lane < kThreads / 32 ? s_v[lane] : -INFINITY;
    index = lane < kThreads / 32 ? s_i[lane] : INT_MAX;
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, off);
      const int oi = __shfl_xor_sync(0xffffffffu, index, off);
      keep_better(best, index, ov, oi);
    }
    if (lane == 0) out[blockIdx.x] = index == INT_MAX ? 0 : index;
  }
}

}  // namespace

void argmax_rows(const float* logits, int rows, int vocab, std::int32_t* out, cudaStream_t stream) {
  if (rows <= 0) return;
  argmax_rows_kernel<<<rows, kThreads, 0, stream>>>(logits, vocab, out);
  ATOM_CUDA_CHECK_LAUNCH();
}

}  // namespace atom::cuda
