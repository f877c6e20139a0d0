#include "format/format.h"

#include <algorithm>
#include <cstring>
#include <string_view>

#include "common/error.h"

namespace atom::quant {

const char* format_name(NumberFormat f) {
  switch (f) {
    case NumberFormat::kInt3: return "int3";
    case NumberFormat::kInt4: return "int4";
    case NumberFormat::kInt8: return "int8";
    case NumberFormat::kFp4: return "fp4";
  }
  return "?";
}

NumberFormat parse_format(const char* text, const char* what) {
  const std::string_view s(text);
  for (auto f : {NumberFormat::kInt3, NumberFormat::kInt4, NumberFormat::kInt8, NumberFormat::kFp4}) {
    if (s == format_name(f)) return f;
  }
  fail("{}: unknown number format '{}' (expected int3, int4, int8 or fp4)", what, s);
}

namespace {

void check_matrix(std::size_t size, std::int64_t rows, std::int64_t cols, std::int64_t group, const char* what) {
  if (rows < 0 || cols <= 0) fail("{}: bad shape [{}, {}]", what, rows, cols);
  if (group <= 0 || cols % group != 0) fail("{}: group size {} does not divide {} columns", what, group, cols);
  if (size != static_cast<std::size_t>(rows * cols)) {
    fail("{}: {} values given for shape [{}, {}]", what, size, rows, cols);
  }
}

}  // namespace

SymmetricGroups quantize_symmetric_groups(std::span<const float> x, std::int64_t rows, std::int64_t cols,
                                          std::int64_t group, NumberFormat format, float clip) {
  check_matrix(x.size(), rows, cols, group, "quantize_symmetric_groups");
  if (!(clip > 0.0f && clip <= 1.0f)) fail("quantize_symmetric_groups: clip ratio {} not in (0, 1]", clip);
  const float qmax = format_qmax(format);
  const std::int64_t groups = cols / group;
  SymmetricGroups q;
  q.codes.resize(x.size());
  q.scales.resize(static_cast<std::size_t>(rows * groups));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t g = 0; g < groups; ++g) {
      const float* src = x.data() + r * cols + g * group;
      std::int8_t* dst = q.codes.data() + r * cols + g * group;
      const std::uint16_t scale_bits = symmetric_scale(src, group, qmax, clip);
      q.scales[r * groups + g] = scale_bits;
      const float scale = fp16_to_fp32(scale_bits);
      for (std::int64_t i = 0; i < group; ++i) {
        dst[i] = format == NumberFormat::kFp4 ? static_cast<std::int8_t>(quantize_fp4_value(src[i], scale))
                                              : quantize_symmetric_value(src[i], scale, qmax);
      }
    }
  }
  return q;
}

std::vector<float> dequantize_symmetric_groups(const SymmetricGroups& q, std::int64_t rows, std::int64_t cols,
                                               std::int64_t group, NumberFormat format) {
  check_matrix(q.codes.size(), rows, cols, group, "dequantize_symmetric_groups");
  const std::int64_t groups = cols / group;
  if (q.scales.size() != static_cast<std::size_t>(rows * groups)) {
    fail("dequantize_symmetric_groups: {} scales for {} groups", q.scales.size(), rows * groups);
  }
  std::vector<float> out(q.codes.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const float scale = fp16_to_fp32(q.scales[r * groups + c / group]);
      const std::int8_t code = q.codes[r * cols + c];
      const float v = format == NumberFormat::kFp4 ? fp4_decode(static_cast<std::uint8_t>(code))
                                                   : static_cast<float>(code);
      out[r * cols + c] = v * scale;
    }
  }
  return out;
}

std::vector<std::uint8_t> pack_nibbles(std::span<const std::int8_t> codes) {
  return pack_nibbles(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(codes.data()),
                                                    codes.size()));
}

std::vector<std::uint8_t> pack_nibbles(std::span<const std::uint8_t> codes) {
  if (codes.size() % 2 != 0) fail("pack_nibbles: odd number of codes ({})", codes.size());
  std::vector<std::uint8_t> packed(codes.size() / 2);
  for (std::size_t i = 0; i < packed.size(); ++i) {
    packed[i] = static_cast<std::uint8_t>((codes[2 * i] & 0x0Fu) | ((codes[2 * i + 1] & 0x0Fu) << 4));
  }
  return packed;
}

std::vector<std::uint8_t> unpack_nibbles(std::span<const std::uint8_t> packed, std::int64_t count) {
  if (count < 0 || count % 2 != 0 || static_cast<std::size_t>(count / 2) > packed.size()) {
    fail("unpack_nibbles: cannot unpack {} codes from {} bytes", count, packed.size());
  }
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count / 2; ++i) {
    codes[2 * i] = packed[i] & 0x0Fu;
    codes[2 * i + 1] = packed[i] >> 4;
  }
  return codes;
}

