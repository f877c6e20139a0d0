#pragma once
// GGML block formats as stored in GGUF files (ggml/src/ggml-common.h), their scalar dequantization
// (ggml-quants.c dequantize_row_*) and the ggml type ids of the GGUF tensor-info table.
// Scale fields are IEEE fp16 ("ggml_half") stored as raw bits.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "io/dtype.h"

namespace atom::ggml {

constexpr std::size_t kQK4_0 = 32;
constexpr std::size_t kQK4_1 = 32;
constexpr std::size_t kQK5_0 = 32;
constexpr std::size_t kQK5_1 = 32;
constexpr std::size_t kQK8_0 = 32;
constexpr std::size_t kQK_K = 256;       // super-block of the K-quants
constexpr std::size_t kKScaleSize = 12;  // packed 6-bit scales and mins of Q4_K / Q5_K

// x = d * (q - 8), q in [0, 16): element j in the low nibble of qs[j], element j+16 in the high nibble.
struct BlockQ4_0 {
  std::uint16_t d;
  std::uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == 2 + kQK4_0 / 2);

// x = d * q + m, q in [0, 16), nibble order as Q4_0.
struct BlockQ4_1 {
  std::uint16_t d;
  std::uint16_t m;
  std::uint8_t qs[kQK4_1 / 2];
};
static_assert(sizeof(BlockQ4_1) == 4 + kQK4_1 / 2);

// x = d * (q - 16), q in [0, 32): low 4 bits as Q4_0, bit 4 of element j is bit j of qh (little-endian u32).
struct BlockQ5_0 {
  std::uint16_t d;
  std::uint8_t qh[4];
  std::uint8_t qs[kQK5_0 / 2];
};
static_assert(sizeof(BlockQ5_0) == 2 + 4 + kQK5_0 / 2);

// x = d * q + m, q in [0, 32), bits as Q5_0.
struct BlockQ5_1 {
  std::uint16_t d;
  std::uint16_t m;
  std::uint8_t qh[4];
  std::uint8_t qs[kQK5_1 / 2];
};
static_assert(sizeof(BlockQ5_1) == 4 + 4 + kQK5_1 / 2);

// x = d * q, q int8.
struct BlockQ8_0 {
  std::uint16_t d;
  std::int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == 2 + kQK8_0);

// 8 sub-blocks of 32: x = (d * sc[s]) * q - (dmin * m[s]), q 4-bit, 6-bit sc/m packed in scales[12].
// Sub-blocks 2i and 2i+1 share the 32 bytes qs[32i..32i+32): low nibbles then high nibbles.
struct BlockQ4_K {
  std::uint16_t d;
  std::uint16_t dmin;
  std::uint8_t scales[kKScaleSize];
  std::uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ4_K) == 4 + kKScaleSize + kQK_K / 2);

// As Q4_K with a fifth bit: bit 4 of element l of sub-block s is bit s of qh[l].
struct BlockQ5_K {
  std::uint16_t d;
  std::uint16_t dmin;
  std::uint8_t scales[kKScaleSize];
  std::uint8_t qh[kQK_K / 8];
  std::uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ5_K) == 4 + kKScaleSize + kQK_K / 8 + kQK_K / 2);

// 16 sub-blocks of 16: x = (d * scales[s]) * (q - 32), q 6-bit = 4 low bits in ql, 2 high bits in qh.
struct BlockQ6_K {
  std::uint8_t ql[kQK_K / 2];
  std::uint8_t qh[kQK_K / 4];
  std::int8_t scales[kQK_K / 16];
  std::uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == kQK_K / 2 + kQK_K / 4 + kQK_K / 16 + 2);

// Scalar dequantization of n_blocks consecutive blocks at src (any alignment) into
// n_blocks * block_elems floats. Bit-exact with ggml: every product is exact in fp32 (an fp16 scale
// times a 6- to 8-bit sub-block scale times a quant of at most 6 bits needs at most 24 significant bits),
// so results do not depend on FMA contraction or on evaluation order.
void dequantize_q4_0(const std::uint8_t* src, float* dst, std::size_t n_blocks);
void dequantize_q4_1(const std::uint8_t* src, float* dst, std::size_t n_blocks);
void dequantize_q5_0(const std::uint8_t* src, float* dst, std::size_t n_blocks);
void dequantize_q5_1(const std::uint8_t* src, float* dst, std::size_t n_blocks);
void dequantize_q8_0(const std::uint8_t* src, float* dst, std::size_t n_blocks);
void dequantize_q4_k(const std::uint8_t* src, float* dst, std::size_t n_blocks);
void dequantize_q5_k(const std::uint8_t* src, float* dst, std::size_t n_blocks);
void dequantize_q6_k(const std::uint8_t* src, float* dst, std::size_t n_blocks);

// Sub-block j (0..7) scale and min of a Q4_K / Q5_K block (ggml's get_scale_min_k4).
void k_quant_scale_min(int j, const std::uint8_t* scales, std::uint8_t* scale, std::uint8_t* min);

// ggml type ids (enum ggml_type) that GGUF tensor infos carry.
// clang-format off
enum class GgmlType : std::uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};
// clang-format on

// Name of a ggml type id ("Q4_K"), or "" for an id ggml does not define.
std::string_view ggml_type_name(std::uint32_t id);
// The DType of a ggml type id, or nullopt when Atom cannot read it (unknown id or unsupported format).
std::optional<DType> dtype_from_ggml_type(std::uint32_t id);
// The ggml type id of a DType; throws atom::Error for DTypes GGUF cannot store (U8).
std::uint32_t ggml_type_from_dtype(DType t);

}  // namespace atom::ggml
