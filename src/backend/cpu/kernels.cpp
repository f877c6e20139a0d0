#include "backend/cpu/kernels.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numbers>

#include "backend/cpu/linear.h"
#include "backend/cpu/parallel.h"
#include "common/error.h"

namespace atom::cpu {

void rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
              std::span<const std::int32_t> perm, float* y) {
  ATOM_CHECK(perm.empty() || static_cast<std::int64_t>(perm.size()) == dim);
  parallel_for(rows, static_cast<double>(rows * dim) / kRowElementsPerUs, Schedule::kStatic,
               [&](std::int64_t r0, std::int64_t r1) {
  for (std::int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    double sum_sq = 0.0;
    for (std::int64_t i = 0; i < dim; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    // HF: variance in fp32, then x * rsqrt(variance + eps), then weight * that.
    const float variance = static_cast<float>(sum_sq / static_cast<double>(dim));
    const float inv_rms = 1.0f / std::sqrt(variance + eps);
    if (perm.empty()) {
      for (std::int64_t i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * inv_rms);
    } else {
      for (std::int64_t j = 0; j < dim; ++j) {
        const std::int32_t i = perm[static_cast<std::size_t>(j)];
        yr[j] = weight[i] * (xr[i] * inv_rms);
      }
    }
  }
  });
}

std::vector<float> rope_inv_freq(const ModelConfig& config) {
  const int dim = config.head_dim;
  if (dim <= 0 || dim % 2 != 0) fail("RoPE needs an even head_dim, got {}", dim);
  const int half = dim / 2;
  std::vector<float> inv(static_cast<std::size_t>(half));
  // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all in fp32.
  for (int i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    const float power = static_cast<float>(std::pow(static_cast<double>(config.rope_theta), static_cast<double>(exponent)));
    inv[static_cast<std::size_t>(i)] = 1.0f / power;
  }
  const RopeScaling& rs = config.rope_scaling;
  if (rs.type.empty() || rs.type == "default") return inv;
  if (rs.type != "llama3") fail("rope_scaling type '{}' is not supported (only llama3)", rs.type);
  // transformers' _compute_llama3_parameters, operation by operation in fp32 (python scalars become fp32;
  // `scalar / tensor` is tensor.reciprocal() * scalar).
  const float factor = rs.factor;
  const auto old_context_len = static_cast<double>(rs.original_max_position_embeddings);
  const auto low_freq_wavelen = static_cast<float>(old_context_len / rs.low_freq_factor);
  const auto high_freq_wavelen = static_cast<float>(old_context_len / rs.high_freq_factor);
  const auto two_pi = static_cast<float>(2.0 * std::numbers::pi);
  const auto smooth_denominator = static_cast<float>(static_cast<double>(rs.high_freq_factor) - rs.low_freq_factor);
  for (float& f : inv) {
    const float wavelen = (1.0f / f) * two_pi;
    float scaled = wavelen > low_freq_wavelen ? f / factor : f;
    const float smooth = ((1.0f / wavelen) * static_cast<float>(old_context_len) - rs.low_freq_factor) / smooth_denominator;
    const float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    f = medium ? smoothed : scaled;
  }
  return inv;
}

void rope_cos_sin(std::span<const float> inv_freq, const std::int64_t* positions, std::int64_t n, float* cos,
                  float* sin) {
  const auto half = static_cast<std::int64_t>(inv_freq.size());
  for (std::int64_t r = 0; r < n; ++r) {
    const auto pos = static_cast<float>(positions[r]);
    for (std::int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[static_cast<std::size_t>(i)];  // fp32 product, as HF
      cos[r * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin[r * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
}

void apply_rope(float* x, std::int64_t rows, std::int64_t stride, int heads, int head_dim, const float* cos,
                const float* sin) {
  const int half = head_dim / 2;
  parallel_for(rows, static_cast<double>(rows * heads * head_dim) / kRowElementsPerUs, Schedule::kStatic,
               [&](std::int64_t r0, std::int64_t r1) {
  for (std::int64_t r = r0; r < r1; ++r) {
    const float* c = cos + r * half;
    const float* s = sin + r * half;
    for (int h = 0; h < heads; ++h) {
      float* x1 = x + r * stride + static_cast<std::int64_t>(h) * head_dim;
      float* x2 = x1 + half;
      for (int i = 0; i < half; ++i) {
        const float a = x1[i], b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
      }
    }
  }
  });
}

void silu_mul(const float* gate, const float* up, std::int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  parallel_for((n + 1023) / 1024, static_cast<double>(n) / kRowElementsPerUs, Schedule::kStatic,
               [&](std::int64_t b0, std::int64_t b1) {
  for (std::int64_t i0 = b0 * 1024; i0 < std::min(n, b1 * 1024); i0 += 1024) {
    const std::int64_t i1 = std::min(n, i0 + 1024);
    std::int64_t i = i0;
    for (; i + 8 <= i1; i += 8) {
      const __m256 g = _mm256_loadu_ps(gate + i);
      const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
      _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
    }
    for (; i < i1; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }
  });
}

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lane i of the result = horizontal sum of a[i].
inline __m256 hsum8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]);
  const __m256 t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]);
  const __m256 t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1);
  const __m256 u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

}  // namespace

