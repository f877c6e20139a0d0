#include "backend/cpu/atom_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <span>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/parallel.h"
#include "common/error.h"

namespace atom::cpu {

using quant::NumberFormat;

namespace {

constexpr std::int64_t kTileOutputs = 8;    // one ymm of fp32 results per tile (MT x NT = 8)
constexpr std::int64_t kSegment = 1024;     // int16 partial sums are widened at least this often
constexpr std::int64_t kOutlierAlign = 32;  // outlier rows padded with zeros to this multiple
constexpr std::int64_t kRowBlock = 64;      // activation rows kept hot while sweeping the weights

std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

// The split-layout chunk of the AVX-512 VNNI tiles (one 64-byte load of packed weights).
constexpr std::int64_t kVnniChunk = 128;

// Whether q runs on the VNNI tiles: signed 4-bit integer codes (FP4's need a table), groups of 128k.
bool vnni_layout_fits(const quant::QuantizedLinearWeights& q) {
  return avx512_vnni_enabled() && (q.format == NumberFormat::kInt4 || q.format == NumberFormat::kInt3) &&
         q.group % kVnniChunk == 0;
}

std::int32_t activation_offset(NumberFormat f) {
  switch (f) {
    case NumberFormat::kInt3:
    case NumberFormat::kInt4:
      return 8;
    case NumberFormat::kFp4:
      return 12;  // doubled codes span [-12, 12]
    case NumberFormat::kInt8:
      return 0;
  }
  return 0;
}

// Sums of eight int32 vectors: lane i of the result is the sum of the lanes of v[i].
inline __m256i reduce8(const __m256i v[8]) {
  const __m256i h0 = _mm256_hadd_epi32(v[0], v[1]), h1 = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i h2 = _mm256_hadd_epi32(v[4], v[5]), h3 = _mm256_hadd_epi32(v[6], v[7]);
  const __m256i h01 = _mm256_hadd_epi32(h0, h1), h23 = _mm256_hadd_epi32(h2, h3);
  return _mm256_add_epi32(_mm256_permute2x128_si256(h01, h23, 0x20),
                          _mm256_permute2x128_si256(h01, h23, 0x31));
}

// Lane (mt * NT + nt) takes per-output value p[nt].
template <int MT, int NT>
inline __m256 output_lanes(const float* p) {
  if constexpr (NT == 8)
    return _mm256_loadu_ps(p);
  else
    return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(p));
}
template <int MT, int NT>
inline __m256i output_lanes(const std::int32_t* p) {
  if constexpr (NT == 8)
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  else
    return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
// Lane (mt * NT + nt) takes per-row value v[mt].
template <int MT>
inline __m256 row_lanes(const float v[MT]) {
  if constexpr (MT == 1)
    return _mm256_set1_ps(v[0]);
  else
    return _mm256_set_m128(_mm_set1_ps(v[1]), _mm_set1_ps(v[0]));
}

// Byte offset of channel k's chunk (k a multiple of C) from a row's first chunk in the tile-interleaved
// codes: the tile's 8 rows take C / 2 bytes each per chunk.
template <int C>
constexpr std::int64_t tiled_offset(std::int64_t k) {
  return k / C * kTileOutputs * (C / 2);
}

// int32 partial sums (8 lanes each, not yet reduced) over [begin, end) of split-layout activation bytes times
// the packed nibble weights (decoded by `lut`) of NP outputs, added to acc32[mt * NT + nt0 + np].
template <int MT, int NP, int NT, int C>
inline void packed_partial(const std::uint8_t* const a[MT], const std::uint8_t* const w[NP],
                           std::int64_t begin, std::int64_t end, __m256i lut, int nt0, __m256i* acc32) {
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (std::int64_t seg = begin; seg < end; seg += kSegment) {
    const std::int64_t seg_end = std::min(seg + kSegment, end);
    __m256i acc16[MT * NP];
    for (auto& v : acc16) v = _mm256_setzero_si256();
    for (std::int64_t k = seg; k < seg_end; k += C) {
      if constexpr (C == 64) {
        __m256i even[MT], odd[MT];
        for (int mt = 0; mt < MT; ++mt) {
          even[mt] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[mt] + k));
          odd[mt] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[mt] + k + 32));
        }
        for (int np = 0; np < NP; ++np) {
          const __m256i wb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[np] + tiled_offset<C>(k)));
          const __m256i wl = _mm256_shuffle_epi8(lut, _mm256_and_si256(wb, low_nibbles));
          const __m256i wh =
              _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(wb, 4), low_nibbles));
          for (int mt = 0; mt < MT; ++mt) {
            const __m256i s =
                _mm256_add_epi16(_mm256_maddubs_epi16(even[mt], wl), _mm256_maddubs_epi16(odd[mt], wh));
            acc16[mt * NP + np] = _mm256_add_epi16(acc16[mt * NP + np], s);
          }
        }
      } else {
        __m256i act[MT];
        for (int mt = 0; mt < MT; ++mt)
          act[mt] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[mt] + k));
        for (int np = 0; np < NP; ++np) {
          const __m128i wb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[np] + tiled_offset<C>(k)));
          const __m256i both = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(wb, 4), wb), low_nibbles);
          const __m256i wv = _mm256_shuffle_epi8(lut, both);
          for (int mt = 0; mt < MT; ++mt) {
            acc16[mt * NP + np] = _mm256_add_epi16(acc16[mt * NP + np], _mm256_maddubs_epi16(act[mt], wv));
          }
        }
      }
    }
    for (int mt = 0; mt < MT; ++mt) {
      for (int np = 0; np < NP; ++np) {
        __m256i& dst = acc32[mt * NT + nt0 + np];
        dst = _mm256_add_epi32(dst, _mm256_madd_epi16(acc16[mt * NP + np], ones));
      }
    }
  }
}

