#pragma once
// Scalar reference of every rule in docs/FORMAT.md. Every other implementation (AVX2, CUDA) is tested
// bit-exact against these functions. Kept free of fmt/error.h so that .cu files may include it; the
// functions that can fail on user input live in format.cpp and throw atom::Error.
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "common/half.h"

namespace atom::quant {

// Number format of the "normal" (non-outlier) part of weights and activations.
enum class NumberFormat : std::uint8_t { kInt3, kInt4, kInt8, kFp4 };

const char* format_name(NumberFormat f);  // "int3" | "int4" | "int8" | "fp4"
// Parses format_name's strings; throws atom::Error naming `what` and the value otherwise.
NumberFormat parse_format(const char* text, const char* what);

// The scalar rules below are constexpr so that CUDA kernels call the same functions (--expt-relaxed-constexpr).

// Largest code magnitude the scale maps max|x| onto: 2^(n-1)-1 for INT-n, 6 for FP4 (E2M1).
constexpr float format_qmax(NumberFormat f) {
  switch (f) {
    case NumberFormat::kInt3: return 3.0f;
    case NumberFormat::kInt4: return 7.0f;
    case NumberFormat::kInt8: return 127.0f;
    case NumberFormat::kFp4: return 6.0f;
  }
  return 0.0f;
}
// 4-bit storage (two codes per byte) for INT3, INT4 and FP4; one int8 per byte for INT8.
inline bool format_is_packed(NumberFormat f) { return f != NumberFormat::kInt8; }
// Bytes taken by `count` codes of one row (count even for packed formats).
inline std::int64_t format_row_bytes(NumberFormat f, std::int64_t count) {
  return format_is_packed(f) ? count / 2 : count;
}

// ---- Scalar rules (inline: shared by the reference loops and the fast paths' tails).

// fp16 scale of a symmetric group: fp16( clip * max|x| / qmax ), fp32 arithmetic in that order.
// max uses fmaxf, so NaN elements are ignored.
inline std::uint16_t symmetric_scale(const float* x, std::int64_t n, float qmax, float clip) {
  float max_abs = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) max_abs = std::fmax(std::fabs(x[i]), max_abs);
  return fp32_to_fp16(clip * max_abs / qmax);
}

// Symmetric INT-n code: clamp(rint(x / scale), -qmax-1, qmax); 0 when scale is 0. The clamp is
// fmin(fmax(r, lo), hi), so a NaN quotient maps to lo.
inline std::int8_t quantize_symmetric_value(float x, float scale, float qmax) {
  if (scale == 0.0f) return 0;
  const float r = std::nearbyint(x / scale);  // default rounding mode: half to even
  return static_cast<std::int8_t>(std::fmin(std::fmax(r, -qmax - 1.0f), qmax));
}

