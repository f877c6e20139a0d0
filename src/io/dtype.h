#pragma once
// Element/block types of tensors stored in checkpoints (safetensors and GGUF).
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace atom {

enum class DType : std::uint8_t {
  F32, F16, BF16, F64, I8, U8, I16, I32, I64,  // plain element types
  Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K,  // GGML block types
};

struct DTypeTraits {
  std::string_view name;   // "F32", "BF16", "Q4_K", ...
  std::size_t block_elems;  // elements per block (1 for plain types)
  std::size_t block_bytes;  // bytes per block
};

const DTypeTraits& dtype_traits(DType t);
inline std::string_view dtype_name(DType t) { return dtype_traits(t).name; }
// Bytes taken by n elements; n must be a multiple of the block size (checked by callers).
inline std::size_t dtype_bytes(DType t, std::size_t n) {
  const auto& tr = dtype_traits(t);
  return n / tr.block_elems * tr.block_bytes;
}

// Converts n elements of type t at src to fp32 (bit-exact per the format definition).
// Throws atom::Error for types that are not numeric-convertible or n not a multiple of the block size.
void dequantize_to_f32(DType t, const void* src, float* dst, std::size_t n);

}  // namespace atom