// Lane sums over [begin, end) of split-layout activations times packed weights, for all MT x NT outputs.
// The outputs are swept in passes of NT/2 (4 int16 accumulators live at a time: no register spills).
template <int MT, int NT, int C>
inline __m256i packed_dot(const std::uint8_t* const a[MT], const std::uint8_t* const w[NT],
                          std::int64_t begin, std::int64_t end, __m256i lut) {
  constexpr int NP = NT / 2;
  __m256i acc32[MT * NT];
  for (auto& v : acc32) v = _mm256_setzero_si256();
  packed_partial<MT, NP, NT, C>(a, w, begin, end, lut, 0, acc32);
  packed_partial<MT, NP, NT, C>(a, w + NP, begin, end, lut, NP, acc32);
  return reduce8(acc32);
}

// Lane sums over [begin, end) (a multiple of 16 long) of int8 activations times int8 weights.
template <int MT, int NT>
inline __m256i int8_dot(const std::int8_t* const a[MT], const std::int8_t* const w[NT], std::int64_t begin,
                        std::int64_t end) {
  __m256i acc32[MT * NT];
  for (auto& v : acc32) v = _mm256_setzero_si256();
  for (std::int64_t k = begin; k < end; k += 16) {
    __m256i a16[MT];
    for (int mt = 0; mt < MT; ++mt) {
      a16[mt] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a[mt] + k)));
    }
    for (int nt = 0; nt < NT; ++nt) {
      const __m256i w16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[nt] + k)));
      for (int mt = 0; mt < MT; ++mt) {
        acc32[mt * NT + nt] = _mm256_add_epi32(acc32[mt * NT + nt], _mm256_madd_epi16(a16[mt], w16));
      }
    }
  }
  return reduce8(acc32);
}

struct GemmArgs {
  const AtomActivations& a;
  const AtomPreparedWeights& w;
  float* y;
  __m256i lut;
};

// One tile of MT rows x NT outputs starting at (m0, n0); rows/outputs past the end are computed on
// clamped indices and not stored.
// The end of every tile kernel: the INT8 outlier chunk's int32 sum, scaled last (the reference's order), then
// the tile's outputs that exist stored.
template <int MT, int NT>
inline void finish_tile(const GemmArgs& args, const std::int64_t (&rows)[MT], std::int64_t m0, std::int64_t n0,
                        __m256 acc) {
  const std::int64_t M = args.a.m, N = args.w.q.n;
  const std::int64_t n_out_pad = args.w.n_out_pad;
  if (n_out_pad > 0) {
    const std::int8_t* ao[MT];
    const std::int8_t* wo[NT];
    float sa[MT];
    for (int mt = 0; mt < MT; ++mt) {
      ao[mt] = args.a.outliers.data() + rows[mt] * n_out_pad;
      sa[mt] = args.a.outlier_scales[rows[mt]];
    }
    for (int nt = 0; nt < NT; ++nt) wo[nt] = args.w.outliers.data() + (n0 + nt) * n_out_pad;
    const __m256i isum = int8_dot<MT, NT>(ao, wo, 0, n_out_pad);
    const __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), row_lanes<MT>(sa));
    acc = _mm256_fmadd_ps(t, output_lanes<MT, NT>(args.w.outlier_scales.data() + n0), acc);
  }
  alignas(32) float out[kTileOutputs];
  _mm256_store_ps(out, acc);
  for (int mt = 0; mt < MT; ++mt) {
    if (m0 + mt >= M) break;
    for (int nt = 0; nt < NT; ++nt) {
      if (n0 + nt < N) args.y[(m0 + mt) * N + n0 + nt] = out[mt * NT + nt];
    }
  }
}

