#pragma once
// Greedy sampling on the GPU: the index of each row's largest logit (the lowest index among equal maxima, NaN
// never chosen; 0 when no value is a number), as atom::argmax does on the host. One block per row.
#include <cstdint>

#include <cuda_runtime.h>

namespace atom::cuda {

void argmax_rows(const float* logits, int rows, int vocab, std::int32_t* out, cudaStream_t stream);

}  // namespace atom::cuda
