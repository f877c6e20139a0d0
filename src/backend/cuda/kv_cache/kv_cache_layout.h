#pragma once
// Paged KV cache on the GPU (docs/FORMAT.md, "KV cache"). A pool of pages; a page holds `page_size`
// consecutive tokens of one sequence for every KV head. Sequences map their token t to page
// block_table[t / page_size], row t % page_size. Inside the pool, K and V are separate arrays:
//   codes  [num_pages][num_kv_heads][page_size][row_bytes]   (a head's tokens are contiguous in a page)
//   params [num_pages][num_kv_heads][page_size][D / group_size] uint32: per group of group_size channels of
//          the row, fp16 scale in the low half, fp16 min in the high
// row_bytes = 2*D (kF16, plain fp16), D (kU8) or D/2 (kU4, element 2i in the low nibble). Quantized rows
// follow FORMAT.md's asymmetric UINT-n rule per group (group_size = head_dim: one word per row, the layout
// before groups existed; else 32 or 64, dividing head_dim); kF16 has no params. Codes and params
// arrays are 16-byte aligned (the kernels copy 16-byte chunks).
// K is stored AFTER RoPE (kv_cache_append applies it), so attention kernels never rotate keys.
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace atom::cuda {

enum class KvDtype : std::uint8_t { kF16, kU8, kU4 };

constexpr int kv_bits(KvDtype t) { return t == KvDtype::kF16 ? 16 : t == KvDtype::kU8 ? 8 : 4; }
constexpr int kv_row_bytes(KvDtype t, int head_dim) { return head_dim * kv_bits(t) / 8; }
const char* kv_dtype_name(KvDtype t);  // "f16" | "u8" | "u4"

struct PagedKvCache {
  KvDtype dtype = KvDtype::kF16;
  int num_pages = 0;
  int page_size = 16;  // tokens per page: a power of two in [1, 256]
  int num_kv_heads = 0;
  int head_dim = 0;  // 64 or 128
  int group_size = 0;  // channels per params word of a quantized row: 0 = head_dim, else a multiple of 32 dividing it
  void* k_codes = nullptr;
  void* v_codes = nullptr;
  std::uint32_t* k_params = nullptr;  // null for kF16
  std::uint32_t* v_params = nullptr;

  std::size_t rows() const {
    return static_cast<std::size_t>(num_pages) * num_kv_heads * static_cast<std::size_t>(page_size);
  }
  std::size_t codes_bytes() const { return rows() * static_cast<std::size_t>(kv_row_bytes(dtype, head_dim)); }
  // Params words per row (1 for kF16, which has none).
  int groups() const { return group_size == 0 || dtype == KvDtype::kF16 ? 1 : head_dim / group_size; }
  std::size_t params_bytes() const {
    return dtype == KvDtype::kF16 ? 0 : rows() * static_cast<std::size_t>(groups()) * sizeof(std::uint32_t);
  }
};

// Appends new tokens' K and V to the cache and applies RoPE to Q and K (the one place RoPE happens):
//   q_out = rope(q), k' = rope(k) (- k_center) rounded to fp16, v' = v (- v_center, then rounded to fp16),
//   then k' and v' are quantized (or copied for kF16) into
//   row slots[t] (= page * page_size + row) of head h. slots[t] < 0 skips the token (padding).
// RoPE: angle_i = float(position) * inv_freq[i] (fp32), cos/sin in fp32; pairs (i, i + D/2) ("rotate
// half", Hugging Face Llama) or (2i, 2i+1) (interleaved, GGUF/Meta) when rope_interleaved. inv_freq
// carries any frequency scaling (Llama-3). rope_inv_freq == null: no rotation.
struct KvAppendParams {
  PagedKvCache cache;
  int num_tokens = 0;
  int num_qo_heads = 0;
  const std::uint16_t* q = nullptr;  // optional [T, Hq, D] fp16 (token / head strides in elements)
  std::int64_t q_token_stride = 0, q_head_stride = 0;
  std::uint16_t* q_out = nullptr;  // required when q is set; may equal q
  std::int64_t q_out_token_stride = 0, q_out_head_stride = 0;
  const std::uint16_t* k = nullptr;  // [T, Hkv, D]
  std::int64_t k_token_stride = 0, k_head_stride = 0;
  const std::uint16_t* v = nullptr;  // [T, Hkv, D]
  std::int64_t v_token_stride = 0, v_head_stride = 0;
  const std::int32_t* positions = nullptr;  // [T] (required with RoPE)
  const std::int32_t* slots = nullptr;      // [T]
  const float* rope_inv_freq = nullptr;     // [D/2]
  bool rope_interleaved = false;
  // Rotated checkpoints' online Q/K transform (docs/FORMAT.md): after RoPE, every Q and K head vector becomes
  // W_D x / sqrt(D) (natural-order Walsh-Hadamard, fp32, the CPU transform's operations in its order) before
  // the fp16 rounding and K's quantization. V is untouched.
  bool qk_hadamard = false;
  // KV centering (docs/FORMAT.md): fp32 [num_kv_heads, D] vectors subtracted (fp32) from every K row after RoPE
  // and the Q/K transform, and from every V row; the difference is rounded to fp16 and then stored or quantized.
  // Q is untouched. null: none.
  const float* k_center = nullptr;
  const float* v_center = nullptr;
};
void kv_cache_append(const KvAppendParams& p, cudaStream_t stream);

// Host-side checks (kv_cache_check.cpp): atom::Error naming the field at fault.
void check_cache(const PagedKvCache& c, const char* what);
void check_params(const KvAppendParams& p);

}  // namespace atom::cuda
