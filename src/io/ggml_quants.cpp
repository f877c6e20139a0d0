#include "io/ggml_quants.h"

#include <cstring>

#include "common/error.h"
#include "common/half.h"

namespace atom::ggml {
namespace {

// Blocks are copied out of the (possibly unaligned) mapped file before their fields are read.
template <class Block>
Block load_block(const std::uint8_t* src, std::size_t i) {
  Block b;
  std::memcpy(&b, src + i * sizeof(Block), sizeof(Block));
  return b;
}

}  // namespace

void dequantize_q4_0(const std::uint8_t* src, float* dst, std::size_t n_blocks) {
  for (std::size_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ4_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    float* y = dst + i * kQK4_0;
    for (std::size_t j = 0; j < kQK4_0 / 2; ++j) {
      y[j] = static_cast<float>((b.qs[j] & 0x0F) - 8) * d;
      y[j + kQK4_0 / 2] = static_cast<float>((b.qs[j] >> 4) - 8) * d;
    }
  }
}

void dequantize_q4_1(const std::uint8_t* src, float* dst, std::size_t n_blocks) {
  for (std::size_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ4_1>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float m = fp16_to_fp32(b.m);
    float* y = dst + i * kQK4_1;
    for (std::size_t j = 0; j < kQK4_1 / 2; ++j) {
      y[j] = static_cast<float>(b.qs[j] & 0x0F) * d + m;
      y[j + kQK4_1 / 2] = static_cast<float>(b.qs[j] >> 4) * d + m;
    }
  }
}

void dequantize_q5_0(const std::uint8_t* src, float* dst, std::size_t n_blocks) {
  for (std::size_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ5_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    std::uint32_t qh;
    std::memcpy(&qh, b.qh, sizeof(qh));
    float* y = dst + i * kQK5_0;
    for (std::size_t j = 0; j < kQK5_0 / 2; ++j) {
      const int high0 = ((qh >> j) << 4) & 0x10;
      const int high1 = (qh >> (j + 12)) & 0x10;
      y[j] = static_cast<float>(((b.qs[j] & 0x0F) | high0) - 16) * d;
      y[j + kQK5_0 / 2] = static_cast<float>(((b.qs[j] >> 4) | high1) - 16) * d;
    }
  }
}

void dequantize_q5_1(const std::uint8_t* src, float* dst, std::size_t n_blocks) {
  for (std::size_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ5_1>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float m = fp16_to_fp32(b.m);
    std::uint32_t qh;
    std::memcpy(&qh, b.qh, sizeof(qh));
    float* y = dst + i * kQK5_1;
    for (std::size_t j = 0; j < kQK5_1 / 2; ++j) {
      const int high0 = ((qh >> j) << 4) & 0x10;
      const int high1 = (qh >> (j + 12)) & 0x10;
      y[j] = static_cast<float>((b.qs[j] & 0x0F) | high0) * d + m;
      y[j + kQK5_1 / 2] = static_cast<float>((b.qs[j] >> 4) | high1) * d + m;
    }
  }
}

void dequantize_q8_0(const std::uint8_t* src, float* dst, std::size_t n_blocks) {
  for (std::size_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ8_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    float* y = dst + i * kQK8_0;
    for (std::size_t j = 0; j < kQK8_0; ++j) y[j] = static_cast<float>(b.qs[j]) * d;
  }
}

void k_quant_scale_min(int j, const std::uint8_t* q, std::uint8_t* scale, std::uint8_t* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = static_cast<std::uint8_t>((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *min = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void dequantize_q4_k(const std::uint8_t* src, float* dst, std::size_t n_blocks) {
  for (std::size_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ4_K>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float dmin = fp16_to_fp32(b.dmin);
    float* y = dst + i * kQK_K;
    const std::uint8_t* q = b.qs;
    for (int s = 0; s < 8; s += 2, q += 32, y += 64) {
      std::uint8_t sc, m;
      k_quant_scale_min(s, b.scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      k_quant_scale_min(s + 1, b.scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) y[l] = d1 * static_cast<float>(q[l] & 0x0F) - m1;
      for (int l = 0; l < 32; ++l) y[l + 32] = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void dequantize_q5_k(const std::uint8_t* src, float* dst, std::size_t n_blocks) {
  for (std::size_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ5_K>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float dmin = fp16_to_fp32(b.dmin);
    float* y = dst + i * kQK_K;
    const std::uint8_t* ql = b.qs;
    for (int s = 0; s < 8; s += 2, ql += 32, y += 64) {
      std::uint8_t sc, m;
      k_quant_scale_min(s, b.scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      k_quant_scale_min(s + 1, b.scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      const std::uint8_t bit1 = static_cast<std::uint8_t>(1u << s), bit2 = static_cast<std::uint8_t>(2u << s);
      for (int l = 0; l < 32; ++l) {
        y[l] = d1 * static_cast<float>((ql[l] & 0x0F) + (b.qh[l] & bit1 ? 16 : 0)) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        y[l + 32] = d2 * static_cast<float>((ql[l] >> 4) + (b.qh[l] & bit2 ? 16 : 0)) - m2;
      }
    }
  }
}

void dequantize_q6_k(const std::uint8_t* src, float* dst, std::size_t n_blocks) {
  for (std::size_t i = 0; i < n_blocks; ++i) {
    const auto b = load_block<BlockQ6_K>(src, i);
    const float d = fp16_to_fp32(b.d);
    float* y = dst + i * kQK_K;
    const std::uint8_t* ql = b.ql;
    const std::uint8_t* qh = b.qh;
    const std::int8_t* sc = b.scales;
    for (std::size_t n = 0; n < kQK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

std::string_view ggml_type_name(std::uint32_t id) {
  switch (static_cast<GgmlType>(id)) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q8_1: return "Q8_1";
    case GgmlType::Q2_K: return "Q2_K";
    case GgmlType::Q3_K: return "Q3_K";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
    case GgmlType::Q8_K: return "Q8_K";
    case GgmlType::IQ2_XXS: return "IQ2_XXS";
    case GgmlType::IQ2_XS: return "IQ2_XS";
    case GgmlType::IQ3_XXS: return "IQ3_XXS";
    case GgmlType::IQ1_S: return "IQ1_S";
    case GgmlType::IQ4_NL: return "IQ4_NL";
    case GgmlType::IQ3_S: return "IQ3_S";
    case GgmlType::IQ2_S: return "IQ2_S";
    case GgmlType::IQ4_XS: return "IQ4_XS";
    case GgmlType::I8: return "I8";
    case GgmlType::I16: return "I16";
    case GgmlType::I32: return "I32";
    case GgmlType::I64: return "I64";
    case GgmlType::F64: return "F64";
    case GgmlType::IQ1_M: return "IQ1_M";
    case GgmlType::BF16: return "BF16";
    case GgmlType::TQ1_0: return "TQ1_0";
    case GgmlType::TQ2_0: return "TQ2_0";
    case GgmlType::MXFP4: return "MXFP4";
  }
  return "";
}

std::optional<DType> dtype_from_ggml_type(std::uint32_t id) {
  switch (static_cast<GgmlType>(id)) {
    case GgmlType::F32: return DType::F32;
    case GgmlType::F16: return DType::F16;
    case GgmlType::BF16: return DType::BF16;
    case GgmlType::F64: return DType::F64;
    case GgmlType::I8: return DType::I8;
    case GgmlType::I16: return DType::I16;
    case GgmlType::I32: return DType::I32;
    case GgmlType::I64: return DType::I64;
    case GgmlType::Q4_0: return DType::Q4_0;
    case GgmlType::Q4_1: return DType::Q4_1;
    case GgmlType::Q5_0: return DType::Q5_0;
    case GgmlType::Q5_1: return DType::Q5_1;
    case GgmlType::Q8_0: return DType::Q8_0;
    case GgmlType::Q4_K: return DType::Q4_K;
    case GgmlType::Q5_K: return DType::Q5_K;
    case GgmlType::Q6_K: return DType::Q6_K;
    default: return std::nullopt;
  }
}

std::uint32_t ggml_type_from_dtype(DType t) {
  switch (t) {
    case DType::F32: return static_cast<std::uint32_t>(GgmlType::F32);
    case DType::F16: return static_cast<std::uint32_t>(GgmlType::F16);
    case DType::BF16: return static_cast<std::uint32_t>(GgmlType::BF16);
    case DType::F64: return static_cast<std::uint32_t>(GgmlType::F64);
    case DType::I8: return static_cast<std::uint32_t>(GgmlType::I8);
    case DType::I16: return static_cast<std::uint32_t>(GgmlType::I16);
    case DType::I32: return static_cast<std::uint32_t>(GgmlType::I32);
    case DType::I64: return static_cast<std::uint32_t>(GgmlType::I64);
    case DType::Q4_0: return static_cast<std::uint32_t>(GgmlType::Q4_0);
    case DType::Q4_1: return static_cast<std::uint32_t>(GgmlType::Q4_1);
    case DType::Q5_0: return static_cast<std::uint32_t>(GgmlType::Q5_0);
    case DType::Q5_1: return static_cast<std::uint32_t>(GgmlType::Q5_1);
    case DType::Q8_0: return static_cast<std::uint32_t>(GgmlType::Q8_0);
    case DType::Q4_K: return static_cast<std::uint32_t>(GgmlType::Q4_K);
    case DType::Q5_K: return static_cast<std::uint32_t>(GgmlType::Q5_K);
    case DType::Q6_K: return static_cast<std::uint32_t>(GgmlType::Q6_K);
    case DType::U8: break;
  }
  fail("dtype {} has no ggml type (GGUF cannot store it)", dtype_name(t));
}

}  // namespace atom::ggml