template <int MT, int NT, int C>
void gemm_tile(const GemmArgs& args, std::int64_t m0, std::int64_t n0) {
  static_assert(MT * NT == kTileOutputs);
  const auto& q = args.w.q;
  const std::int64_t M = args.a.m, N = q.n, groups = args.w.groups(), G = q.group, n_pad = args.w.n_pad;
  const std::int64_t row_bytes = quant::format_row_bytes(q.format, q.k_normal);
  std::int64_t rows[MT];
  for (int mt = 0; mt < MT; ++mt) rows[mt] = std::min(m0 + mt, M - 1);
  const std::uint8_t* a_rows[MT];
  const std::uint8_t* w_rows[NT];
  for (int mt = 0; mt < MT; ++mt) a_rows[mt] = args.a.codes.data() + rows[mt] * q.k_normal;
  if constexpr (C == 0) {  // INT8: canonical rows
    for (int nt = 0; nt < NT; ++nt) w_rows[nt] = q.packed.data() + std::min(n0 + nt, N - 1) * row_bytes;
  } else {  // the row's first chunk in the tile-interleaved codes (padding rows hold code 0)
    const std::int64_t tile = n0 / kTileOutputs, first = n0 % kTileOutputs;
    for (int nt = 0; nt < NT; ++nt)
      w_rows[nt] =
          args.w.tiled_codes.data() + (tile * (q.k_normal / C) * kTileOutputs + first + nt) * (C / 2);
  }
  const float fp4_unit = q.format == NumberFormat::kFp4 ? 0.25f : 1.0f;  // doubled codes: products are 4x

  __m256 acc = _mm256_setzero_ps();
  for (std::int64_t g = 0; g < groups; ++g) {
    __m256i isum;
    if constexpr (C == 0) {
      isum = int8_dot<MT, NT>(reinterpret_cast<const std::int8_t* const*>(a_rows),
                              reinterpret_cast<const std::int8_t* const*>(w_rows), g * G, (g + 1) * G);
    } else {
      isum = packed_dot<MT, NT, C>(a_rows, w_rows, g * G, (g + 1) * G, args.lut);
      isum = _mm256_sub_epi32(isum, output_lanes<MT, NT>(args.w.offset_wsum_t.data() + g * n_pad + n0));
    }
    float sa[MT];
    for (int mt = 0; mt < MT; ++mt) sa[mt] = args.a.scales[rows[mt] * groups + g];
    __m256 dot = _mm256_cvtepi32_ps(isum);
    if (C != 0 && fp4_unit != 1.0f) dot = _mm256_mul_ps(dot, _mm256_set1_ps(fp4_unit));  // exact
    const __m256 t = _mm256_mul_ps(dot, row_lanes<MT>(sa));
    acc = _mm256_fmadd_ps(t, output_lanes<MT, NT>(args.w.scales_t.data() + g * n_pad + n0), acc);
  }
  finish_tile<MT, NT>(args, rows, m0, n0, acc);
}

// Rows [mb, mb_end) of the 8 outputs of tile `t` (any m: pairs of rows, then a lone one).
template <int C>
void gemm_tile_rows(const GemmArgs& args, std::int64_t mb, std::int64_t mb_end, std::int64_t t) {
  const std::int64_t n0 = t * kTileOutputs;
  std::int64_t m = mb;
  for (; m + 2 <= mb_end; m += 2) {
    gemm_tile<2, 4, C>(args, m, n0);
    gemm_tile<2, 4, C>(args, m, n0 + 4);
  }
  if (m < mb_end) gemm_tile<1, 8, C>(args, m, n0);
}

// ---- AVX-512 VNNI tiles (INT4 / INT3 weights, groups of 128k)
//
// VPDPBUSD multiplies unsigned by signed bytes. The weight nibbles, XOR 8, are code + 8 in [0, 15]
// (unsigned); the activations are signed codes in the split layout with chunk 128, so one 64-byte load of a
// packed weight row covers 128 channels: low nibbles <-> the chunk's 64 even channels, high nibbles <-> its
// 64 odd ones. sum((w + 8) a) - 8 sum(a) = sum(w a): the group's exact integer dot product, then the same
// fp32 epilogue as the AVX2 tile (same bits).