__m256 exp256(__m256 x) {
  // Cephes-style expf: x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-6 polynomial, times 2^n.
  const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.3762626647949f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n for n in [-126, 127].
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 result = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(underflow, result);
}

namespace {

inline float dot(const float* a, const float* b, int d) {
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

// scores[j] = q . k[j * stride] for j in [0, count).
void dot_rows(const float* q, const float* k, std::int64_t stride, std::int64_t count, int d, float* scores) {
  const int dv = d / 8 * 8;
  std::int64_t j = 0;
  for (; j + 8 <= count; j += 8) {
    __m256 acc[8];
    for (int t = 0; t < 8; ++t) acc[t] = _mm256_setzero_ps();
    const float* kj = k + j * stride;
    for (int i = 0; i < dv; i += 8) {
      const __m256 qi = _mm256_loadu_ps(q + i);
      for (int t = 0; t < 8; ++t) acc[t] = _mm256_fmadd_ps(qi, _mm256_loadu_ps(kj + t * stride + i), acc[t]);
    }
    __m256 total = hsum8(acc);
    if (dv < d) {
      alignas(32) float tail[8];
      for (int t = 0; t < 8; ++t) {
        float s = 0.0f;
        for (int i = dv; i < d; ++i) s += q[i] * kj[t * stride + i];
        tail[t] = s;
      }
      total = _mm256_add_ps(total, _mm256_load_ps(tail));
    }
    _mm256_storeu_ps(scores + j, total);
  }
  for (; j < count; ++j) scores[j] = dot(q, k + j * stride, d);
}

// out[0, d) = sum_j p[j] * v[j * stride].
void weighted_rows(const float* p, const float* v, std::int64_t stride, std::int64_t count, int d, float* out) {
  int c = 0;
  for (; c + 64 <= d; c += 64) {  // 8 accumulators: one pass over the rows per 64 columns
    __m256 acc[8];
    for (int t = 0; t < 8; ++t) acc[t] = _mm256_setzero_ps();
    for (std::int64_t j = 0; j < count; ++j) {
      const __m256 pj = _mm256_set1_ps(p[j]);
      const float* vj = v + j * stride + c;
      for (int t = 0; t < 8; ++t) acc[t] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * t), acc[t]);
    }
    for (int t = 0; t < 8; ++t) _mm256_storeu_ps(out + c + 8 * t, acc[t]);
  }
  for (; c + 8 <= d; c += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (std::int64_t j = 0; j < count; ++j) {
      acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(v + j * stride + c), acc);
    }
    _mm256_storeu_ps(out + c, acc);
  }
  for (; c < d; ++c) {
    float s = 0.0f;
    for (std::int64_t j = 0; j < count; ++j) s += p[j] * v[j * stride + c];
    out[c] = s;
  }
}

// s[j] = exp(scale * s[j] - max_j(scale * s[j])); returns the sum of the new s[j].
float scaled_softmax_numerators(float* s, std::int64_t n, float scale) {
  const __m256 vscale = _mm256_set1_ps(scale);
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(s + j), vscale);
    _mm256_storeu_ps(s + j, x);
    vmax = _mm256_max_ps(vmax, x);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float max = *std::max_element(lanes, lanes + 8);
  for (; j < n; ++j) {
    s[j] *= scale;
    max = std::max(max, s[j]);
  }
  const __m256 vm = _mm256_set1_ps(max);
  __m256 vsum = _mm256_setzero_ps();
  j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
    _mm256_storeu_ps(s + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = hsum(vsum);
  for (; j < n; ++j) sum += (s[j] = std::exp(s[j] - max));
  return sum;
}

// ---- attention on quantized KV rows, read in place

// One KV head's rows [first, first + count) as gathered from the store's runs: code pointers (already at the
// head) and fp32 scales and minimums (`groups` per row: [row][group]), so that the kernels below index keys
// directly.
struct HeadRows {
  std::vector<const std::uint8_t*> codes;
  std::vector<float> scales, mins;
  int groups = 1;
};

// Keys [offset, offset + count) of gathered HeadRows, as the kernels index them (from 0).
struct HeadRowsView {
  const std::uint8_t* const* codes;
  const float* scales;  // key j's group k at j * groups + k
  const float* mins;
  int groups;
};

