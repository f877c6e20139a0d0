// silu_mul_hadamard_f16 (hadamard.h): per-row butterflies in shared memory, the K x K mixing on cuBLAS.
#include "backend/cuda/transform/hadamard.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/hadamard.h"
#include "backend/cuda/common/cuda_check.h"
#include "common/half.h"

namespace atom::cuda {
namespace {

constexpr int kThreads = 256;

// fp32 SiLU(g) * u: the expression of the other SiLU kernels, without their fp16 rounding of the product.
__device__ __forceinline__ float silu_mul(float g, float u) { return __fdividef(g, 1.0f + __expf(-g)) * u; }

struct PrepareArgs {
  HadamardView t;
  const __half* gate;
  std::int64_t gate_stride;
  const __half* up;
  std::int64_t up_stride;
  __half* out;  // K = 1: the result
  std::int64_t out_stride;
  __half* hi;  // K > 1: column-major [(row, b)][c] fp16 parts of the butterflied rows (ld rows * P)
  __half* lo;
  int rows;  // rows of this pass (the leading dimension's row count)
};

// One CTA per row: load (SiLU product, signs), W_P butterflies on every P-wide block, then either the
// scaled result (K = 1) or the hi/lo split for the mixing GEMM.
__global__ void __launch_bounds__(kThreads) hadamard_prepare_kernel(PrepareArgs a) {
  extern __shared__ float row[];
  const int n = a.t.n, p = a.t.p;
  const long r = blockIdx.x;
  const __half* g = a.gate + r * a.gate_stride;
  const __half* u = a.up != nullptr ? a.up + r * a.up_stride : nullptr;
  for (int i8 = threadIdx.x; i8 < n / 8; i8 += kThreads) {
    __half gv[8], uv[8];
    *reinterpret_cast<uint4*>(gv) = *reinterpret_cast<const uint4*>(g + 8 * i8);
    if (u != nullptr) *reinterpret_cast<uint4*>(uv) = *reinterpret_cast<const uint4*>(u + 8 * i8);
    const std::uint32_t signs = a.t.sign_bits != nullptr ? a.t.sign_bits[i8 / 4] >> (8 * (i8 % 4)) : 0u;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float x = u != nullptr ? silu_mul(__half2float(gv[e]), __half2float(uv[e])) : __half2float(gv[e]);
      if ((signs >> e) & 1u) x = -x;
      row[8 * i8 + e] = x;
    }
  }
  __syncthreads();
  for (int h = 1; h < p; h <<= 1) {
    for (int q = threadIdx.x; q < n / 2; q += kThreads) {
      const int i = (q / h) * 2 * h + (q % h), j = i + h;
      const float x = row[i], y = row[j];
      row[i] = x + y;
      row[j] = x - y;
    }
    __syncthreads();
  }
  if (a.t.k == 1) {
    __half* o = a.out + r * a.out_stride;
    for (int i = threadIdx.x; i < n; i += kThreads) o[i] = __float2half_rn(row[i] * a.t.scale);
    return;
  }
  // Element c * P + b of row r goes to (r * P + b, c) of the column-major M x K operands, M = rows * P.
  const long ld = static_cast<long>(a.rows) * p;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const int c = i / p, b = i % p;
    const long at = c * ld + r * p + b;
    const __half h = __float2half_rn(row[i]);
    a.hi[at] = h;
    a.lo[at] = __float2half_rn(row[i] - __half2float(h));
  }
}

// mixed is column-major [(r, b)][a] (ld rows * P); y[r][a P + b] = fp16(mixed * scale), 4 values of b a thread.
__global__ void hadamard_finish_kernel(const float* mixed, int rows, int n, int p, float scale, __half* out,
                                       std::int64_t out_stride) {
  const long item = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= static_cast<long>(rows) * (n / 4)) return;
  const long r = item / (n / 4);
  const int o = static_cast<int>(item % (n / 4)) * 4;  // output element: a * P + b, b a multiple of 4
  const int a_idx = o / p, b = o % p;
  const float4 v =
      *reinterpret_cast<const float4*>(mixed + static_cast<long>(a_idx) * rows * p + r * p + b);
  __half2* o2 = reinterpret_cast<__half2*>(out + r * out_stride + o);
  o2[0] = __floats2half2_rn(v.x * scale, v.y * scale);
  o2[1] = __floats2half2_rn(v.z * scale, v.w * scale);
}

}  // namespace

