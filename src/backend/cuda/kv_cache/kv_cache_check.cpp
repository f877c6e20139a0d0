// Argument checks of the paged KV cache kernels.
#include "backend/cuda/kv_cache/kv_cache_layout.h"
#include "common/error.h"

namespace atom::cuda {

const char* kv_dtype_name(KvDtype t) {
  switch (t) {
    case KvDtype::kF16: return "f16";
    case KvDtype::kU8: return "u8";
    case KvDtype::kU4: return "u4";
  }
  return "?";
}

void check_cache(const PagedKvCache& c, const char* what) {
  if (c.dtype != KvDtype::kF16 && c.dtype != KvDtype::kU8 && c.dtype != KvDtype::kU4) {
    fail("{}: cache.dtype {} unknown", what, static_cast<int>(c.dtype));
  }
  if (c.head_dim != 64 && c.head_dim != 128) fail("{}: cache.head_dim {} (supported: 64, 128)", what, c.head_dim);
  if (c.group_size != 0) {
    if (c.dtype == KvDtype::kF16) fail("{}: cache.group_size {} needs a u8 or u4 cache, not f16", what, c.group_size);
    // 32 at least: a decode lane's dims (up to 32) and a prefill chunk's 8 then lie in one group.
    if (c.group_size < 32 || c.group_size % 32 != 0 || c.head_dim % c.group_size != 0) {
      fail("{}: cache.group_size {} must be 0 (head_dim) or a multiple of 32 dividing head_dim {}", what,
           c.group_size, c.head_dim);
    }
  }
  if (c.page_size < 1 || c.page_size > 256 || (c.page_size & (c.page_size - 1)) != 0) {
    fail("{}: cache.page_size {} must be a power of two in [1, 256]", what, c.page_size);
  }
  if (c.num_pages <= 0) fail("{}: cache.num_pages {} must be positive", what, c.num_pages);
  if (c.num_kv_heads <= 0) fail("{}: cache.num_kv_heads {} must be positive", what, c.num_kv_heads);
  if (c.k_codes == nullptr || c.v_codes == nullptr) fail("{}: cache.k_codes / cache.v_codes is null", what);
  if (c.dtype != KvDtype::kF16 && (c.k_params == nullptr || c.v_params == nullptr)) {
    fail("{}: cache.k_params / cache.v_params is null for a {} cache", what, kv_dtype_name(c.dtype));
  }
  const auto misaligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 != 0; };
  if (misaligned(c.k_codes) || misaligned(c.v_codes)) fail("{}: cache codes are not 16-byte aligned", what);
  if (c.dtype != KvDtype::kF16 && (misaligned(c.k_params) || misaligned(c.v_params))) {
    fail("{}: cache params are not 16-byte aligned", what);
  }
}

void check_params(const KvAppendParams& p) {
  const char* what = "kv_cache_append";
  check_cache(p.cache, what);
  if (p.num_tokens < 0) fail("{}: num_tokens {} is negative", what, p.num_tokens);
  if (p.k == nullptr || p.v == nullptr) fail("{}: k / v is null", what);
  if (p.slots == nullptr) fail("{}: slots is null", what);
  if (p.q != nullptr) {
    if (p.q_out == nullptr) fail("{}: q is set but q_out is null", what);
    if (p.num_qo_heads <= 0 || p.num_qo_heads % p.cache.num_kv_heads != 0) {
      fail("{}: num_qo_heads {} must be a positive multiple of num_kv_heads {}", what, p.num_qo_heads,
           p.cache.num_kv_heads);
    }
  }
  if (p.rope_inv_freq != nullptr && p.positions == nullptr) fail("{}: RoPE needs positions", what);
}

}  // namespace atom::cuda