#define ATOM_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// Lane i of the result: the sum of the 16 lanes of v[i], for 8 vectors.
ATOM_VNNI_TARGET inline __m256i reduce8_512(const __m512i v[8]) {
  __m256i halves[8];
  for (int i = 0; i < 8; ++i) {  // zero-masked extracts: GCC 12's cast intrinsics trip -Wuninitialized
    halves[i] = _mm256_add_epi32(_mm512_maskz_extracti64x4_epi64(0xF, v[i], 0),
                                 _mm512_maskz_extracti64x4_epi64(0xF, v[i], 1));
  }
  return reduce8(halves);
}

template <int MT, int NT>
ATOM_VNNI_TARGET void gemm_tile_vnni(const GemmArgs& args, std::int64_t m0, std::int64_t n0) {
  static_assert(MT * NT == kTileOutputs);
  const auto& q = args.w.q;
  const std::int64_t M = args.a.m, groups = args.w.groups(), G = q.group;
  std::int64_t rows[MT];
  for (int mt = 0; mt < MT; ++mt) rows[mt] = std::min(m0 + mt, M - 1);
  const std::int8_t* a_rows[MT];
  for (int mt = 0; mt < MT; ++mt)
    a_rows[mt] = reinterpret_cast<const std::int8_t*>(args.a.codes.data()) + rows[mt] * q.k_normal;
  // This tile's outputs in the tile-interleaved copies (padding rows hold code 0 and scale 0).
  const std::int64_t tile = n0 / kTileOutputs, first = n0 % kTileOutputs;
  constexpr std::int64_t kChunkBytes = kVnniChunk / 2;
  const std::uint8_t* codes =
      args.w.tiled_codes.data() + tile * (q.k_normal / kVnniChunk) * kTileOutputs * kChunkBytes;
  const float* scales = args.w.tiled_scales.data() + tile * groups * kTileOutputs + first;
  const __m512i low_nibbles = _mm512_set1_epi8(0x0F), sign_flip = _mm512_set1_epi8(static_cast<char>(0x88));

  __m256 acc = _mm256_setzero_ps();
  for (std::int64_t g = 0; g < groups; ++g) {
    __m512i acc32[kTileOutputs];
    for (auto& v : acc32) v = _mm512_setzero_si512();
    for (std::int64_t k = g * G; k < (g + 1) * G; k += kVnniChunk) {
      __m512i even[MT], odd[MT];
      for (int mt = 0; mt < MT; ++mt) {
        even[mt] = _mm512_loadu_si512(a_rows[mt] + k);
        odd[mt] = _mm512_loadu_si512(a_rows[mt] + k + 64);
      }
      for (int nt = 0; nt < NT; ++nt) {
        const std::uint8_t* w = codes + ((k / kVnniChunk) * kTileOutputs + first + nt) * kChunkBytes;
        const __m512i wb = _mm512_xor_si512(_mm512_loadu_si512(w), sign_flip);
        const __m512i wl = _mm512_and_si512(wb, low_nibbles);
        const __m512i wh = _mm512_and_si512(_mm512_srli_epi16(wb, 4), low_nibbles);
        for (int mt = 0; mt < MT; ++mt) {
          __m512i& dst = acc32[mt * NT + nt];
          dst = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(dst, wl, even[mt]), wh, odd[mt]);
        }
      }
    }
    std::int32_t bias[MT];
    float sa[MT];
    for (int mt = 0; mt < MT; ++mt) {
      bias[mt] = 8 * args.a.group_sums[rows[mt] * groups + g];
      sa[mt] = args.a.scales[rows[mt] * groups + g];
    }
    const __m256i bias_lanes = MT == 1
                                   ? _mm256_set1_epi32(bias[0])
                                   : _mm256_set_m128i(_mm_set1_epi32(bias[MT - 1]), _mm_set1_epi32(bias[0]));
    const __m256i isum = _mm256_sub_epi32(reduce8_512(acc32), bias_lanes);
    const __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), row_lanes<MT>(sa));
    acc = _mm256_fmadd_ps(t, output_lanes<MT, NT>(scales + g * kTileOutputs), acc);
  }
  finish_tile<MT, NT>(args, rows, m0, n0, acc);
}

ATOM_VNNI_TARGET void gemm_tile_rows_vnni(const GemmArgs& args, std::int64_t mb, std::int64_t mb_end,
                                          std::int64_t t) {
  const std::int64_t n0 = t * kTileOutputs;
  std::int64_t m = mb;
  for (; m + 2 <= mb_end; m += 2) {
    gemm_tile_vnni<2, 4>(args, m, n0);
    gemm_tile_vnni<2, 4>(args, m, n0 + 4);
  }
  if (m < mb_end) gemm_tile_vnni<1, 8>(args, m, n0);
}