HeadRowsView view_from(const HeadRows& rows, std::int64_t offset) {
  const auto o = static_cast<std::size_t>(offset);
  const auto p = o * static_cast<std::size_t>(rows.groups);
  return {rows.codes.data() + o, rows.scales.data() + p, rows.mins.data() + p, rows.groups};
}

inline float load_fp16(const std::uint8_t* p) {
  std::uint16_t bits;
  std::memcpy(&bits, p, sizeof bits);
  return _cvtsh_ss(bits);
}

// Groups of a head the in-place kernels handle (head_dim 1024 at groups of 16).
constexpr int kMaxKvGroups = 64;

void gather_head_rows(const QuantKvRows& view, int kv_head, int head_dim, std::int64_t first, std::int64_t count,
                      HeadRows& out) {
  ATOM_CHECK(first + count <= view.rows && view.run_rows > 0);
  const std::int64_t group_size = view.group_size == 0 ? head_dim : view.group_size;
  if (head_dim % group_size != 0 || head_dim / group_size > kMaxKvGroups) {
    fail("attention: KV group size {} does not divide head_dim {} into at most {} groups", view.group_size, head_dim,
         kMaxKvGroups);
  }
  const int groups = static_cast<int>(head_dim / group_size);
  out.groups = groups;
  out.codes.resize(static_cast<std::size_t>(count));
  out.scales.resize(static_cast<std::size_t>(count * groups));
  out.mins.resize(static_cast<std::size_t>(count * groups));
  const std::int64_t code_offset = std::int64_t{kv_head} * head_dim * view.bits / 8;
  const std::int64_t param_offset = std::int64_t{kv_head} * groups * 2;
  std::int64_t j = 0;
  while (j < count) {  // a run at a time
    const std::int64_t row = first + j;
    const QuantKvRows::Run& run = view.runs[static_cast<std::size_t>(row / view.run_rows)];
    const std::int64_t slot = row % view.run_rows;
    const std::int64_t n = std::min(count - j, view.run_rows - slot);
    for (std::int64_t i = 0; i < n; ++i) {
      const auto k = static_cast<std::size_t>(j + i);
      out.codes[k] = run.codes + (slot + i) * view.code_stride + code_offset;
      const std::uint8_t* scales = run.scales + (slot + i) * view.param_stride + param_offset;
      const std::uint8_t* mins = run.mins + (slot + i) * view.param_stride + param_offset;
      for (int g = 0; g < groups; ++g) {
        out.scales[k * groups + g] = load_fp16(scales + 2 * g);
        out.mins[k * groups + g] = load_fp16(mins + 2 * g);
      }
    }
    j += n;
  }
}

// Codes [i, i + 16) of one head as two vectors of fp32 (UINT4 low nibble first, or UINT8).
template <int Bits>
inline void unpack16(const std::uint8_t* codes, int i, __m256& c0, __m256& c1) {
  __m128i b;
  if constexpr (Bits == 4) {
    const __m128i packed = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i / 2));
    const __m128i mask = _mm_set1_epi8(0x0F);
    b = _mm_unpacklo_epi8(_mm_and_si128(packed, mask), _mm_and_si128(_mm_srli_epi16(packed, 4), mask));
  } else {
    b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i));
  }
  c0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
  c1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)));
}

inline float code_at(const std::uint8_t* codes, int bits, int i) {
  return static_cast<float>(bits == 4 ? (codes[i / 2] >> (4 * (i & 1))) & 0x0F : codes[i]);
}

// Up to 4 query heads that share one KV head.
constexpr int kMaxHeadGroup = 4;

// scores[g][j] = q_g . k_j = scale_j * (q_g . codes_j) + min_j * sum(q_g), for keys j in [0, count);
// head_dim a multiple of 16. Eight keys' sums are reduced together (hsum8); the tail one by one.
template <int G, int Bits>
void quant_scores(const float* const* q, const float* q_sums, const HeadRowsView& rows, std::int64_t count, int d,
                  float* const* scores) {
  __m256 partial[G][8];
  __m256 q_sum[G];
  for (int g = 0; g < G; ++g) q_sum[g] = _mm256_set1_ps(q_sums[g]);
  std::int64_t j = 0;
  for (; j < count; ++j) {
    __m256 acc[G];
    for (int g = 0; g < G; ++g) acc[g] = _mm256_setzero_ps();
    const std::uint8_t* codes = rows.codes[static_cast<std::size_t>(j)];
    for (int i = 0; i < d; i += 16) {
      __m256 c0, c1;
      unpack16<Bits>(codes, i, c0, c1);
      for (int g = 0; g < G; ++g) {
        acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q[g] + i), c0, acc[g]);
        acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q[g] + i + 8), c1, acc[g]);
      }
    }
    const int slot = static_cast<int>(j & 7);
    for (int g = 0; g < G; ++g) partial[g][slot] = acc[g];
    if (slot == 7) {
      const __m256 scale = _mm256_loadu_ps(rows.scales + j - 7);
      const __m256 lo = _mm256_loadu_ps(rows.mins + j - 7);
      for (int g = 0; g < G; ++g) {
        _mm256_storeu_ps(scores[g] + j - 7, _mm256_fmadd_ps(scale, hsum8(partial[g]), _mm256_mul_ps(lo, q_sum[g])));
      }
    }
  }
  for (std::int64_t t = count & ~std::int64_t{7}; t < count; ++t) {
    const auto k = static_cast<std::size_t>(t);
    for (int g = 0; g < G; ++g) {
      scores[g][t] = std::fma(rows.scales[k], hsum(partial[g][t & 7]), rows.mins[k] * q_sums[g]);
    }
  }
}

