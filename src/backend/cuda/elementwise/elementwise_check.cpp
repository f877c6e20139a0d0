// Argument checks of the fp16 elementwise kernels: every bad field becomes an atom::Error naming it.
#include <cmath>
#include <cstdint>

#include "backend/cuda/elementwise/elementwise.h"
#include "common/error.h"

namespace atom::cuda {
namespace {

bool aligned(const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

void check_width(int width, int max_width, const char* what, const char* field) {
  if (width <= 0 || width % 8 != 0 || width > max_width) {
    fail("{}: {} {} must be a positive multiple of 8 and at most {}", what, field, width, max_width);
  }
}

void check_count(int count, const char* what, const char* field) {
  if (count < 0) fail("{}: {} {} is negative", what, field, count);
}

// A row of fp16 read (or written) 8 elements at a time.
void check_vector_rows(const void* p, std::int64_t stride, int width, bool required, const char* what,
                       const char* field) {
  if (p == nullptr) {
    if (required) fail("{}: {} is null", what, field);
    return;
  }
  if (!aligned(p, 16)) fail("{}: {} ({}) is not 16-byte aligned", what, field, p);
  if (stride < width || stride % 8 != 0) {
    fail("{}: {} stride {} must be a multiple of 8 and at least {}", what, field, stride, width);
  }
}

constexpr int kNoLimit = 1 << 30;

}  // namespace

void check_params(const EmbeddingParams& p) {
  const char* what = "embedding_lookup";
  check_count(p.num_tokens, what, "num_tokens");
  if (p.vocab <= 0) fail("{}: vocab {} must be positive", what, p.vocab);
  check_width(p.hidden, kNoLimit, what, "hidden");
  if (p.table == nullptr) fail("{}: table is null", what);
  if (!aligned(p.table, 16)) fail("{}: table ({}) is not 16-byte aligned", what, static_cast<const void*>(p.table));
  if (p.tokens == nullptr) fail("{}: tokens is null", what);
  check_vector_rows(p.out, p.out_stride, p.hidden, true, what, "out");
}

void check_params(const RmsNormParams& p) {
  const char* what = "rmsnorm_f16";
  check_count(p.num_rows, what, "num_rows");
  check_width(p.hidden, 16384, what, "hidden");  // the rows (and perm, weight[perm]) live in shared memory
  check_vector_rows(p.input, p.input_stride, p.hidden, true, what, "input");
  check_vector_rows(p.residual, p.residual_stride, p.hidden, false, what, "residual");
  check_vector_rows(p.residual_out, p.residual_out_stride, p.hidden, false, what, "residual_out");
  check_vector_rows(p.out, p.out_stride, p.hidden, true, what, "out");
  if (p.weight == nullptr) fail("{}: weight is null", what);
  if (!aligned(p.weight, 16)) fail("{}: weight ({}) is not 16-byte aligned", what, static_cast<const void*>(p.weight));
  if (p.perm != nullptr && !aligned(p.perm, 16)) {
    fail("{}: perm ({}) is not 16-byte aligned", what, static_cast<const void*>(p.perm));
  }
  if (!(p.eps > 0.0f) || !std::isfinite(p.eps)) fail("{}: eps {} must be positive and finite", what, p.eps);
  // In place, row r's h overwrites row r of residual after this very lane read it; another row's reader
  // (rows gather, or a different stride) would race with that write.
  if (p.residual_out != nullptr && p.residual_out == p.residual) {
    if (p.rows != nullptr) fail("{}: residual_out aliases residual while rows is set", what);
    if (p.residual_out_stride != p.residual_stride) {
      fail("{}: residual_out aliases residual with another stride ({} vs {})", what, p.residual_out_stride,
           p.residual_stride);
    }
  }
}

void check_params(const SiluMulParams& p) {
  const char* what = "silu_mul_f16";
  check_count(p.num_tokens, what, "num_tokens");
  check_width(p.width, kNoLimit, what, "width");
  check_vector_rows(p.gate, p.gate_stride, p.width, true, what, "gate");
  check_vector_rows(p.up, p.up_stride, p.width, true, what, "up");
  check_vector_rows(p.out, p.out_stride, p.width, true, what, "out");
}

namespace detail {

void check_fill_args(const char* what, const void* data, std::size_t n) {
  if (data == nullptr && n > 0) fail("{}: data is null for {} elements", what, n);
}

void check_fill_args(const char* what, const void* data, std::size_t n, std::size_t element_bytes, float lo,
                     float hi) {
  check_fill_args(what, data, n);
  if (!aligned(data, element_bytes)) fail("{}: data ({}) is not {}-byte aligned", what, data, element_bytes);
  const float limit = element_bytes == 2 ? 65504.0f : 3.4028235e38f;  // fp16: the largest finite value
  if (!(std::fabs(lo) <= limit) || !(std::fabs(hi) <= limit)) {
    fail("{}: range [{}, {}] must be finite (at most {} in magnitude)", what, lo, hi, limit);
  }
  if (!(lo <= hi)) fail("{}: range [{}, {}] is empty (lo > hi)", what, lo, hi);
  if (!std::isfinite(hi - lo)) fail("{}: range [{}, {}] is wider than the largest float", what, lo, hi);
}

}  // namespace detail
}  // namespace atom::cuda