void gemm_tile_rows_any(const GemmArgs& args, std::int64_t mb, std::int64_t mb_end, std::int64_t t) {
  switch (args.w.chunk) {
    case kVnniChunk:
      return gemm_tile_rows_vnni(args, mb, mb_end, t);
    case 64:
      return gemm_tile_rows<64>(args, mb, mb_end, t);
    case 32:
      return gemm_tile_rows<32>(args, mb, mb_end, t);
    default:
      return gemm_tile_rows<0>(args, mb, mb_end, t);
  }
}

__m256i code_lut(NumberFormat format) {
  alignas(32) std::int8_t lut_bytes[32];
  for (int i = 0; i < 32; ++i) {
    const auto nibble = static_cast<std::uint8_t>(i & 15);
    lut_bytes[i] =
        format == NumberFormat::kFp4 ? quant::fp4_decode_doubled(nibble) : quant::nibble_to_int4(nibble);
  }
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(lut_bytes));
}

// Products of one set of activations with several weights, all tiles in one OpenMP loop (q/k/v, gate/up: one
// fork and join instead of one per product). Tiles are independent: the same bits as one product at a time.
void gemm_all(const AtomActivations& a, std::span<const AtomPreparedWeights* const> ws,
              std::span<float* const> ys) {
  // No heap: this runs for every linear of every decode step.
  const std::size_t count = ws.size();
  std::optional<GemmArgs> args[kMaxSharedProducts];
  std::int64_t first_tile[kMaxSharedProducts + 1] = {
      0};  // tiles of product i: [first_tile[i], first_tile[i + 1])
  std::int64_t work = 0;
  for (std::size_t i = 0; i < count; ++i) {
    args[i].emplace(GemmArgs{a, *ws[i], ys[i], code_lut(ws[i]->q.format)});
    first_tile[i + 1] = first_tile[i] + (ws[i]->q.n > 0 ? ws[i]->n_pad / kTileOutputs : 0);
    work += a.m * ws[i]->n_pad * ws[i]->q.k();
  }
  const std::int64_t tiles = first_tile[count], M = a.m;
  // A decode step's products take 15-100 us on one core (SmolLM2): whether splitting pays depends on what a
  // split costs here (parallel.h).
  for (std::int64_t mb = 0; mb < M; mb += kRowBlock) {
    const std::int64_t mb_end = std::min(M, mb + kRowBlock);
    const double block_us = static_cast<double>(work) / kIntMacsPerUs * static_cast<double>(mb_end - mb) / M;
    parallel_for(tiles, block_us, Schedule::kStatic, [&](std::int64_t t0, std::int64_t t1) {
      for (std::int64_t t = t0; t < t1; ++t) {
        std::size_t i = 0;
        while (t >= first_tile[i + 1]) ++i;
        gemm_tile_rows_any(*args[i], mb, mb_end, t - first_tile[i]);
      }
    });
  }
}

// ---- activation quantization

enum class CodeKind { kOffsetInt, kOffsetFp4, kInt8 };

inline float max_abs(const float* buf, std::int64_t len) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 acc = _mm256_setzero_ps();
  // max_ps returns its second operand when either is NaN: NaN elements are ignored (fmaxf semantics).
  for (std::int64_t i = 0; i < len; i += 8)
    acc = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(buf + i), abs_mask), acc);
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// Codes of buf[0, len) (len a multiple of 32) under `scale` (non-zero) as bytes.
void quantize_block(const float* buf, std::int64_t len, float scale, CodeKind kind, float qmax,
                    std::int32_t offset, std::uint8_t* out) {
  const __m256 s = _mm256_set1_ps(scale);
  const __m256 lo = _mm256_set1_ps(-qmax - 1.0f), hi = _mm256_set1_ps(qmax);
  const __m256i off = _mm256_set1_epi32(offset);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i doubled = _mm256_setr_epi32(0, 1, 2, 3, 4, 6, 8, 12);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (std::int64_t i = 0; i < len; i += 32) {
    __m256i q[4];
    for (int j = 0; j < 4; ++j) {
      const __m256 v =
          _mm256_div_ps(_mm256_loadu_ps(buf + i + 8 * j), s);  // IEEE division, as the format says
      if (kind == CodeKind::kOffsetFp4) {
        const __m256 a = _mm256_and_ps(v, abs_mask);
        __m256i m = _mm256_setzero_si256();
        // Decision thresholds of fp4_encode; ordered compares are false for NaN (-> code 0).
        m = _mm256_sub_epi32(m, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(0.25f), _CMP_GT_OQ)));
        m = _mm256_sub_epi32(m, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(0.75f), _CMP_GE_OQ)));
        m = _mm256_sub_epi32(m, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(1.25f), _CMP_GT_OQ)));
        m = _mm256_sub_epi32(m, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(1.75f), _CMP_GE_OQ)));
        m = _mm256_sub_epi32(m, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(2.5f), _CMP_GT_OQ)));
        m = _mm256_sub_epi32(m, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(3.5f), _CMP_GE_OQ)));
        m = _mm256_sub_epi32(m, _mm256_castps_si256(_mm256_cmp_ps(a, _mm256_set1_ps(5.0f), _CMP_GT_OQ)));
        const __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
        const __m256i d = _mm256_permutevar8x32_epi32(doubled, m);
        q[j] = _mm256_add_epi32(_mm256_sub_epi32(_mm256_xor_si256(d, neg), neg), off);
      } else {
        __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);  // max_ps(NaN, lo) = lo, as the format's fmaxf
        q[j] = _mm256_add_epi32(_mm256_cvtps_epi32(r), off);
      }
    }
    const __m256i p01 = _mm256_packs_epi32(q[0], q[1]), p23 = _mm256_packs_epi32(q[2], q[3]);
    // Signed saturation: offset codes lie in [0, 24], the VNNI layout's signed ones in [-8, 7], int8 in
    // [-128, 127]; all pack to the bytes they are.
    const __m256i bytes = _mm256_packs_epi16(p01, p23);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_permutevar8x32_epi32(bytes, order));
  }
}