// out[g][i] = sum_j w[g][j] * codes_j[i] + offset[g] for columns i in [begin, end) (multiples of 16), 16 at a
// time: 2 G accumulators, one pass over the keys each.
template <int G, int Bits>
void weighted_code_columns(const float* const* w, const float* offset, const HeadRowsView& rows, std::int64_t count,
                           int begin, int end, float* const* out) {
  for (int i = begin; i < end; i += 16) {
    __m256 acc[G][2];
    for (int g = 0; g < G; ++g) acc[g][0] = acc[g][1] = _mm256_setzero_ps();
    for (std::int64_t j = 0; j < count; ++j) {
      __m256 c0, c1;
      unpack16<Bits>(rows.codes[static_cast<std::size_t>(j)], i, c0, c1);
      for (int g = 0; g < G; ++g) {
        const __m256 wj = _mm256_set1_ps(w[g][j]);
        acc[g][0] = _mm256_fmadd_ps(wj, c0, acc[g][0]);
        acc[g][1] = _mm256_fmadd_ps(wj, c1, acc[g][1]);
      }
    }
    for (int g = 0; g < G; ++g) {
      const __m256 o = _mm256_set1_ps(offset[g]);
      _mm256_storeu_ps(out[g] + i, _mm256_add_ps(acc[g][0], o));
      _mm256_storeu_ps(out[g] + i + 8, _mm256_add_ps(acc[g][1], o));
    }
  }
}

// out[g][0, d) = sum_j p[g][j] * (scale_j * codes_j + min_j), with p[g] overwritten by p[g][j] * scale_j;
// head_dim a multiple of 16. 16 columns at a time: 2 G accumulators, one pass over the keys each.
template <int G, int Bits>
void quant_weighted(float* const* p, const HeadRowsView& rows, std::int64_t count, int d, float* const* out) {
  float offset[G];  // sum_j p[g][j] * min_j, added to every column
  for (int g = 0; g < G; ++g) {
    __m256 acc = _mm256_setzero_ps();
    std::int64_t j = 0;
    for (; j + 8 <= count; j += 8) {
      const __m256 pj = _mm256_loadu_ps(p[g] + j);
      acc = _mm256_fmadd_ps(pj, _mm256_loadu_ps(rows.mins + j), acc);
      _mm256_storeu_ps(p[g] + j, _mm256_mul_ps(pj, _mm256_loadu_ps(rows.scales + j)));
    }
    float sum = hsum(acc);
    for (; j < count; ++j) {
      sum += p[g][j] * rows.mins[static_cast<std::size_t>(j)];
      p[g][j] *= rows.scales[static_cast<std::size_t>(j)];
    }
    offset[g] = sum;
  }
  weighted_code_columns<G, Bits>(p, offset, rows, count, 0, d, out);
}

// Any head_dim, any group size: the same sums one value at a time.
void quant_scores_scalar(int heads, int bits, const float* const* q, const float* q_sums, const HeadRowsView& rows,
                         std::int64_t count, int d, float* const* scores) {
  for (std::int64_t j = 0; j < count; ++j) {
    const auto k = static_cast<std::size_t>(j);
    for (int g = 0; g < heads; ++g) {
      float dot = 0.0f;
      for (int i = 0; i < d; ++i) dot = std::fma(q[g][i], code_at(rows.codes[k], bits, i), dot);
      scores[g][j] = std::fma(rows.scales[k], dot, rows.mins[k] * q_sums[g]);
    }
  }
}

void quant_weighted_scalar(int heads, int bits, float* const* p, const HeadRowsView& rows, std::int64_t count, int d,
                           float* const* out) {
  for (int g = 0; g < heads; ++g) {
    float offset = 0.0f;
    for (std::int64_t j = 0; j < count; ++j) {
      offset = std::fma(p[g][j], rows.mins[static_cast<std::size_t>(j)], offset);
      p[g][j] *= rows.scales[static_cast<std::size_t>(j)];
    }
    for (int i = 0; i < d; ++i) {
      float acc = 0.0f;
      for (std::int64_t j = 0; j < count; ++j) acc = std::fma(p[g][j], code_at(rows.codes[static_cast<std::size_t>(j)], bits, i), acc);
      out[g][i] = acc + offset;
    }
  }
}

