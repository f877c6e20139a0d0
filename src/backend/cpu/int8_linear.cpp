#include "backend/cpu/int8_linear.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_features.h"
#include "common/error.h"

namespace atom::cpu {

namespace {

constexpr std::int64_t kCodeAlign = 64;  // one zmm of codes; rows are zero padded to it
constexpr std::int64_t kOuts = 4;        // outputs per tile
constexpr std::int64_t kRowBlock = 64;   // activation rows kept hot while the weights stream past

std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

#define ATOM_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

inline std::int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

struct TileArgs {
  const std::int8_t* x;      // [m, kp] signed codes
  const std::uint8_t* xu;    // [m, kp] codes + 128
  const std::int8_t* w;      // tiled codes (Int8Linear::codes_)
  const std::int32_t* wsum;  // [n_pad]
  std::int64_t kp;
};

// The 64 codes at columns [k, k + 64) of row o of a tile (k a multiple of 64): tiles store their rows
// interleaved by 64 columns, so a tile reads its weights in one sequential sweep (rows read side by side at
// their own strides run at half the memory bandwidth).
template <typename Code>
inline Code* tile_codes(Code* tile, std::int64_t k, std::int64_t o) {
  return tile + (k / kCodeAlign * kOuts + o) * kCodeAlign;
}

// Integer dot products of rows x[rows[0..MR)] with the kOuts weight rows of `tile`: AVX2 has no signed x
// signed byte product, so |x| (unsigned) times w carrying x's sign; pairs sum to at most 2 * 127^2 (no int16
// saturation: codes never reach -128).
template <int MR>
inline void dots_avx2(const TileArgs& a, const std::int64_t rows[MR], const std::int8_t* tile,
                      std::int32_t out[MR][kOuts]) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MR][kOuts];
  for (auto& row : acc)
    for (auto& v : row) v = _mm256_setzero_si256();
  for (std::int64_t k = 0; k < a.kp; k += kCodeAlign) {
    for (std::int64_t half = 0; half < kCodeAlign; half += 32) {
      __m256i xs[MR], xa[MR];
      for (int r = 0; r < MR; ++r) {
        xs[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.x + rows[r] * a.kp + k + half));
        xa[r] = _mm256_sign_epi8(xs[r], xs[r]);
      }
      for (int o = 0; o < kOuts; ++o) {
        const __m256i wv =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile_codes(tile, k, o) + half));
        for (int r = 0; r < MR; ++r) {
          const __m256i p = _mm256_maddubs_epi16(xa[r], _mm256_sign_epi8(wv, xs[r]));
          acc[r][o] = _mm256_add_epi32(acc[r][o], _mm256_madd_epi16(p, ones));
        }
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int o = 0; o < kOuts; ++o) out[r][o] = hsum_epi32(acc[r][o]);
}

