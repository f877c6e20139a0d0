#pragma once
// Small fp16 kernels of the model runner that need no quantization: embedding lookup, RMSNorm (the FP16 /
// W4A16 model modes and the final norm), SiLU(gate) * up, and deterministic fills for synthetic models.
// All tensors are device pointers; fp16 values travel as their bits (std::uint16_t). Rows are read and
// written 8 fp16 at a time: every fp16 row pointer must be 16-byte aligned and every row stride a multiple
// of 8 elements (check_params says which field breaks this).
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace atom::cuda {

// out[t, :] = table[tokens[t], :] (fp16 rows, `hidden` wide). Token ids are validated by the host caller;
// the kernel must still not read out of bounds: an id outside [0, vocab) produces a zero row.
struct EmbeddingParams {
  const std::uint16_t* table = nullptr;  // [vocab, hidden] fp16, 16-byte aligned
  int vocab = 0, hidden = 0;             // hidden a multiple of 8
  const std::int32_t* tokens = nullptr;  // [num_tokens]
  int num_tokens = 0;
  std::uint16_t* out = nullptr;  // [num_tokens, out_stride], 16-byte aligned
  std::int64_t out_stride = 0;
};
void embedding_lookup(const EmbeddingParams& p, cudaStream_t stream);

// RMSNorm in fp16 without quantization. Output row r reads input row i = rows[r] (rows == nullptr: i = r;
// rows[r] must be a valid row of input and residual). h = fp16(float(input[i]) + float(residual[i])) when
// residual is set, else input[i]; residual_out (optional; may alias residual -- the same pointer and stride --
// only when rows is null) row r receives h. out[r, j] = fp16( (float(h[c]) * inv_rms) * float(weight[c]) )
// with c = perm[j] (perm null: c = j; entries past hidden - 1 are clamped), inv_rms = rsqrt(mean over the
// row of float(h)^2 + eps) in fp32. The sum of squares runs in the order of rmsnorm_quantize's
// block-per-token mode (quantize_act.cu: 128 lanes, lane t takes elements 8t + 1024i + e in order, then
// the warp sums, then the four warps in order), so normed_out there and out here are bit-identical.
// out may be input itself (same stride) when rows is null: a row is read whole before it is written.
struct RmsNormParams {
  int num_rows = 0;
  int hidden = 0;  // multiple of 8, at most 16384
  const std::uint16_t* input = nullptr;  // rows 16-byte aligned
  std::int64_t input_stride = 0;
  const std::int32_t* rows = nullptr;  // [num_rows] or null
  const std::uint16_t* residual = nullptr;
  std::int64_t residual_stride = 0;
  std::uint16_t* residual_out = nullptr;
  std::int64_t residual_out_stride = 0;
  const std::uint16_t* weight = nullptr;  // [hidden] fp16, 16-byte aligned
  float eps = 1e-5f;
  const std::int32_t* perm = nullptr;  // [hidden] or null; 16-byte aligned
  std::uint16_t* out = nullptr;
  std::int64_t out_stride = 0;
};
void rmsnorm_f16(const RmsNormParams& p, cudaStream_t stream);

// out[t, j] = fp16( silu(g) * u ), g = float(gate[t, j]), u = float(up[t, j]), silu(g) = g / (1 + exp(-g))
// in fp32 -- identical to silu_mul_quantize's act_out values. gate and up may be halves of one row.
struct SiluMulParams {
  int num_tokens = 0, width = 0;  // width a multiple of 8
  const std::uint16_t* gate = nullptr;
  std::int64_t gate_stride = 0;
  const std::uint16_t* up = nullptr;
  std::int64_t up_stride = 0;
  std::uint16_t* out = nullptr;
  std::int64_t out_stride = 0;
};
void silu_mul_f16(const SiluMulParams& p, cudaStream_t stream);

// Deterministic fills for synthetic (random-weight) benchmark models. Element (or byte) i depends only on
// (seed, i), counted from `data`: not on the launch configuration nor on data's alignment.
//   fill_random_bytes: byte i is byte i % 8 (little end first) of fill_hash(seed, i / 8).
//   fill_uniform_f32:  u = (fill_hash(seed, i) >> 40) * 2^-24 in [0, 1); value min(max(fma(hi - lo, u, lo),
//                      lo), hi) in fp32 arithmetic, so within [lo, hi];
//   fill_uniform_f16:  fp16 (round to nearest even) of the fp32 value: within [fp16(lo), fp16(hi)].
// Any n (0 allowed); data aligned to its element only.
void fill_uniform_f16(std::uint16_t* data, std::size_t n, std::uint64_t seed, float lo, float hi, cudaStream_t stream);
void fill_uniform_f32(float* data, std::size_t n, std::uint64_t seed, float lo, float hi, cudaStream_t stream);
void fill_random_bytes(void* data, std::size_t n, std::uint64_t seed, cudaStream_t stream);

// The counter-based hash of the fills: splitmix64's finalizer on a Weyl sequence keyed by the mixed seed.
__host__ __device__ inline std::uint64_t fill_mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
__host__ __device__ inline std::uint64_t fill_key(std::uint64_t seed) { return fill_mix64(seed ^ 0x5851F42D4C957F2Dull); }
__host__ __device__ inline std::uint64_t fill_hash_keyed(std::uint64_t key, std::uint64_t index) {
  return fill_mix64(key + (index + 1) * 0x9E3779B97F4A7C15ull);
}
__host__ __device__ inline std::uint64_t fill_hash(std::uint64_t seed, std::uint64_t index) {
  return fill_hash_keyed(fill_key(seed), index);
}

// Host-side checks (elementwise_check.cpp): throw atom::Error naming the field and value at fault.
void check_params(const EmbeddingParams& p);
void check_params(const RmsNormParams& p);
void check_params(const SiluMulParams& p);

}  // namespace atom::cuda
