#include "backend/cpu/kernels.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numbers>

#include "backend/cpu/linear.h"
#include "common/error.h"

namespace atom::cpu {

void rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps,
              std::span<const std::int32_t> perm, float* y) {
  ATOM_CHECK(perm.empty() || static_cast<std::int64_t>(perm.size()) == dim);
#pragma omp parallel for schedule(static) if (rows > 1)
  for (std::int64_t r = 0; r < rows; ++r) {
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
#pragma omp parallel for schedule(static) if (rows > 1)
  for (std::int64_t r = 0; r < rows; ++r) {
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
}

void silu_mul(const float* gate, const float* up, std::int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
#pragma omp parallel for schedule(static) if (n > 16384)
  for (std::int64_t i0 = 0; i0 < n; i0 += 1024) {
    const std::int64_t i1 = std::min(n, i0 + 1024);
    std::int64_t i = i0;
    for (; i + 8 <= i1; i += 8) {
      const __m256 g = _mm256_loadu_ps(gate + i);
      const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
      _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
    }
    for (; i < i1; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }
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

void causal_attention(std::span<const AttentionJob> jobs, const AttentionShape& shape) {
  ATOM_CHECK(shape.num_heads > 0 && shape.num_kv_heads > 0 && shape.num_heads % shape.num_kv_heads == 0);
  const int d = shape.head_dim;
  const std::int64_t q_stride = std::int64_t{shape.num_heads} * d;
  const std::int64_t kv_stride = std::int64_t{shape.num_kv_heads} * d;
  const int group = shape.num_heads / shape.num_kv_heads;
  use_single_threaded_blas();  // sgemm runs inside OpenMP threads

  // Work items: (job, head, query block).
  struct Item {
    std::int32_t job, head;
    std::int64_t row_begin, row_end;
  };
  // Kept between calls (a decode step allocates nothing here); `items`, a plain reference, is what the OpenMP
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
    for (int h = 0; h < shape.num_heads; ++h) {
      for (std::int64_t r = 0; r < job.n; r += block) {
        items.push_back({static_cast<std::int32_t>(j), h, r, std::min(job.n, r + block)});
      }
    }
  }
  const auto count = static_cast<std::int64_t>(items.size());
  // Query-key pairs of the whole call; a decode step over a short context (SmolLM2: 9 heads x ~200 keys)
  // finishes on one thread in about the time the others take to wake up.
  std::int64_t pairs = 0;
  for (const AttentionJob& job : jobs) pairs += job.n * (job.start + job.n) * shape.num_heads;
  constexpr std::int64_t kParallelMinPairs = 4096;
  auto first_key = [&](std::int64_t pos) {
    return shape.sliding_window > 0 ? std::max<std::int64_t>(0, pos - shape.sliding_window + 1) : std::int64_t{0};
  };
#pragma omp parallel if (count > 1 && pairs >= kParallelMinPairs)
  {
    thread_local std::vector<float> scores, inv_sums;  // per OpenMP thread, kept between calls
    inv_sums.resize(static_cast<std::size_t>(kGemmBlock));
#pragma omp for schedule(dynamic)
    for (std::int64_t it = 0; it < count; ++it) {
      const Item& item = items[static_cast<std::size_t>(it)];
      const AttentionJob& job = jobs[static_cast<std::size_t>(item.job)];
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
  }
}

}  // namespace atom::cpu
