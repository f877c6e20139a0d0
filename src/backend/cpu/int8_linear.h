#pragma once
// INT8 x INT8 linear layer: the lm_head of the integer path (SmolLM2's tied 49152 x 576 one is 28 MB in int8
// against 56 MB in fp16 and 113 MB in fp32, read whole every decode step).
//  - weights: symmetric int8 per output row, scale = max|w_row| / 127, codes round-to-nearest-even(w / scale)
//    (IEEE division), converted once at load;
//  - activations: symmetric int8 per block of 64 columns of each input row (an outlier channel costs only its
//    block precision), the same rule, quantized once per forward;
//  - y[r, n] = w_scale[n] * (the sum over blocks b of float(exact int32 dot product of block b) * x_scale[r,
//  b]),
//    accumulated in 8 fp32 lanes in one fixed order (lane l of a block: columns 4l..4l+3 and 32+4l..32+4l+3;
//    one FMA per lane and block; then ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))).
// Every kernel (AVX2, AVX-512 VNNI) and every tiling follows that order: the same bits, and a row's result
// never depends on the other rows of its batch.
#include <cstdint>
#include <vector>

#include "backend/cpu/linear.h"

namespace atom::cpu {

enum class Int8Kernel : std::uint8_t { kAvx2, kAvx512Vnni };

// Whether this CPU runs `kernel` (kAvx2 always: the build requires AVX2).
bool int8_kernel_supported(Int8Kernel kernel);
// The kernel forward uses: AVX-512 VNNI where enabled (cpu_features.h), else AVX2.
Int8Kernel best_int8_kernel();
const char* int8_kernel_name(Int8Kernel kernel);

// Symmetric int8 codes of `len` values: returns the scale (max|v| / 127; 0 for an all-zero or empty input,
// whose codes are 0). NaNs count as 0 for the scale and code 0.
float quantize_int8_symmetric(const float* v, std::int64_t len, std::int8_t* codes);

class Int8Linear final : public LinearOp {
 public:
  Int8Linear(const std::vector<float>& weight, std::int64_t out_features, std::int64_t in_features);
  std::int64_t in_features() const override { return in_; }
  std::int64_t out_features() const override { return out_; }
  void forward(const float* x, std::int64_t m, float* y) const override;
  // Same with a chosen kernel (tests compare kernels); throws if the CPU lacks it.
  void forward(const float* x, std::int64_t m, float* y, Int8Kernel kernel) const;
  std::string describe() const override;
  bool splits_through_parallel_for() const override { return true; }

  std::int64_t padded_in() const { return in_pad_; }       // columns of the codes (zero padded)
  std::int8_t code(std::int64_t n, std::int64_t k) const;  // weight code of output n, column k < padded_in
  const std::vector<float>& scales() const { return scales_; }  // [out rounded up to the tile], zero padded

 private:
  std::int64_t out_, in_, in_pad_;
  // Tiles of 4 output rows (the last zero padded), stored interleaved by 64 columns: [tile][k / 64][row][64].
  std::vector<std::int8_t> codes_;
  std::vector<float> scales_;
  struct Activations {
    std::vector<std::int8_t> codes;       // [m, padded_in]
    std::vector<std::uint8_t> magnitude;  // |codes|, the unsigned operand of the byte products
    std::vector<std::uint64_t> negative;  // [m, padded_in / 64]: bit i set where code i of the block is < 0
    std::vector<float> scales;            // [m, padded_in / 64]
  };
  mutable Activations scratch_;  // forward is called from one thread at a time
};

}  // namespace atom::cpu