std::vector<std::int8_t> unpack_int4(std::span<const std::uint8_t> packed, std::int64_t count) {
  const std::vector<std::uint8_t> nibbles = unpack_nibbles(packed, count);
  std::vector<std::int8_t> codes(nibbles.size());
  for (std::size_t i = 0; i < nibbles.size(); ++i) codes[i] = nibble_to_int4(nibbles[i]);
  return codes;
}

AsymmetricGroups quantize_asymmetric_groups(std::span<const float> x, std::int64_t rows, std::int64_t cols,
                                            std::int64_t group, int bits) {
  check_matrix(x.size(), rows, cols, group, "quantize_asymmetric_groups");
  if (bits != 4 && bits != 8) fail("quantize_asymmetric_groups: {} bits (expected 4 or 8)", bits);
  const std::int64_t groups = cols / group;
  AsymmetricGroups q;
  q.codes.resize(x.size());
  q.scales.resize(static_cast<std::size_t>(rows * groups));
  q.mins.resize(q.scales.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t g = 0; g < groups; ++g) {
      quantize_asymmetric_group(x.data() + r * cols + g * group, group, bits, q.codes.data() + r * cols + g * group,
                                q.scales[r * groups + g], q.mins[r * groups + g]);
    }
  }
  return q;
}

std::vector<float> dequantize_asymmetric_groups(const AsymmetricGroups& q, std::int64_t rows, std::int64_t cols,
                                                std::int64_t group) {
  check_matrix(q.codes.size(), rows, cols, group, "dequantize_asymmetric_groups");
  const std::int64_t groups = cols / group;
  if (q.scales.size() != static_cast<std::size_t>(rows * groups) || q.mins.size() != q.scales.size()) {
    fail("dequantize_asymmetric_groups: {} scales / {} mins for {} groups", q.scales.size(), q.mins.size(),
         rows * groups);
  }
  std::vector<float> out(q.codes.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::int64_t s = r * groups + c / group;
      out[r * cols + c] = dequantize_asymmetric_value(q.codes[r * cols + c], q.scales[s], q.mins[s]);
    }
  }
  return out;
}

// ---- Linear layers.

void validate_layout(std::int64_t k_normal, std::int64_t n_outliers, std::int64_t group, NumberFormat format,
                     const char* what) {
  if (k_normal < 0 || n_outliers < 0 || k_normal + n_outliers <= 0) {
    fail("{}: bad channel split k_normal={} n_outliers={}", what, k_normal, n_outliers);
  }
  if (group <= 0) fail("{}: group size {} must be positive", what, group);
  if (k_normal % group != 0) {
    fail("{}: group size {} does not divide the {} normal channels", what, group, k_normal);
  }
  if (format_is_packed(format) && group % 2 != 0) {
    fail("{}: group size {} must be even for the packed format {}", what, group, format_name(format));
  }
  // int32 accumulators: group * 128 * 128 and n_outliers * 128 * 128 must stay below 2^31.
  if (group >= (std::int64_t{1} << 17) || n_outliers >= (std::int64_t{1} << 17)) {
    fail("{}: group size {} / {} outliers overflow int32 accumulation", what, group, n_outliers);
  }
}

void validate_perm(std::span<const std::int32_t> perm, std::int64_t k, const char* what) {
  if (static_cast<std::int64_t>(perm.size()) != k) fail("{}: perm has {} entries, expected {}", what, perm.size(), k);
  std::vector<char> seen(static_cast<std::size_t>(k), 0);
  for (std::size_t j = 0; j < perm.size(); ++j) {
    const std::int32_t p = perm[j];
    if (p < 0 || p >= k || seen[p]) fail("{}: perm[{}] = {} is out of range or repeated (K = {})", what, j, p, k);
    seen[p] = 1;
  }
}