// Several (scale, minimum) groups per head (groups of gs channels, gs a multiple of 16):
// scores[g][j] = sum_k scale_jk * (q_gk . codes_jk) + sum_k min_jk * sum(q_gk), the first sum as one vector
// (scale_jk times group k's lane sums, accumulated in k order) reduced with the other keys' (hsum8), the second
// in fp32 in k order. q_sums[g * groups + k] = sum(q_gk).
template <int G, int Bits>
void quant_scores_grouped(const float* const* q, const float* q_sums, const HeadRowsView& rows, std::int64_t count,
                          int d, float* const* scores) {
  const int groups = rows.groups, gs = d / groups;
  __m256 partial[G][8];
  float offsets[G][8];
  std::int64_t j = 0;
  for (; j < count; ++j) {
    const auto key = static_cast<std::size_t>(j);
    const std::uint8_t* codes = rows.codes[key];
    const float* scale = rows.scales + key * groups;
    const float* lo = rows.mins + key * groups;
    __m256 total[G];
    float offset[G];
    for (int g = 0; g < G; ++g) total[g] = _mm256_setzero_ps(), offset[g] = 0.0f;
    for (int k = 0; k < groups; ++k) {
      __m256 acc[G];
      for (int g = 0; g < G; ++g) acc[g] = _mm256_setzero_ps();
      for (int i = k * gs; i < (k + 1) * gs; i += 16) {
        __m256 c0, c1;
        unpack16<Bits>(codes, i, c0, c1);
        for (int g = 0; g < G; ++g) {
          acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q[g] + i), c0, acc[g]);
          acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q[g] + i + 8), c1, acc[g]);
        }
      }
      const __m256 scale_k = _mm256_set1_ps(scale[k]);
      for (int g = 0; g < G; ++g) {
        total[g] = _mm256_fmadd_ps(scale_k, acc[g], total[g]);
        offset[g] = std::fma(lo[k], q_sums[g * groups + k], offset[g]);
      }
    }
    const int slot = static_cast<int>(j & 7);
    for (int g = 0; g < G; ++g) partial[g][slot] = total[g], offsets[g][slot] = offset[g];
    if (slot == 7) {
      for (int g = 0; g < G; ++g) {
        _mm256_storeu_ps(scores[g] + j - 7, _mm256_add_ps(hsum8(partial[g]), _mm256_loadu_ps(offsets[g])));
      }
    }
  }
  for (std::int64_t t = count & ~std::int64_t{7}; t < count; ++t) {
    for (int g = 0; g < G; ++g) scores[g][t] = hsum(partial[g][t & 7]) + offsets[g][t & 7];
  }
}

// out[g][0, d) = sum_j p[g][j] * (scale_jk * codes_j + min_jk) (k the column's group); p is left as it is. Per
// group: the weights p * scale_jk and the offset sum_j p * min_jk, then that group's columns 16 at a time.
template <int G, int Bits>
void quant_weighted_grouped(float* const* p, const HeadRowsView& rows, std::int64_t count, int d, float* const* out) {
  const int groups = rows.groups, gs = d / groups;
  thread_local std::vector<float> weights;  // [G][count] for one group
  weights.resize(static_cast<std::size_t>(G * count));
  for (int k = 0; k < groups; ++k) {
    float offset[G];
    for (int g = 0; g < G; ++g) {
      float* w = weights.data() + g * count;
      float sum = 0.0f;
      for (std::int64_t j = 0; j < count; ++j) {
        const auto at = static_cast<std::size_t>(j) * groups + k;
        sum = std::fma(p[g][j], rows.mins[at], sum);
        w[j] = p[g][j] * rows.scales[at];
      }
      offset[g] = sum;
    }
    const float* w[G];
    for (int g = 0; g < G; ++g) w[g] = weights.data() + g * count;
    weighted_code_columns<G, Bits>(w, offset, rows, count, k * gs, (k + 1) * gs, out);
  }
}

// Several groups, any sizes: the same sums one value at a time.
void quant_scores_grouped_scalar(int heads, int bits, const float* const* q, const float* q_sums,
                                 const HeadRowsView& rows, std::int64_t count, int d, float* const* scores) {
  const int groups = rows.groups, gs = d / groups;
  for (std::int64_t j = 0; j < count; ++j) {
    const auto key = static_cast<std::size_t>(j);
    for (int g = 0; g < heads; ++g) {
      float score = 0.0f, offset = 0.0f;
      for (int k = 0; k < groups; ++k) {
        float dot = 0.0f;
        for (int i = k * gs; i < (k + 1) * gs; ++i) dot = std::fma(q[g][i], code_at(rows.codes[key], bits, i), dot);
        score = std::fma(rows.scales[key * groups + k], dot, score);
        offset = std::fma(rows.mins[key * groups + k], q_sums[g * groups + k], offset);
      }
      scores[g][j] = score + offset;
    }
  }
}

