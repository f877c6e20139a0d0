// Argument checks of dequantize_w4a4_weights_f16: every bad field becomes an atom::Error naming it.
#include <cstdint>

#include "backend/cuda/gemm/dequantize_weights.h"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "common/error.h"

namespace atom::cuda {
namespace {
bool aligned(const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }
}  // namespace

void dequantize_w4a4_weights_f16(const W4A4PackedWeights& w, std::uint16_t* out, std::int64_t out_stride,
                                 cudaStream_t stream) {
  constexpr const char* what = "dequantize_w4a4_weights_f16";
  validate_w4a4_shape(w.n, w.k_normal, w.n_outliers, what);
  const std::int64_t k = static_cast<std::int64_t>(w.k_normal) + w.n_outliers;
  if (w.k_normal > 0 && w.packed == nullptr)
    fail("{}: k_normal = {} but the packed weights are null", what, w.k_normal);
  if (w.k_normal > 0 && !aligned(w.packed, 16))
    fail("{}: packed weights ({}) are not 16-byte aligned", what, static_cast<const void*>(w.packed));
  if (w.n_outliers > 0 && w.outliers == nullptr)
    fail("{}: n_outliers = {} but the outlier weights are null", what, w.n_outliers);
  if (w.n_outliers > 0 && !aligned(w.outliers, 16))
    fail("{}: outlier weights ({}) are not 16-byte aligned", what, static_cast<const void*>(w.outliers));
  if (w.scales == nullptr) fail("{}: scales are null", what);
  if (!aligned(w.scales, alignof(float)))
    fail("{}: scales ({}) are not {}-byte aligned", what, static_cast<const void*>(w.scales), alignof(float));
  if (out == nullptr) fail("{}: out is null", what);
  if (!aligned(out, 16)) fail("{}: out ({}) is not 16-byte aligned", what, static_cast<const void*>(out));
  if (out_stride < k || out_stride % 8 != 0)
    fail("{}: out_stride {} must be a multiple of 8 and at least k_normal + n_outliers = {}", what,
         out_stride, k);
  detail::launch_dequantize_w4a4_f16(w, out, out_stride, stream);
}

}  // namespace atom::cuda