namespace {

template <class V>
void check_size(const V& v, std::int64_t expected, const char* what, const char* field) {
  if (static_cast<std::int64_t>(v.size()) != expected) {
    fail("{}: {} has {} elements, expected {}", what, field, v.size(), expected);
  }
}

template <class Q>
void validate_parts(const Q& q, std::int64_t rows, const char* what) {
  validate_layout(q.k_normal, q.n_outliers, q.group, q.format, what);
  if (rows < 0) fail("{}: negative row count {}", what, rows);
  check_size(q.packed, rows * format_row_bytes(q.format, q.k_normal), what, "packed");
  check_size(q.scales, rows * (q.k_normal / q.group), what, "scales");
  check_size(q.outliers, rows * q.n_outliers, what, "outliers");
  check_size(q.outlier_scales, q.n_outliers > 0 ? rows : 0, what, "outlier_scales");
}

// Quantizes rows x [rows, K] gathered by perm into the parts of Q.
template <class Q>
void quantize_rows(std::span<const float> x, std::int64_t rows, std::span<const std::int32_t> perm, float clip,
                   Q& q, const char* what) {
  const std::int64_t k = q.k_normal + q.n_outliers;
  validate_layout(q.k_normal, q.n_outliers, q.group, q.format, what);
  validate_perm(perm, k, what);
  if (static_cast<std::int64_t>(x.size()) != rows * k) fail("{}: {} values for [{}, {}]", what, x.size(), rows, k);
  std::vector<float> normal(static_cast<std::size_t>(rows * q.k_normal));
  std::vector<float> outl(static_cast<std::size_t>(rows * q.n_outliers));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < q.k_normal; ++j) normal[r * q.k_normal + j] = x[r * k + perm[j]];
    for (std::int64_t o = 0; o < q.n_outliers; ++o) outl[r * q.n_outliers + o] = x[r * k + perm[q.k_normal + o]];
  }
  if (q.k_normal > 0) {
    SymmetricGroups sq = quantize_symmetric_groups(normal, rows, q.k_normal, q.group, q.format, clip);
    q.packed = format_is_packed(q.format) ? pack_nibbles(sq.codes)
                                          : std::vector<std::uint8_t>(sq.codes.begin(), sq.codes.end());
    q.scales = std::move(sq.scales);
  }
  if (q.n_outliers > 0) {
    SymmetricGroups oq = quantize_symmetric_groups(outl, rows, q.n_outliers, q.n_outliers, NumberFormat::kInt8, 1.0f);
    q.outliers = std::move(oq.codes);
    q.outlier_scales = std::move(oq.scales);
  }
}

// Reordered dequantized rows [rows, K].
template <class Q>
std::vector<float> dequantize_rows(const Q& q, std::int64_t rows) {
  const std::int64_t k = q.k_normal + q.n_outliers;
  const std::int64_t groups = q.k_normal / q.group;
  const std::int64_t row_bytes = format_row_bytes(q.format, q.k_normal);
  std::vector<float> out(static_cast<std::size_t>(rows * k));
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::span<const std::uint8_t> row(q.packed.data() + r * row_bytes, static_cast<std::size_t>(row_bytes));
    std::vector<float> values(static_cast<std::size_t>(q.k_normal));
    if (q.format == NumberFormat::kFp4) {
      const auto codes = unpack_nibbles(row, q.k_normal);
      for (std::int64_t j = 0; j < q.k_normal; ++j) values[j] = fp4_decode(codes[j]);
    } else {
      const auto codes = normal_row_integers(row, q.k_normal, q.format);
      for (std::int64_t j = 0; j < q.k_normal; ++j) values[j] = static_cast<float>(codes[j]);
    }
    for (std::int64_t j = 0; j < q.k_normal; ++j) {
      out[r * k + j] = values[j] * fp16_to_fp32(q.scales[r * groups + j / q.group]);
    }
    for (std::int64_t o = 0; o < q.n_outliers; ++o) {
      out[r * k + q.k_normal + o] = static_cast<float>(q.outliers[r * q.n_outliers + o]) *
                                    fp16_to_fp32(q.outlier_scales[r]);
    }
  }
  return out;
}

}  // namespace

void validate(const QuantizedActivations& a, const char* what) { validate_parts(a, a.m, what); }

void validate(const QuantizedLinearWeights& w, const char* what) {
  validate_parts(w, w.n, what);
  validate_perm(w.perm, w.k(), what);
}

QuantizedActivations quantize_activations(std::span<const float> x, std::int64_t m, std::span<const std::int32_t> perm,
                                          std::int64_t n_outliers, std::int64_t group, NumberFormat format,
                                          float clip) {
  QuantizedActivations a;
  a.m = m;
  a.k_normal = static_cast<std::int64_t>(perm.size()) - n_outliers;
  a.n_outliers = n_outliers;
  a.group = group;
  a.format = format;
  quantize_rows(x, m, perm, clip, a, "quantize_activations");
  return a;
}

QuantizedLinearWeights quantize_weights_rtn(std::span<const float> w, std::int64_t n,
                                            std::span<const std::int32_t> perm, std::int64_t n_outliers,
                                            std::int64_t group, NumberFormat format, float clip) {
  QuantizedLinearWeights q;
  q.n = n;
  q.k_normal = static_cast<std::int64_t>(perm.size()) - n_outliers;
  q.n_outliers = n_outliers;
  q.group = group;
  q.format = format;
  quantize_rows(w, n, perm, clip, q, "quantize_weights_rtn");
  q.perm.assign(perm.begin(), perm.end());
  return q;
}

std::vector<float> dequantize(const QuantizedActivations& a) {
  validate(a, "dequantize(activations)");
  return dequantize_rows(a, a.m);
}