void quant_weighted_grouped_scalar(int heads, int bits, float* const* p, const HeadRowsView& rows,
                                   std::int64_t count, int d, float* const* out) {
  const int groups = rows.groups, gs = d / groups;
  for (int g = 0; g < heads; ++g) {
    for (int i = 0; i < d; ++i) {
      const int k = i / gs;
      float acc = 0.0f, offset = 0.0f;
      for (std::int64_t j = 0; j < count; ++j) {
        const auto key = static_cast<std::size_t>(j);
        offset = std::fma(p[g][j], rows.mins[key * groups + k], offset);
        acc = std::fma(p[g][j] * rows.scales[key * groups + k], code_at(rows.codes[key], bits, i), acc);
      }
      out[g][i] = acc + offset;
    }
  }
}

template <int G>
void quant_scores_group(int bits, const float* const* q, const float* q_sums, const HeadRowsView& rows,
                        std::int64_t count, int d, float* const* scores) {
  if (rows.groups > 1) {
    if (bits == 4) quant_scores_grouped<G, 4>(q, q_sums, rows, count, d, scores);
    else quant_scores_grouped<G, 8>(q, q_sums, rows, count, d, scores);
  } else if (bits == 4) {
    quant_scores<G, 4>(q, q_sums, rows, count, d, scores);
  } else {
    quant_scores<G, 8>(q, q_sums, rows, count, d, scores);
  }
}

template <int G>
void quant_weighted_group(int bits, float* const* p, const HeadRowsView& rows, std::int64_t count, int d,
                          float* const* out) {
  if (rows.groups > 1) {
    if (bits == 4) quant_weighted_grouped<G, 4>(p, rows, count, d, out);
    else quant_weighted_grouped<G, 8>(p, rows, count, d, out);
  } else if (bits == 4) {
    quant_weighted<G, 4>(p, rows, count, d, out);
  } else {
    quant_weighted<G, 8>(p, rows, count, d, out);
  }
}

// Per thread: the gathered rows of one KV head and the scores of its query heads.
struct QuantAttentionScratch {
  HeadRows keys, values;
  std::vector<float> scores;
};

// Query row r of `job` for the query heads [head_begin, head_begin + heads) (heads <= kMaxHeadGroup) of one
// KV head, over its `keys` rows that start at `offset` in scratch.keys / scratch.values.
void quant_attention_row(const AttentionJob& job, const AttentionShape& shape, std::int64_t r, int head_begin,
                         int heads, std::int64_t offset, std::int64_t keys, QuantAttentionScratch& scratch) {
  const int d = shape.head_dim;
  const std::int64_t q_stride = std::int64_t{shape.num_heads} * d;
  const int bits = job.quant_k->bits;
  const float* q[kMaxHeadGroup];
  float* out[kMaxHeadGroup];
  float* scores[kMaxHeadGroup];
  // Per query head, the sum of q over each key group (one group: over the head, as before groups existed).
  const int key_groups = scratch.keys.groups;
  float q_sums[kMaxHeadGroup * kMaxKvGroups];
  scratch.scores.resize(static_cast<std::size_t>(kMaxHeadGroup * keys));
  for (int g = 0; g < heads; ++g) {
    q[g] = job.q + r * q_stride + std::int64_t{head_begin + g} * d;
    out[g] = job.out + r * q_stride + std::int64_t{head_begin + g} * d;
    scores[g] = scratch.scores.data() + g * keys;
    const int gs = d / key_groups;
    for (int k = 0; k < key_groups; ++k) {
      float sum = 0.0f;
      for (int i = k * gs; i < (k + 1) * gs; ++i) sum += q[g][i];
      q_sums[g * key_groups + k] = sum;
    }
  }
  const HeadRowsView key_rows = view_from(scratch.keys, offset), value_rows = view_from(scratch.values, offset);
  // The vector kernels take 16 channels at a time, inside one group.
  const bool vector = d % 16 == 0 && (d / key_groups) % 16 == 0 && (d / value_rows.groups) % 16 == 0;
  if (!vector && key_groups > 1) quant_scores_grouped_scalar(heads, bits, q, q_sums, key_rows, keys, d, scores);
  else if (!vector) quant_scores_scalar(heads, bits, q, q_sums, key_rows, keys, d, scores);
  else if (heads == 1) quant_scores_group<1>(bits, q, q_sums, key_rows, keys, d, scores);
  else if (heads == 2) quant_scores_group<2>(bits, q, q_sums, key_rows, keys, d, scores);
  else if (heads == 3) quant_scores_group<3>(bits, q, q_sums, key_rows, keys, d, scores);
  else quant_scores_group<4>(bits, q, q_sums, key_rows, keys, d, scores);
  float inv_sums[kMaxHeadGroup];
  for (int g = 0; g < heads; ++g) inv_sums[g] = 1.0f / scaled_softmax_numerators(scores[g], keys, shape.scale);
  if (!vector && value_rows.groups > 1) quant_weighted_grouped_scalar(heads, bits, scores, value_rows, keys, d, out);
  else if (!vector) quant_weighted_scalar(heads, bits, scores, value_rows, keys, d, out);
  else if (heads == 1) quant_weighted_group<1>(bits, scores, value_rows, keys, d, out);
  else if (heads == 2) quant_weighted_group<2>(bits, scores, value_rows, keys, d, out);
  else if (heads == 3) quant_weighted_group<3>(bits, scores, value_rows, keys, d, out);
  else quant_weighted_group<4>(bits, scores, value_rows, keys, d, out);
  for (int g = 0; g < heads; ++g) {
    for (int i = 0; i < d; ++i) out[g][i] *= inv_sums[g];
  }
}

