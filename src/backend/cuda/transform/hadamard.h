#pragma once
// The online Hadamard transform of down_proj's input in rotated checkpoints (docs/FORMAT.md, "Rotated
// checkpoints") on the GPU: y = M_n x with M_n = (H_K (x) W_P) D / sqrt(n) as in backend/cpu/hadamard.h,
// computed in fp32 and rounded to fp16 once at the end. (The Q/K head transform, power-of-two head_dim, lives
// in kv_cache_append next to RoPE.)
//
// How: one kernel per row does SiLU(gate) * up, the signs D and the Walsh-Hadamard butterflies of every
// P-wide block in shared memory (fp32). For K = 1 it writes y directly. Otherwise the K x K mixing
// y[a P + b] = sum_c H_K[a][c] t[c P + b] runs on the tensor cores as ONE GEMM over all rows of a pass:
// t is split into fp16 hi + lo parts (t = hi + lo to ~2^-22) written column-major with the (row, b) pairs as
// the M dimension and [hi | lo] as 2K columns, times [H_K^T ; H_K^T] (+-1, exact in fp16), accumulated in
// fp32 (cuBLAS): M = rows * P, N = K, K' = 2K, so the result keeps fp32 accuracy; a last kernel scales by
// 1/sqrt(n), rounds to fp16 and puts the values back in row order.
#include <cstdint>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>

namespace atom::quant {
class HadamardTransform;
}  // namespace atom::quant

namespace atom::cuda {

// A transform's constants on the device.
struct HadamardView {
  int n = 0, k = 0, p = 0;                  // n = k * p, p a power of two
  float scale = 0.0f;                       // float(1 / sqrt(n)), as the CPU transform
  // [H_K^T ; H_K^T] as fp16 +-1, column-major 2k x k (column a: row a of H_K twice); null when k == 1
  const std::uint16_t* base = nullptr;
  const std::uint32_t* sign_bits = nullptr;  // bit i set where d_i = -1 (ceil(n / 32) words); null: D = I
};

// The host data of a HadamardView (the caller uploads them and points the view at the copies).
struct HadamardHost {
  int n = 0, k = 0, p = 0;
  float scale = 0.0f;
  std::vector<std::uint16_t> base;       // as HadamardView::base; empty when k == 1
  std::vector<std::uint32_t> sign_bits;  // empty: D = I
};
HadamardHost hadamard_host(const quant::HadamardTransform& t);

// Rows per pass of silu_mul_hadamard_f16 through its scratch buffers.
constexpr int kHadamardChunkRows = 256;
// Scratch bytes silu_mul_hadamard_f16 needs for a transform of size n (zero for K = 1).
std::size_t hadamard_scratch_bytes(const HadamardView& t);

// out[r, :] = fp16( M (silu(gate[r, :]) * up[r, :]) ) with the SiLU product in fp32 (as the CPU path);
// up == null: out[r, :] = fp16( M gate[r, :] ). out may equal gate or up. Rows of n fp16, 16-byte aligned,
// strides multiples of 8. For K > 1, `blas` (bound to `stream`) runs the mixing and `scratch` holds
// hadamard_scratch_bytes(transform) bytes (16-byte aligned).
struct SiluMulHadamardParams {
  int num_tokens = 0;
  HadamardView transform;
  const std::uint16_t* gate = nullptr;
  std::int64_t gate_stride = 0;
  const std::uint16_t* up = nullptr;  // optional
  std::int64_t up_stride = 0;
  std::uint16_t* out = nullptr;
  std::int64_t out_stride = 0;
  void* scratch = nullptr;
  cublasHandle_t blas = nullptr;
};
void silu_mul_hadamard_f16(const SiluMulHadamardParams& p, cudaStream_t stream);

// Host-side checks (hadamard_check.cpp): atom::Error naming the field at fault.
void check_params(const SiluMulHadamardParams& p);
// atom::Error naming the cuBLAS call when `status` is not success.
void check_cublas_status(cublasStatus_t status, const char* call);
// The widest row the per-row kernel holds in shared memory (fp32).
constexpr int kMaxHadamardWidth = 49152;

}  // namespace atom::cuda