HadamardHost hadamard_host(const quant::HadamardTransform& t) {
  HadamardHost h;
  h.n = static_cast<int>(t.size());
  h.k = static_cast<int>(t.base_size());
  h.p = h.n / h.k;
  h.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(t.size())));
  if (h.k > 1) {
    // Column a of the 2K x K operand: row a of H_K, twice (for the hi and the lo columns of the rows).
    const std::vector<std::int8_t>& hk = t.base_matrix();
    h.base.resize(static_cast<std::size_t>(2 * h.k) * h.k);
    for (int a = 0; a < h.k; ++a)
      for (int c = 0; c < 2 * h.k; ++c)
        h.base[static_cast<std::size_t>(a) * 2 * h.k + c] =
            fp32_to_fp16(static_cast<float>(hk[static_cast<std::size_t>(a) * h.k + c % h.k]));
  }
  if (t.randomized()) {
    h.sign_bits.assign(static_cast<std::size_t>((h.n + 31) / 32), 0u);
    for (int i = 0; i < h.n; ++i)
      if (t.signs()[static_cast<std::size_t>(i)] < 0) h.sign_bits[static_cast<std::size_t>(i / 32)] |= 1u << (i % 32);
  }
  return h;
}

std::size_t hadamard_scratch_bytes(const HadamardView& t) {
  if (t.k <= 1) return 0;
  // hi + lo fp16 and the fp32 GEMM result, kHadamardChunkRows rows each.
  return static_cast<std::size_t>(kHadamardChunkRows) * t.n * (2 + 2 + 4);
}

void silu_mul_hadamard_f16(const SiluMulHadamardParams& p, cudaStream_t stream) {
  check_params(p);
  if (p.num_tokens == 0) return;
  const HadamardView& t = p.transform;
  static const bool configured = [] {
    ATOM_CUDA_CHECK(cudaFuncSetAttribute(hadamard_prepare_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         kMaxHadamardWidth * static_cast<int>(sizeof(float))));
    return true;
  }();
  (void)configured;
  const std::size_t smem = static_cast<std::size_t>(t.n) * sizeof(float);
  auto* scratch = static_cast<std::uint8_t*>(p.scratch);
  __half* hi = reinterpret_cast<__half*>(scratch);
  float* mixed = reinterpret_cast<float*>(hi + 2 * static_cast<std::size_t>(kHadamardChunkRows) * t.n);
  if (t.k > 1) check_cublas_status(cublasSetStream(p.blas, stream), "cublasSetStream");
  // A pass at a time through the scratch (out may alias gate/up: each row is read before it is written).
  for (int r0 = 0; r0 < p.num_tokens; r0 += kHadamardChunkRows) {
    const int rows = std::min(kHadamardChunkRows, p.num_tokens - r0);
    PrepareArgs a;
    a.t = t;
    a.gate = reinterpret_cast<const __half*>(p.gate) + static_cast<std::int64_t>(r0) * p.gate_stride;
    a.gate_stride = p.gate_stride;
    a.up = p.up != nullptr ? reinterpret_cast<const __half*>(p.up) + static_cast<std::int64_t>(r0) * p.up_stride
                           : nullptr;
    a.up_stride = p.up_stride;
    a.out = reinterpret_cast<__half*>(p.out) + static_cast<std::int64_t>(r0) * p.out_stride;
    a.out_stride = p.out_stride;
    a.hi = hi;
    a.lo = hi + static_cast<std::size_t>(rows) * t.n;  // right after hi: [hi | lo] is one M x 2K operand
    a.rows = rows;
    hadamard_prepare_kernel<<<static_cast<unsigned>(rows), kThreads, smem, stream>>>(a);
    ATOM_CUDA_CHECK_LAUNCH();
    if (t.k == 1) continue;
    // mixed (M x K) = [hi | lo] (M x 2K) * [H_K^T ; H_K^T] (2K x K), M = rows * P, all column-major.
    const float one = 1.0f, zero = 0.0f;
    const int m_rows = rows * t.p;
    check_cublas_status(cublasGemmEx(p.blas, CUBLAS_OP_N, CUBLAS_OP_N, m_rows, t.k, 2 * t.k, &one, hi, CUDA_R_16F,
                                     m_rows, t.base, CUDA_R_16F, 2 * t.k, &zero, mixed, CUDA_R_32F, m_rows,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                        "cublasGemmEx");
    const long items = static_cast<long>(rows) * (t.n / 4);
    hadamard_finish_kernel<<<static_cast<unsigned>((items + 255) / 256), 256, 0, stream>>>(
        mixed, rows, t.n, t.p, t.scale, reinterpret_cast<__half*>(a.out), p.out_stride);
    ATOM_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace atom::cuda