// Quantizes buf[0, len) (len a multiple of 32) in one group; returns the fp16 scale as fp32.
float quantize_group(const float* buf, std::int64_t len, float clip, CodeKind kind, float qmax,
                     std::int32_t offset, std::uint8_t* out) {
  const float scale = fp16_to_fp32(fp32_to_fp16(clip * max_abs(buf, len) / qmax));
  if (scale == 0.0f) {
    std::memset(out, offset, static_cast<std::size_t>(len));
  } else {
    quantize_block(buf, len, scale, kind, qmax, offset, out);
  }
  return scale;
}

}  // namespace

std::int64_t split_layout_channel(std::int64_t p, std::int64_t chunk) {
  if (chunk == 0) return p;
  const std::int64_t base = p / chunk * chunk, offset = p - base,
                     half = chunk / 2;  // even half, then odd half
  return offset < half ? base + 2 * offset : base + 2 * (offset - half) + 1;
}

AtomPreparedWeights prepare_atom_weights(quant::QuantizedLinearWeights q, const char* what,
                                         InputOrder order) {
  quant::validate(q, what);
  if (q.group % 32 != 0)
    fail("{}: group size {} is not a multiple of 32 (CPU integer kernels)", what, q.group);
  AtomPreparedWeights p;
  const std::int64_t N = q.n, groups = q.k_normal / q.group;
  p.n_pad = round_up(std::max<std::int64_t>(N, 1), kTileOutputs);
  if (vnni_layout_fits(q)) {
    p.chunk = kVnniChunk;  // signed activation codes, act_offset 0
  } else {
    p.chunk = quant::format_is_packed(q.format) ? (q.group % 64 == 0 ? 64 : 32) : 0;
  }
  p.n_out_pad = round_up(q.n_outliers, kOutlierAlign);
  p.act_offset = p.chunk == kVnniChunk ? 0 : activation_offset(q.format);
  p.scales_t.assign(static_cast<std::size_t>(groups * p.n_pad), 0.0f);
  p.offset_wsum_t.assign(p.scales_t.size(), 0);
  const std::int64_t row_bytes = quant::format_row_bytes(q.format, q.k_normal);
  for (std::int64_t n = 0; n < N; ++n) {
    const auto codes = quant::normal_row_integers(
        {q.packed.data() + n * row_bytes, static_cast<std::size_t>(row_bytes)}, q.k_normal, q.format);
    for (std::int64_t g = 0; g < groups; ++g) {
      std::int32_t sum = 0;
      for (std::int64_t k = g * q.group; k < (g + 1) * q.group; ++k) sum += codes[k];
      p.offset_wsum_t[g * p.n_pad + n] = p.act_offset * sum;
      p.scales_t[g * p.n_pad + n] = fp16_to_fp32(q.scales[n * groups + g]);
    }
  }
  p.outliers.assign(static_cast<std::size_t>(p.n_pad * p.n_out_pad), 0);
  p.outlier_scales.assign(static_cast<std::size_t>(p.n_pad), 0.0f);
  for (std::int64_t n = 0; n < N && q.n_outliers > 0; ++n) {
    std::memcpy(p.outliers.data() + n * p.n_out_pad, q.outliers.data() + n * q.n_outliers,
                static_cast<std::size_t>(q.n_outliers));
    p.outlier_scales[n] = fp16_to_fp32(q.outlier_scales[n]);
  }
  p.gather.resize(static_cast<std::size_t>(q.k_normal + p.n_out_pad));
  const auto source = [&](std::int64_t j) -> std::int32_t {
    return order == InputOrder::kOriginal ? q.perm[j] : static_cast<std::int32_t>(j);
  };
  for (std::int64_t pos = 0; pos < q.k_normal; ++pos)
    p.gather[pos] = source(split_layout_channel(pos, p.chunk));
  for (std::int64_t o = 0; o < p.n_out_pad; ++o)
    p.gather[q.k_normal + o] = o < q.n_outliers ? source(q.k_normal + o) : -1;
  if (p.chunk != 0) {
    // Tile-interleaved codes for the packed formats; the canonical ones go (the tiles are all that reads
    // them).
    const std::int64_t chunks = q.k_normal / p.chunk, tiles = p.n_pad / kTileOutputs,
                       chunk_bytes = p.chunk / 2;
    p.tiled_codes.assign(static_cast<std::size_t>(tiles * chunks * kTileOutputs * chunk_bytes), 0);
    for (std::int64_t n = 0; n < N; ++n) {
      const std::int64_t t = n / kTileOutputs, o = n % kTileOutputs;
      for (std::int64_t c = 0; c < chunks; ++c) {
        std::memcpy(p.tiled_codes.data() + ((t * chunks + c) * kTileOutputs + o) * chunk_bytes,
                    q.packed.data() + n * row_bytes + c * chunk_bytes, static_cast<std::size_t>(chunk_bytes));
      }
    }
    std::vector<std::uint8_t>().swap(q.packed);
  }
  if (p.chunk == kVnniChunk) {  // the VNNI tiles read their scales tile-interleaved too, and no offset sums
    const std::int64_t tiles = p.n_pad / kTileOutputs;
    p.tiled_scales.assign(static_cast<std::size_t>(tiles * groups * kTileOutputs), 0.0f);
    for (std::int64_t n = 0; n < N; ++n) {
      const std::int64_t t = n / kTileOutputs, o = n % kTileOutputs;
      for (std::int64_t g = 0; g < groups; ++g)
        p.tiled_scales[(t * groups + g) * kTileOutputs + o] = p.scales_t[g * p.n_pad + n];
    }
    std::vector<float>().swap(p.scales_t);
    std::vector<std::int32_t>().swap(p.offset_wsum_t);
  }
  p.q = std::move(q);
  return p;
}