// Same with VPDPBUSD (unsigned x signed bytes into int32): (x + 128) . w - 128 * sum(w) = x . w.
template <int MR>
ATOM_VNNI_TARGET inline void dots_vnni(const TileArgs& a, const std::int64_t rows[MR],
                                       const std::int8_t* tile, const std::int32_t* wsum,
                                       std::int32_t out[MR][kOuts]) {
  __m512i acc[MR][kOuts];
  for (auto& row : acc)
    for (auto& v : row) v = _mm512_setzero_si512();
  for (std::int64_t k = 0; k < a.kp; k += kCodeAlign) {
    __m512i xu[MR];
    for (int r = 0; r < MR; ++r) xu[r] = _mm512_loadu_si512(a.xu + rows[r] * a.kp + k);
    for (int o = 0; o < kOuts; ++o) {
      const __m512i wv = _mm512_loadu_si512(tile_codes(tile, k, o));
      for (int r = 0; r < MR; ++r) acc[r][o] = _mm512_dpbusd_epi32(acc[r][o], xu[r], wv);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int o = 0; o < kOuts; ++o) {
      // Halves by zero-masked extracts: GCC 12's reduce / cast intrinsics trip -Wuninitialized (an undefined
      // operand inside them).
      const __m512i v = acc[r][o];
      const __m256i half = _mm256_add_epi32(_mm512_maskz_extracti64x4_epi64(0xF, v, 0),
                                            _mm512_maskz_extracti64x4_epi64(0xF, v, 1));
      out[r][o] = hsum_epi32(half) - 128 * wsum[o];
    }
}

struct Problem {
  TileArgs args;
  const float* x_scales;
  const float* w_scales;
  std::int64_t m, n;
  float* y;
};

// One tile: rows [r0, r0 + MR) (indices past r_end clamped: computed, not stored) x the kOuts outputs from
// n0.
template <int MR, bool kVnni>
inline void tile(const Problem& p, std::int64_t r0, std::int64_t r_end, std::int64_t n0) {
  std::int64_t rows[MR];
  for (int r = 0; r < MR; ++r) rows[r] = std::min(r0 + r, r_end - 1);
  const std::int8_t* codes = p.args.w + n0 * p.args.kp;  // tiles of kOuts rows are contiguous
  std::int32_t dots[MR][kOuts];
  if constexpr (kVnni)
    dots_vnni<MR>(p.args, rows, codes, p.args.wsum + n0, dots);
  else
    dots_avx2<MR>(p.args, rows, codes, dots);
  for (int r = 0; r < MR && r0 + r < r_end; ++r) {
    for (int o = 0; o < kOuts && n0 + o < p.n; ++o) {
      // The documented order: (dot * x_scale) * w_scale.
      const float scaled = static_cast<float>(dots[r][o]) * p.x_scales[r0 + r];
      p.y[(r0 + r) * p.n + n0 + o] = scaled * p.w_scales[n0 + o];
    }
  }
}

template <bool kVnni>
void run(const Problem& p) {
  // Up to 4 rows share each weight load (AVX2: 2, its 16 registers); one row streams the weights (GEMV).
  constexpr int kRows = kVnni ? 4 : 2;
  const std::int64_t tiles = (p.n + kOuts - 1) / kOuts;
  const bool parallel = p.m * p.n * p.args.kp >= (std::int64_t{1} << 16);
  for (std::int64_t rb = 0; rb < p.m; rb += kRowBlock) {
    const std::int64_t rb_end = std::min(p.m, rb + kRowBlock);
#pragma omp parallel for schedule(static) if (parallel)
    for (std::int64_t t = 0; t < tiles; ++t) {
      const std::int64_t n0 = t * kOuts;
      std::int64_t r0 = rb;
      for (; r0 + kRows <= rb_end; r0 += kRows) tile<kRows, kVnni>(p, r0, rb_end, n0);
      for (; r0 < rb_end; ++r0) tile<1, kVnni>(p, r0, r0 + 1, n0);
    }
  }
}

}  // namespace

bool int8_kernel_supported(Int8Kernel kernel) {
  switch (kernel) {
    case Int8Kernel::kAvx2:
      return true;
    case Int8Kernel::kAvx512Vnni:
      return cpu_has_avx512_vnni();
  }
  return false;
}

Int8Kernel best_int8_kernel() { return avx512_vnni_enabled() ? Int8Kernel::kAvx512Vnni : Int8Kernel::kAvx2; }

const char* int8_kernel_name(Int8Kernel kernel) {
  return kernel == Int8Kernel::kAvx512Vnni ? "avx512-vnni" : "avx2";
}

float quantize_int8_symmetric(const float* v, std::int64_t len, std::int8_t* codes) {
  float max_abs = 0.0f;
  for (std::int64_t i = 0; i < len; ++i) max_abs = std::max(max_abs, std::fabs(v[i]));  // NaN: skipped
  const float scale = max_abs / 127.0f;
  for (std::int64_t i = 0; i < len; ++i) {
    float q = scale == 0.0f ? 0.0f : std::nearbyint(v[i] / scale);
    if (!(q == q)) q = 0.0f;
    codes[i] = static_cast<std::int8_t>(std::clamp(q, -127.0f, 127.0f));
  }
  return scale;
}