// Query rows per work item. Blocks of a long prompt run as two sgemm calls (Q K^T, then P V) over the keys
// the block needs; short ones (decode) row by row with the AVX2 dot/axpy kernels.
constexpr std::int64_t kRowBlock = 16;
constexpr std::int64_t kGemmBlock = 64;
constexpr std::int64_t kGemmMinRows = 16;

}  // namespace

namespace {
std::atomic<bool> g_batch_invariant{false};
}  // namespace

void set_batch_invariant(bool on) { g_batch_invariant = on; }
bool batch_invariant() { return g_batch_invariant; }

bool attention_reads_codes(std::int64_t n) { return n < 2 * kGemmMinRows || batch_invariant(); }

void causal_attention(std::span<const AttentionJob> jobs, const AttentionShape& shape) {
  ATOM_CHECK(shape.num_heads > 0 && shape.num_kv_heads > 0 && shape.num_heads % shape.num_kv_heads == 0);
  const int d = shape.head_dim;
  const std::int64_t q_stride = std::int64_t{shape.num_heads} * d;
  const std::int64_t kv_stride = std::int64_t{shape.num_kv_heads} * d;
  const int group = shape.num_heads / shape.num_kv_heads;
  use_single_threaded_blas();  // sgemm runs inside OpenMP threads

  // Query-key pairs of the whole call, the work estimate that decides whether to split it (parallel.h).
  std::int64_t pairs = 0;
  for (const AttentionJob& job : jobs) pairs += job.n * (job.start + job.n) * shape.num_heads;
  // Quantized rows: an item takes all query heads of one KV head, whose codes it then reads once. Even for
  // one decode step on 2 threads (SmolLM2: 3 KV heads, one thread gets two) this beats one query head per
  // item, which reads and converts each KV head's codes 3 times (decode_profile at depth 512: the rest 1.5
  // against 1.8-2.1 ms per token; docs/RESULTS.md).
  const int heads_per_quant_item = group;

  // Work items: (job, query heads [head, head + heads), query block).
  struct Item {
    std::int32_t job, head, heads;
    std::int64_t row_begin, row_end;
  };
  // Kept between calls (a decode step allocates nothing here); `items`, a plain reference, is what the
  // threads below share (naming the thread_local there would give each thread its own, empty one).
  thread_local std::vector<Item> kept_items;
  std::vector<Item>& items = kept_items;
  items.clear();
  std::int64_t max_keys = 0;
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const AttentionJob& job = jobs[j];
    max_keys = std::max(max_keys, job.start + job.n);
    // Batch-invariant: row blocks only (each query row on its own, in one fixed order), never sgemm blocks,
    // whose use depends on how many of the sequence's rows this step carries.
    const std::int64_t block = job.n >= 2 * kGemmMinRows && !batch_invariant() ? kGemmBlock : kRowBlock;
    if (job.k == nullptr) {
      if (job.quant_k == nullptr || job.quant_v == nullptr || job.quant_k->bits != job.quant_v->bits ||
          !attention_reads_codes(job.n)) {
        fail("attention: job {} has neither fp32 rows nor quantized rows it may read in place", j);
      }
      for (int h = 0; h < shape.num_heads; h += heads_per_quant_item) {
        for (std::int64_t r = 0; r < job.n; r += kRowBlock) {
          items.push_back({static_cast<std::int32_t>(j), h, heads_per_quant_item, r, std::min(job.n, r + kRowBlock)});
        }
      }
      continue;
    }
    for (int h = 0; h < shape.num_heads; ++h) {
      for (std::int64_t r = 0; r < job.n; r += block) {
        items.push_back({static_cast<std::int32_t>(j), h, 1, r, std::min(job.n, r + block)});
      }
    }
  }
  const auto count = static_cast<std::int64_t>(items.size());
  auto first_key = [&](std::int64_t pos) {
    return shape.sliding_window > 0 ? std::max<std::int64_t>(0, pos - shape.sliding_window + 1) : std::int64_t{0};
  };
  parallel_for(count, static_cast<double>(pairs) / kAttentionPairsPerUs, Schedule::kDynamic,
               [&](std::int64_t it_begin, std::int64_t it_end) {
    thread_local std::vector<float> scores, inv_sums;  // per thread, kept between calls
    thread_local QuantAttentionScratch quant_scratch;
    inv_sums.resize(static_cast<std::size_t>(kGemmBlock));
    for (std::int64_t it = it_begin; it < it_end; ++it) {
      const Item& item = items[static_cast<std::size_t>(it)];
      const AttentionJob& job = jobs[static_cast<std::size_t>(item.job)];
      if (job.k == nullptr) {  // query heads of one KV head
        const int kv_head = item.head / group, head_end = item.head + item.heads;
        // The keys of all the item's rows, gathered once: row r's are a sub-range of them.
        const std::int64_t item_first = first_key(job.start + item.row_begin);
        const std::int64_t item_keys = job.start + item.row_end - item_first;
        gather_head_rows(*job.quant_k, kv_head, d, item_first, item_keys, quant_scratch.keys);
        gather_head_rows(*job.quant_v, kv_head, d, item_first, item_keys, quant_scratch.values);
        for (std::int64_t r = item.row_begin; r < item.row_end; ++r) {
          const std::int64_t pos = job.start + r;
          const std::int64_t first = first_key(pos);
          const std::int64_t keys = pos + 1 - first;
          for (int h = item.head; h < head_end; h += kMaxHeadGroup) {
            quant_attention_row(job, shape, r, h, std::min(kMaxHeadGroup, head_end - h), first - item_first, keys,
                                quant_scratch);
          }
        }
        continue;
      }
      const std::int64_t kv_offset = std::int64_t{item.head / group} * d;
      const std::int64_t head_offset = std::int64_t{item.head} * d;
      const float* k = job.k + kv_offset;
      const float* v = job.v + kv_offset;
      const std::int64_t rows = item.row_end - item.row_begin;
      if (rows < kGemmMinRows || batch_invariant()) {
        scores.resize(static_cast<std::size_t>(max_keys));
        for (std::int64_t r = item.row_begin; r < item.row_end; ++r) {
          const std::int64_t pos = job.start + r;
          const std::int64_t first = first_key(pos);
          const std::int64_t keys = pos + 1 - first;
          float* s = scores.data();
          dot_rows(job.q + r * q_stride + head_offset, k + first * kv_stride, kv_stride, keys, d, s);
          const float inv_sum = 1.0f / scaled_softmax_numerators(s, keys, shape.scale);
          float* out = job.out + r * q_stride + head_offset;
          weighted_rows(s, v + first * kv_stride, kv_stride, keys, d, out);
          for (int i = 0; i < d; ++i) out[i] *= inv_sum;
        }
        continue;
      }
      // Keys [lo, hi) cover every row of the block; each row then masks its own range.
      const std::int64_t lo = first_key(job.start + item.row_begin), hi = job.start + item.row_end;
      const std::int64_t nk = hi - lo;
      scores.resize(static_cast<std::size_t>(rows * nk));
      float* s = scores.data();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(rows), static_cast<blasint>(nk), d,
                  1.0f, job.q + item.row_begin * q_stride + head_offset, static_cast<blasint>(q_stride),
                  k + lo * kv_stride, static_cast<blasint>(kv_stride), 0.0f, s, static_cast<blasint>(nk));
      for (std::int64_t i = 0; i < rows; ++i) {
        const std::int64_t pos = job.start + item.row_begin + i;
        const std::int64_t first = first_key(pos) - lo, last = pos - lo;  // row i sees keys [first, last]
        float* si = s + i * nk;
        std::fill(si, si + first, 0.0f);
        std::fill(si + last + 1, si + nk, 0.0f);
        inv_sums[static_cast<std::size_t>(i)] = 1.0f / scaled_softmax_numerators(si + first, last + 1 - first, shape.scale);
      }
      float* out = job.out + item.row_begin * q_stride + head_offset;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(rows), d, static_cast<blasint>(nk),
                  1.0f, s, static_cast<blasint>(nk), v + lo * kv_stride, static_cast<blasint>(kv_stride), 0.0f, out,
                  static_cast<blasint>(q_stride));
      for (std::int64_t i = 0; i < rows; ++i) {
        for (int c = 0; c < d; ++c) out[i * q_stride + c] *= inv_sums[static_cast<std::size_t>(i)];
      }
    }
  });
}

}  // namespace atom::cpu