std::vector<float> dequantize(const QuantizedLinearWeights& w) {
  validate(w, "dequantize(weights)");
  return dequantize_rows(w, w.n);
}

std::vector<std::int8_t> normal_row_integers(std::span<const std::uint8_t> packed_row, std::int64_t k_normal,
                                             NumberFormat format) {
  switch (format) {
    case NumberFormat::kInt3:
    case NumberFormat::kInt4: return unpack_int4(packed_row, k_normal);
    case NumberFormat::kFp4: {
      const auto codes = unpack_nibbles(packed_row, k_normal);
      std::vector<std::int8_t> out(codes.size());
      for (std::size_t i = 0; i < codes.size(); ++i) out[i] = fp4_decode_doubled(codes[i]);
      return out;
    }
    case NumberFormat::kInt8: {
      if (static_cast<std::int64_t>(packed_row.size()) < k_normal) fail("normal_row_integers: short row");
      std::vector<std::int8_t> out(static_cast<std::size_t>(k_normal));
      std::memcpy(out.data(), packed_row.data(), out.size());
      return out;
    }
  }
  return {};
}

namespace {

void check_pair(const QuantizedActivations& a, const QuantizedLinearWeights& w, const char* what) {
  validate(a, what);
  validate(w, what);
  if (a.k_normal != w.k_normal || a.n_outliers != w.n_outliers || a.group != w.group || a.format != w.format) {
    fail("{}: activations (k_normal={}, outliers={}, group={}, {}) do not match weights "
         "(k_normal={}, outliers={}, group={}, {})",
         what, a.k_normal, a.n_outliers, a.group, format_name(a.format), w.k_normal, w.n_outliers, w.group,
         format_name(w.format));
  }
}

}  // namespace

std::vector<float> atom_linear_reference(const QuantizedActivations& a, const QuantizedLinearWeights& w) {
  check_pair(a, w, "atom_linear_reference");
  const std::int64_t groups = a.k_normal / a.group;
  const std::int64_t row_bytes = format_row_bytes(a.format, a.k_normal);
  std::vector<std::vector<std::int8_t>> w_rows(static_cast<std::size_t>(w.n));
  for (std::int64_t n = 0; n < w.n; ++n) {
    w_rows[n] = normal_row_integers({w.packed.data() + n * row_bytes, static_cast<std::size_t>(row_bytes)},
                                    w.k_normal, w.format);
  }
  std::vector<float> y(static_cast<std::size_t>(a.m * w.n));
  for (std::int64_t m = 0; m < a.m; ++m) {
    const auto a_row = normal_row_integers({a.packed.data() + m * row_bytes, static_cast<std::size_t>(row_bytes)},
                                           a.k_normal, a.format);
    for (std::int64_t n = 0; n < w.n; ++n) {
      float acc = 0.0f;
      for (std::int64_t g = 0; g < groups; ++g) {
        std::int32_t isum = 0;
        for (std::int64_t k = g * a.group; k < (g + 1) * a.group; ++k) isum += a_row[k] * w_rows[n][k];
        // FP4 codes are doubled: isum / 4 is the exact dot product (a multiple of 1/4, exact in fp32).
        const float dot = a.format == NumberFormat::kFp4 ? static_cast<float>(isum) * 0.25f
                                                         : static_cast<float>(isum);
        const float t = dot * fp16_to_fp32(a.scales[m * groups + g]);
        acc = std::fma(t, fp16_to_fp32(w.scales[n * groups + g]), acc);
      }
      if (a.n_outliers > 0) {
        std::int32_t isum = 0;
        for (std::int64_t o = 0; o < a.n_outliers; ++o) {
          isum += a.outliers[m * a.n_outliers + o] * w.outliers[n * a.n_outliers + o];
        }
        const float t = static_cast<float>(isum) * fp16_to_fp32(a.outlier_scales[m]);
        acc = std::fma(t, fp16_to_fp32(w.outlier_scales[n]), acc);
      }
      y[m * w.n + n] = acc;
    }
  }
  return y;
}

std::vector<double> atom_linear_dequantized_reference(const QuantizedActivations& a,
                                                      const QuantizedLinearWeights& w) {
  check_pair(a, w, "atom_linear_dequantized_reference");
  const std::vector<float> da = dequantize_rows(a, a.m);
  const std::vector<float> dw = dequantize_rows(w, w.n);
  const std::int64_t k = w.k();
  std::vector<double> y(static_cast<std::size_t>(a.m * w.n));
  for (std::int64_t m = 0; m < a.m; ++m) {
    for (std::int64_t n = 0; n < w.n; ++n) {
      double acc = 0.0;
      for (std::int64_t j = 0; j < k; ++j) acc += static_cast<double>(da[m * k + j]) * dw[n * k + j];
      y[m * w.n + n] = acc;
    }
  }
  return y;
}

}  // namespace atom::quant