Int8Linear::Int8Linear(const std::vector<float>& weight, std::int64_t out_features, std::int64_t in_features)
    : out_(out_features), in_(in_features), in_pad_(round_up(in_features, kCodeAlign)) {
  ATOM_CHECK(out_ > 0 && in_ > 0);
  ATOM_CHECK(static_cast<std::int64_t>(weight.size()) == out_ * in_);
  const std::int64_t out_pad = round_up(out_, kOuts);
  codes_.assign(static_cast<std::size_t>(out_pad * in_pad_), 0);
  scales_.assign(static_cast<std::size_t>(out_pad), 0.0f);
  code_sums_.assign(static_cast<std::size_t>(out_pad), 0);
#pragma omp parallel
  {
    std::vector<std::int8_t> row(static_cast<std::size_t>(in_pad_), 0);
#pragma omp for schedule(static)
    for (std::int64_t n = 0; n < out_; ++n) {
      scales_[n] = quantize_int8_symmetric(weight.data() + n * in_, in_, row.data());
      std::int32_t sum = 0;
      for (std::int64_t k = 0; k < in_; ++k) sum += row[k];
      code_sums_[n] = sum;
      const std::int8_t* src = row.data();
      std::int8_t* tile = codes_.data() + n / kOuts * kOuts * in_pad_;
      for (std::int64_t k = 0; k < in_pad_; k += kCodeAlign)
        std::copy(src + k, src + k + kCodeAlign, tile_codes(tile, k, n % kOuts));
    }
  }
}

std::int8_t Int8Linear::code(std::int64_t n, std::int64_t k) const {
  ATOM_CHECK(n >= 0 && n < out_ && k >= 0 && k < in_pad_);
  return tile_codes(codes_.data() + n / kOuts * kOuts * in_pad_, k / kCodeAlign * kCodeAlign,
                    n % kOuts)[k % kCodeAlign];
}

void Int8Linear::forward(const float* x, std::int64_t m, float* y) const {
  forward(x, m, y, best_int8_kernel());
}

void Int8Linear::forward(const float* x, std::int64_t m, float* y, Int8Kernel kernel) const {
  if (!int8_kernel_supported(kernel))
    fail("Int8Linear: this CPU has no {} instructions", int8_kernel_name(kernel));
  if (m <= 0) return;
  Activations& a = scratch_;
  const auto cells = static_cast<std::size_t>(m * in_pad_);
  a.codes.assign(cells, 0);
  a.biased.resize(cells);
  a.scales.resize(static_cast<std::size_t>(m));
#pragma omp parallel for schedule(static) if (m > 1)
  for (std::int64_t r = 0; r < m; ++r) {
    std::int8_t* codes = a.codes.data() + r * in_pad_;
    a.scales[r] = quantize_int8_symmetric(x + r * in_, in_, codes);
    std::uint8_t* biased = a.biased.data() + r * in_pad_;
    for (std::int64_t k = 0; k < in_pad_; ++k) biased[k] = static_cast<std::uint8_t>(codes[k] + 128);
  }
  const Problem p{{a.codes.data(), a.biased.data(), codes_.data(), code_sums_.data(), in_pad_},
                  a.scales.data(),
                  scales_.data(),
                  m,
                  out_,
                  y};
  if (kernel == Int8Kernel::kAvx512Vnni)
    run<true>(p);  // the VNNI dot products are called, not inlined (other target)
  else
    run<false>(p);
}

std::string Int8Linear::describe() const {
  return fmt::format("int8 x int8 per-row [{} x {}] ({})", out_, in_, int8_kernel_name(best_int8_kernel()));
}

}  // namespace atom::cpu