void quantize_activations_avx2(const float* x, std::int64_t m, const AtomPreparedWeights& w, float clip,
                               AtomActivations& a) {
  if (!(clip > 0.0f && clip <= 1.0f)) fail("activation clip ratio {} not in (0, 1]", clip);
  const auto& q = w.q;
  const std::int64_t K = q.k(), G = q.group, groups = w.groups(), n_out_pad = w.n_out_pad;
  const CodeKind kind = q.format == NumberFormat::kInt8  ? CodeKind::kInt8
                        : q.format == NumberFormat::kFp4 ? CodeKind::kOffsetFp4
                                                         : CodeKind::kOffsetInt;
  const float qmax = quant::format_qmax(q.format);
  a.m = m;
  a.codes.resize(static_cast<std::size_t>(m * q.k_normal));
  a.scales.resize(static_cast<std::size_t>(m * groups));
  a.outliers.resize(static_cast<std::size_t>(m * n_out_pad));
  a.outlier_scales.resize(static_cast<std::size_t>(n_out_pad > 0 ? m : 0));
  const bool vnni = w.chunk == kVnniChunk;
  a.group_sums.resize(static_cast<std::size_t>(vnni ? m * groups : 0));
  parallel_for(m, static_cast<double>(m * K) / kRowElementsPerUs, Schedule::kStatic, [&](std::int64_t r0,
                                                                                         std::int64_t r1) {
    thread_local std::vector<float> buf;  // no allocation per token once grown
    buf.resize(static_cast<std::size_t>(std::max(G, n_out_pad)));
    for (std::int64_t r = r0; r < r1; ++r) {
      const float* row = x + r * K;
      for (std::int64_t g = 0; g < groups; ++g) {
        const std::int32_t* idx = w.gather.data() + g * G;
        for (std::int64_t i = 0; i < G; i += 8) {
          const __m256i vi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + i));
          _mm256_storeu_ps(buf.data() + i, _mm256_i32gather_ps(row, vi, 4));
        }
        std::uint8_t* codes = a.codes.data() + r * q.k_normal + g * G;
        a.scales[r * groups + g] = quantize_group(buf.data(), G, clip, kind, qmax, w.act_offset, codes);
        if (vnni) {
          std::int32_t sum = 0;
          for (std::int64_t i = 0; i < G; ++i) sum += static_cast<std::int8_t>(codes[i]);
          a.group_sums[r * groups + g] = sum;
        }
      }
      if (n_out_pad > 0) {
        const std::int32_t* idx = w.gather.data() + q.k_normal;
        for (std::int64_t o = 0; o < n_out_pad; ++o) buf[o] = idx[o] >= 0 ? row[idx[o]] : 0.0f;
        a.outlier_scales[r] =
            quantize_group(buf.data(), n_out_pad, 1.0f, CodeKind::kInt8, 127.0f, 0,
                           reinterpret_cast<std::uint8_t*>(a.outliers.data() + r * n_out_pad));
      }
    }
  });
}

