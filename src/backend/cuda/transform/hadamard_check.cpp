// Argument checks of silu_mul_hadamard_f16: every bad field becomes an atom::Error naming it.
#include <cstdint>

#include "backend/cuda/transform/hadamard.h"
#include "common/error.h"

namespace atom::cuda {
namespace {

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

void check_rows(const void* p, std::int64_t stride, int n, bool required, const char* field) {
  if (p == nullptr) {
    if (required) fail("silu_mul_hadamard_f16: {} is null", field);
    return;
  }
  if (!aligned16(p)) fail("silu_mul_hadamard_f16: {} ({}) is not 16-byte aligned", field, p);
  if (stride < n || stride % 8 != 0)
    fail("silu_mul_hadamard_f16: the stride of {} ({}) must be a multiple of 8 and at least the width {}", field,
         stride, n);
}

}  // namespace

void check_params(const SiluMulHadamardParams& p) {
  const HadamardView& t = p.transform;
  if (p.num_tokens < 0) fail("silu_mul_hadamard_f16: num_tokens {} is negative", p.num_tokens);
  if (t.n <= 0 || t.n % 8 != 0 || t.n > kMaxHadamardWidth)
    fail("silu_mul_hadamard_f16: transform size {} must be a positive multiple of 8 and at most {}", t.n,
         kMaxHadamardWidth);
  if (t.k <= 0 || t.p <= 0 || (t.p & (t.p - 1)) != 0 || static_cast<std::int64_t>(t.k) * t.p != t.n)
    fail("silu_mul_hadamard_f16: transform size {} is not K {} x P {} with P a power of two", t.n, t.k, t.p);
  if (!(t.scale > 0.0f)) fail("silu_mul_hadamard_f16: transform scale {} must be positive", t.scale);
  if (t.k > 1 && (t.base == nullptr || p.blas == nullptr || p.scratch == nullptr || !aligned16(p.scratch)))
    fail("silu_mul_hadamard_f16: a transform with K = {} needs H_K, a cuBLAS handle and 16-byte aligned scratch",
         t.k);
  if (t.p % 4 != 0 && t.k > 1) fail("silu_mul_hadamard_f16: P = {} must be a multiple of 4 when K > 1", t.p);
  if (p.num_tokens == 0) return;
  check_rows(p.gate, p.gate_stride, t.n, true, "gate");
  check_rows(p.up, p.up_stride, t.n, false, "up");
  check_rows(p.out, p.out_stride, t.n, true, "out");
}

void check_cublas_status(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS)
    fail("silu_mul_hadamard_f16: {} failed (cuBLAS status {})", call, static_cast<int>(status));
}

}  // namespace atom::cuda