// FP4 E2M1: nibble s e e m; magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}.
constexpr float fp4_decode(std::uint8_t code) {
  constexpr float kMagnitude[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float m = kMagnitude[code & 7u];
  return (code & 8u) ? -m : m;
}
// Twice the decoded value as an integer (exact: every E2M1 value is a multiple of 0.5). Integer kernels
// multiply these; a group sum of products is then 4x the exact dot product.
inline std::int8_t fp4_decode_doubled(std::uint8_t code) {
  constexpr std::int8_t kDoubled[8] = {0, 1, 2, 3, 4, 6, 8, 12};
  const std::int8_t m = kDoubled[code & 7u];
  return (code & 8u) ? static_cast<std::int8_t>(-m) : m;
}
// Nearest magnitude to v (already divided by the scale), ties to the even code (mantissa bit 0),
// saturating at 6. Negative zero and NaN encode as 0.
constexpr std::uint8_t fp4_encode(float v) {
  const float a = v < 0.0f ? -v : v;  // |v| (a NaN stays NaN and encodes as 0, as with fabs)
  std::uint8_t m;
  if (!(a > 0.25f)) m = 0;        // tie 0.25 -> 0
  else if (a < 0.75f) m = 1;      // 0.5
  else if (a <= 1.25f) m = 2;     // 1.0  (ties 0.75 and 1.25 -> even code 2)
  else if (a < 1.75f) m = 3;      // 1.5
  else if (a <= 2.5f) m = 4;      // 2.0  (ties 1.75 and 2.5 -> 4)
  else if (a < 3.5f) m = 5;       // 3.0
  else if (a <= 5.0f) m = 6;      // 4.0  (ties 3.5 and 5 -> 6)
  else m = 7;                     // 6.0 (saturates)
  return (m != 0 && v < 0.0f) ? static_cast<std::uint8_t>(m | 8u) : m;
}
// FP4 code of x under `scale`; 0 when scale is 0.
inline std::uint8_t quantize_fp4_value(float x, float scale) {
  return scale == 0.0f ? std::uint8_t{0} : fp4_encode(x / scale);
}

// Sign-extends a two's-complement nibble.
inline std::int8_t nibble_to_int4(std::uint8_t nibble) {
  return static_cast<std::int8_t>(static_cast<std::int8_t>(nibble << 4) >> 4);
}

// ---- Arrays of codes.

// Codes of a row-major [rows, cols] matrix quantized in groups of `group` along cols, one fp16 scale per
// (row, group). INT formats: signed codes. FP4: the nibble (0..15) as an int8.
struct SymmetricGroups {
  std::vector<std::int8_t> codes;     // [rows, cols]
  std::vector<std::uint16_t> scales;  // [rows, cols / group] fp16
};
SymmetricGroups quantize_symmetric_groups(std::span<const float> x, std::int64_t rows, std::int64_t cols,
                                          std::int64_t group, NumberFormat format, float clip);
// code * float(scale) (FP4: fp4_decode(code) * float(scale)), [rows, cols].
std::vector<float> dequantize_symmetric_groups(const SymmetricGroups& q, std::int64_t rows, std::int64_t cols,
                                               std::int64_t group, NumberFormat format);

// Packs the low nibble of each code two per byte: element 2i low nibble, 2i+1 high. codes.size() even.
std::vector<std::uint8_t> pack_nibbles(std::span<const std::int8_t> codes);
std::vector<std::uint8_t> pack_nibbles(std::span<const std::uint8_t> codes);
// Inverse of pack_nibbles: `count` (even) signed INT4 codes, or raw nibbles (FP4, UINT4).
std::vector<std::int8_t> unpack_int4(std::span<const std::uint8_t> packed, std::int64_t count);
std::vector<std::uint8_t> unpack_nibbles(std::span<const std::uint8_t> packed, std::int64_t count);

// Asymmetric UINT-n (n = 4 or 8), the KV cache format: per row of `group` values (a head's vector of
// one token): lo = fp16(min x), scale = fp16((max x - lo) / (2^n - 1)),
// q = clamp(rint((x - lo) / scale), 0, 2^n - 1) (0 when scale is 0); value = fma(q, scale, lo).
struct AsymmetricGroups {
  std::vector<std::uint8_t> codes;    // [rows, cols] unpacked (0..2^n-1); pack_nibbles for UINT4 storage
  std::vector<std::uint16_t> scales;  // [rows, cols / group] fp16
  std::vector<std::uint16_t> mins;    // [rows, cols / group] fp16
};
AsymmetricGroups quantize_asymmetric_groups(std::span<const float> x, std::int64_t rows, std::int64_t cols,
                                            std::int64_t group, int bits);
std::vector<float> dequantize_asymmetric_groups(const AsymmetricGroups& q, std::int64_t rows, std::int64_t cols,
                                                std::int64_t group);
inline float dequantize_asymmetric_value(std::uint8_t q, std::uint16_t scale, std::uint16_t lo) {
  return std::fma(static_cast<float>(q), fp16_to_fp32(scale), fp16_to_fp32(lo));
}
// One group x[0, n) (n >= 1) -> codes[0, n) (unpacked), scale and lo (fp16 bits). bits = 4 or 8.
inline void quantize_asymmetric_group(const float* x, std::int64_t n, int bits, std::uint8_t* codes,
                                      std::uint16_t& scale_bits, std::uint16_t& lo_bits) {
  const float qmax = static_cast<float>((1 << bits) - 1);
  float lo_x = x[0], hi_x = x[0];
  for (std::int64_t i = 1; i < n; ++i) {
    lo_x = std::fmin(x[i], lo_x);
    hi_x = std::fmax(x[i], hi_x);
  }
  lo_bits = fp32_to_fp16(lo_x);
  const float lo = fp16_to_fp32(lo_bits);
  scale_bits = fp32_to_fp16((hi_x - lo) / qmax);
  const float scale = fp16_to_fp32(scale_bits);
  for (std::int64_t i = 0; i < n; ++i) {
    codes[i] = scale == 0.0f ? std::uint8_t{0}
                             : static_cast<std::uint8_t>(std::fmin(std::fmax(std::nearbyint((x[i] - lo) / scale), 0.0f), qmax));
  }
}

// ---- An Atom linear layer (FORMAT.md "An Atom linear layer"). Channel order is the reordered one:
// column j is original input channel perm[j]; the last n_outliers columns are the INT8 outliers.

struct QuantizedActivations {
  std::int64_t m = 0, k_normal = 0, n_outliers = 0, group = 0;
  NumberFormat format = NumberFormat::kInt4;
  std::vector<std::uint8_t> packed;           // [m, format_row_bytes(format, k_normal)]
  std::vector<std::uint16_t> scales;          // [m, k_normal / group] fp16
  std::vector<std::int8_t> outliers;          // [m, n_outliers]
  std::vector<std::uint16_t> outlier_scales;  // [m] fp16 (empty when n_outliers == 0)
};

struct QuantizedLinearWeights {
  std::int64_t n = 0, k_normal = 0, n_outliers = 0, group = 0;
  NumberFormat format = NumberFormat::kInt4;
  std::vector<std::uint8_t> packed;           // [n, format_row_bytes(format, k_normal)]
  std::vector<std::uint16_t> scales;          // [n, k_normal / group] fp16
  std::vector<std::int8_t> outliers;          // [n, n_outliers]
  std::vector<std::uint16_t> outlier_scales;  // [n] fp16 (empty when n_outliers == 0)
  std::vector<std::int32_t> perm;             // [k_normal + n_outliers]
  std::int64_t k() const { return k_normal + n_outliers; }
};

// Throws atom::Error naming `what` and the field when sizes, group, format or perm are inconsistent
// (perm must be a permutation of 0..K-1; group even for packed formats and dividing k_normal).
void validate_layout(std::int64_t k_normal, std::int64_t n_outliers, std::int64_t group, NumberFormat format,
                     const char* what);
void validate(const QuantizedActivations& a, const char* what);
void validate(const QuantizedLinearWeights& w, const char* what);
void validate_perm(std::span<const std::int32_t> perm, std::int64_t k, const char* what);

// Quantizes the rows of x [rows, K] (original channel order) after gathering by perm: normal part in
// `format` groups with `clip`, outliers INT8 per row (clip 1). Activations: rows = tokens (dynamic
// per-token scales); weights: rows = output channels (round to nearest, no GPTQ).
QuantizedActivations quantize_activations(std::span<const float> x, std::int64_t m, std::span<const std::int32_t> perm,
                                          std::int64_t n_outliers, std::int64_t group, NumberFormat format,
                                          float clip);
QuantizedLinearWeights quantize_weights_rtn(std::span<const float> w, std::int64_t n,
                                            std::span<const std::int32_t> perm, std::int64_t n_outliers,
                                            std::int64_t group, NumberFormat format, float clip);

// Dequantized [rows, K] in the REORDERED channel order (normal columns first, outliers last).
std::vector<float> dequantize(const QuantizedActivations& a);
std::vector<float> dequantize(const QuantizedLinearWeights& w);

// Integer codes of one row's normal part as the integer kernels multiply them: INT codes as is, FP4 as
// fp4_decode_doubled. [k_normal].
std::vector<std::int8_t> normal_row_integers(std::span<const std::uint8_t> packed_row, std::int64_t k_normal,
                                             NumberFormat format);

// y [m, n] by FORMAT.md's formula: per group g the exact dot product D_g of the decoded codes (an int32
// sum; for FP4 the sum of doubled codes divided by 4, exact), t = float(D_g) * sa[m,g] (fp32),
// acc = fma(t, sw[n,g], acc) over g in increasing order from acc = 0, then the outliers the same way.
std::vector<float> atom_linear_reference(const QuantizedActivations& a, const QuantizedLinearWeights& w);
// fp64 sum over k of dequantized a * dequantized w (the fake-quant product), [m, n].
std::vector<double> atom_linear_dequantized_reference(const QuantizedActivations& a,
                                                      const QuantizedLinearWeights& w);

}  // namespace atom::quant