void atom_gemm_avx2(const AtomActivations& a, const AtomPreparedWeights& w, float* y) {
  const AtomPreparedWeights* ws[] = {&w};
  float* ys[] = {y};
  atom_gemm_avx2(a, ws, ys);
}

void atom_gemm_avx2(const AtomActivations& a, std::span<const AtomPreparedWeights* const> ws,
                    std::span<float* const> ys) {
  if (ws.size() != ys.size() || ws.empty() || ws.size() > kMaxSharedProducts)
    fail("atom_gemm_avx2: {} weights for {} outputs (1 to {})", ws.size(), ys.size(), kMaxSharedProducts);
  for (const AtomPreparedWeights* w : ws) {
    const auto& q = w->q;
    if (a.codes.size() != static_cast<std::size_t>(a.m * q.k_normal) ||
        a.outliers.size() != static_cast<std::size_t>(a.m * w->n_out_pad) ||
        !same_activation_layout(*w, *ws[0])) {
      fail("atom_gemm_avx2: activations of {} rows do not match the layer (k_normal {}, outliers {})", a.m,
           q.k_normal, q.n_outliers);
    }
  }
  if (a.m == 0) return;
  gemm_all(a, ws, ys);
}

bool same_activation_layout(const AtomPreparedWeights& a, const AtomPreparedWeights& b) {
  return a.q.format == b.q.format && a.q.group == b.q.group && a.q.k_normal == b.q.k_normal &&
         a.n_out_pad == b.n_out_pad && a.chunk == b.chunk && a.act_offset == b.act_offset &&
         a.gather == b.gather;
}

quant::QuantizedActivations to_canonical(const AtomActivations& a, const AtomPreparedWeights& w) {
  const auto& q = w.q;
  quant::QuantizedActivations c;
  c.m = a.m;
  c.k_normal = q.k_normal;
  c.n_outliers = q.n_outliers;
  c.group = q.group;
  c.format = q.format;
  std::vector<std::int8_t> codes(static_cast<std::size_t>(a.m * q.k_normal));
  for (std::int64_t r = 0; r < a.m; ++r) {
    for (std::int64_t pos = 0; pos < q.k_normal; ++pos) {
      const std::int64_t j = split_layout_channel(pos, w.chunk);
      const std::uint8_t byte = a.codes[r * q.k_normal + pos];
      std::int32_t v = w.act_offset == 0 ? static_cast<std::int8_t>(byte) : byte - w.act_offset;
      if (q.format == NumberFormat::kFp4) {  // doubled value -> E2M1 nibble
        std::uint8_t code = 0;
        for (std::uint8_t cand = 0; cand < 16; ++cand) {
          if (cand != 8 && quant::fp4_decode_doubled(cand) == v) code = cand;
        }
        v = code;
      }
      codes[r * q.k_normal + j] = static_cast<std::int8_t>(v);
    }
  }
  c.packed = quant::format_is_packed(q.format) ? quant::pack_nibbles(codes)
                                               : std::vector<std::uint8_t>(codes.begin(), codes.end());
  c.scales.resize(a.scales.size());
  for (std::size_t i = 0; i < a.scales.size(); ++i) c.scales[i] = fp32_to_fp16(a.scales[i]);
  if (q.n_outliers > 0) {
    c.outliers.resize(static_cast<std::size_t>(a.m * q.n_outliers));
    for (std::int64_t r = 0; r < a.m; ++r) {
      std::memcpy(c.outliers.data() + r * q.n_outliers, a.outliers.data() + r * w.n_out_pad,
                  static_cast<std::size_t>(q.n_outliers));
    }
    c.outlier_scales.resize(a.outlier_scales.size());
    for (std::size_t i = 0; i < a.outlier_scales.size(); ++i)
      c.outlier_scales[i] = fp32_to_fp16(a.outlier_scales[i]);
  }
  return c;
}

}  // namespace atom::cpu
