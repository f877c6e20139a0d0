// Argument checks of the activation quantizers: every bad field becomes an atom::Error naming it.
#include <cstdint>

#include "backend/cuda/quantize/quantize_act.h"
#include "common/error.h"

namespace atom::cuda {
namespace {

bool aligned(const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

// max_k: the row kernels keep a uint16 perm and one row per warp in shared memory.
void check_layout(const ActQuantLayout& l, int num_tokens, int max_k, const char* what) {
  if (num_tokens < 0) fail("{}: num_tokens {} is negative", what, num_tokens);
  if (l.k <= 0 || l.k % 8 != 0 || l.k > max_k) {
    fail("{}: layout.k {} must be a positive multiple of 8 and at most {}", what, l.k, max_k);
  }
  if (l.n_outliers < 0 || l.n_outliers > l.k) fail("{}: layout.n_outliers {} outside [0, {}]", what, l.n_outliers, l.k);
  const int g = l.group_size;
  if (g < 8 || g > 256 || (g & (g - 1)) != 0) {
    fail("{}: layout.group_size {} must be one of 8, 16, 32, 64, 128, 256", what, g);
  }
  if ((l.k - l.n_outliers) % g != 0) {
    fail("{}: layout.group_size {} does not divide the {} normal channels", what, g, l.k - l.n_outliers);
  }
  if (!(l.clip_ratio > 0.0f && l.clip_ratio <= 1.0f)) fail("{}: layout.clip_ratio {} outside (0, 1]", what, l.clip_ratio);
  if (l.format != ActFormat::kInt4 && l.format != ActFormat::kInt3 && l.format != ActFormat::kFp4) {
    fail("{}: layout.format {} unknown", what, static_cast<int>(l.format));
  }
}

// A row of fp16 read (or written) 8 elements at a time.
void check_vector_rows(const void* p, std::int64_t stride, int k, bool required, const char* what,
                       const char* field) {
  if (p == nullptr) {
    if (required) fail("{}: {} is null", what, field);
    return;
  }
  if (!aligned(p, 16)) fail("{}: {} is not 16-byte aligned", what, field);
  if (stride < k || stride % 8 != 0) {
    fail("{}: {} stride {} must be a multiple of 8 and at least k = {}", what, field, stride, k);
  }
}

void check_out(const QuantizedActOut& o, const ActQuantLayout& l, const char* what) {
  const int kn = l.k - l.n_outliers;
  if (o.codes_s8) {
    if (l.format != ActFormat::kInt4 || (kn > 0 && l.group_size != 128))
      fail("{}: out.codes_s8 needs INT4 groups of 128 (format {}, group_size {})", what, static_cast<int>(l.format),
           l.group_size);
    const std::int64_t row = kn + (l.n_outliers + 127) / 128 * 128;
    if (!aligned(o.codes_s8, 16) || o.codes_s8_stride % 16 != 0 || o.codes_s8_stride < row)
      fail("{}: out.codes_s8 must be 16-byte aligned with a stride (now {}) a multiple of 16 and at least {}", what,
           o.codes_s8_stride, row);
    if (kn > 0 && (o.scales == nullptr || o.scale_token_stride < 0 || o.scale_group_stride < 0))
      fail("{}: out.scales is null or has negative strides", what);
    if (l.n_outliers > 0 && o.outlier_scales == nullptr) fail("{}: out.outlier_scales is null", what);
    return;
  }
  if (kn > 0) {
    if (o.packed == nullptr || o.scales == nullptr) fail("{}: out.packed / out.scales is null", what);
    if (!aligned(o.packed, 4) || o.packed_stride % 4 != 0 || o.packed_stride < kn / 2) {
      fail("{}: out.packed must be 4-byte aligned with a stride (now {}) a multiple of 4 and at least {}", what,
           o.packed_stride, kn / 2);
    }
    if (o.scale_token_stride < 0 || o.scale_group_stride < 0) {
      fail("{}: out.scale strides {} / {} are negative", what, o.scale_token_stride, o.scale_group_stride);
    }
  }
  if (l.n_outliers > 0) {
    if (o.outliers == nullptr || o.outlier_scales == nullptr) fail("{}: out.outliers / out.outlier_scales is null", what);
    if (o.outlier_stride < l.n_outliers) {
      fail("{}: out.outlier_stride {} is less than n_outliers {}", what, o.outlier_stride, l.n_outliers);
    }
  }
}

// The row kernels read perm with 16-byte loads.
void check_perm(const std::int32_t* perm, const char* what) {
  if (perm == nullptr) fail("{}: perm is null", what);
  if (!aligned(perm, 16)) fail("{}: perm is not 16-byte aligned", what);
}

}  // namespace

void check_params(const RmsNormQuantParams& p) {
  const char* what = "rmsnorm_quantize";
  if (p.slices < 0) fail("{}: slices {} is negative", what, p.slices);
  check_layout(p.layout, p.num_tokens, 16384, what);
  check_vector_rows(p.input, p.input_stride, p.layout.k, true, what, "input");
  check_vector_rows(p.residual, p.residual_stride, p.layout.k, false, what, "residual");
  check_vector_rows(p.residual_out, p.residual_out_stride, p.layout.k, false, what, "residual_out");
  check_vector_rows(p.normed_out, p.normed_stride, p.layout.k, false, what, "normed_out");
  if (p.weight == nullptr) fail("{}: weight is null", what);
  check_perm(p.perm, what);
  if (!(p.eps > 0.0f)) fail("{}: eps {} must be positive", what, p.eps);
  check_out(p.out, p.layout, what);
}

void check_params(const ReorderQuantParams& p) {
  const char* what = "reorder_quantize";
  if (p.slices < 0) fail("{}: slices {} is negative", what, p.slices);
  check_layout(p.layout, p.num_tokens, 16384, what);
  check_vector_rows(p.input, p.input_stride, p.layout.k, true, what, "input");
  check_perm(p.perm, what);
  check_out(p.out, p.layout, what);
}

void check_params(const SiluMulQuantParams& p) {
  const char* what = "silu_mul_quantize";
  if (p.slices < 0) fail("{}: slices {} is negative", what, p.slices);
  check_layout(p.layout, p.num_tokens, 65536, what);
  check_vector_rows(p.gate, p.gate_stride, p.layout.k, true, what, "gate");
  check_vector_rows(p.up, p.up_stride, p.layout.k, true, what, "up");
  check_vector_rows(p.act_out, p.act_stride, p.layout.k, false, what, "act_out");
  check_out(p.out, p.layout, what);
}

}  // namespace atom::cuda
