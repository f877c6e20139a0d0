#include "backend/cpu/int8_linear.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_features.h"
#include "backend/cpu/parallel.h"
#include "common/error.h"

namespace atom::cpu {

namespace {

constexpr std::int64_t kBlock = 64;  // activation scale block, one zmm of codes; rows are zero padded to it
constexpr std::int64_t kOuts = 4;        // outputs per tile
constexpr std::int64_t kRowBlock = 64;   // activation rows kept hot while the weights stream past

std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

#define ATOM_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

struct TileArgs {
  const std::int8_t* x;           // [m, kp] signed codes
  const std::uint8_t* magnitude;  // [m, kp] |codes|
  const std::uint64_t* negative;  // [m, blocks] bit i: code i of the block < 0
  const float* x_scales;          // [m, blocks]
  const std::int8_t* w;           // tiled codes (Int8Linear::codes_)
  std::int64_t kp;
};

// The 64 codes at columns [k, k + 64) of row o of a tile (k a multiple of 64): tiles store their rows
// interleaved by 64 columns, so a tile reads its weights in one sequential sweep (rows read side by side at
// their own strides run at half the memory bandwidth).
template <typename Code>
inline Code* tile_codes(Code* tile, std::int64_t k, std::int64_t o) {
  return tile + (k / kBlock * kOuts + o) * kBlock;
}

// Each output accumulates 8 fp32 lanes: per block, lane l takes the exact int32 sum of the products at
// columns 4l..4l+3 and 32+4l..32+4l+3 of the block, converted and multiplied into the lane by the block's
// activation scale with one FMA. Both kernels form exactly these lane sums (so give the same bits).

// AVX2 has no signed x signed byte product: |x| (unsigned) times w carrying x's sign; pairs sum to at most
// 2 * 127^2 (no int16 saturation: codes never reach -128).
template <int MR>
inline void lanes_avx2(const TileArgs& a, const std::int64_t rows[MR], const std::int8_t* tile,
                       __m256 acc[MR][kOuts]) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (std::int64_t k = 0; k < a.kp; k += kBlock) {
    __m256i xs[MR][2], xa[MR][2];
    __m256 sx[MR];
    for (int r = 0; r < MR; ++r) {
      for (int h = 0; h < 2; ++h) {
        xs[r][h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.x + rows[r] * a.kp + k + 32 * h));
        xa[r][h] = _mm256_sign_epi8(xs[r][h], xs[r][h]);
      }
      sx[r] = _mm256_set1_ps(a.x_scales[rows[r] * (a.kp / kBlock) + k / kBlock]);
    }
    for (int o = 0; o < kOuts; ++o) {
      const std::int8_t* w = tile_codes(tile, k, o);
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32));
      for (int r = 0; r < MR; ++r) {
        const __m256i p0 =
            _mm256_madd_epi16(_mm256_maddubs_epi16(xa[r][0], _mm256_sign_epi8(w0, xs[r][0])), ones);
        const __m256i p1 =
            _mm256_madd_epi16(_mm256_maddubs_epi16(xa[r][1], _mm256_sign_epi8(w1, xs[r][1])), ones);
        acc[r][o] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(p0, p1)), sx[r], acc[r][o]);
      }
    }
  }
}

// Same with VPDPBUSD (unsigned x signed bytes into int32): |x| times w negated where x < 0; its 16 lanes
// folded to the 8 above (lanes l and l + 8).
template <int MR>
ATOM_VNNI_TARGET inline void lanes_vnni(const TileArgs& a, const std::int64_t rows[MR],
                                        const std::int8_t* tile, __m256 acc[MR][kOuts]) {
  const __m512i zero = _mm512_setzero_si512();
  for (std::int64_t k = 0; k < a.kp; k += kBlock) {
    __m512i xm[MR];
    __mmask64 neg[MR];
    __m256 sx[MR];
    for (int r = 0; r < MR; ++r) {
      xm[r] = _mm512_loadu_si512(a.magnitude + rows[r] * a.kp + k);
      neg[r] = a.negative[rows[r] * (a.kp / kBlock) + k / kBlock];
      sx[r] = _mm256_set1_ps(a.x_scales[rows[r] * (a.kp / kBlock) + k / kBlock]);
    }
    for (int o = 0; o < kOuts; ++o) {
      const __m512i wv = _mm512_loadu_si512(tile_codes(tile, k, o));
      for (int r = 0; r < MR; ++r) {
        const __m512i d = _mm512_dpbusd_epi32(zero, xm[r], _mm512_mask_sub_epi8(wv, neg[r], zero, wv));
        // Zero-masked extracts: GCC 12's cast intrinsics trip -Wuninitialized (an undefined operand inside).
        const __m256i lanes = _mm256_add_epi32(_mm512_maskz_extracti64x4_epi64(0xF, d, 0),
                                               _mm512_maskz_extracti64x4_epi64(0xF, d, 1));
        acc[r][o] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), sx[r], acc[r][o]);
      }
    }
  }
}

// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)): the order the tests' reference follows.
inline float hsum_lanes(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct Problem {
  TileArgs args;
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
  __m256 acc[MR][kOuts];
  for (auto& row : acc)
    for (auto& v : row) v = _mm256_setzero_ps();
  if constexpr (kVnni)
    lanes_vnni<MR>(p.args, rows, codes, acc);
  else
    lanes_avx2<MR>(p.args, rows, codes, acc);
  for (int r = 0; r < MR && r0 + r < r_end; ++r) {
    for (int o = 0; o < kOuts && n0 + o < p.n; ++o)
      p.y[(r0 + r) * p.n + n0 + o] = hsum_lanes(acc[r][o]) * p.w_scales[n0 + o];
  }
}

template <bool kVnni>
void run(const Problem& p) {
  // Up to 4 rows share each weight load (AVX2: 2, its 16 registers); one row streams the weights (GEMV).
  constexpr int kRows = kVnni ? 4 : 2;
  const std::int64_t tiles = (p.n + kOuts - 1) / kOuts;
  for (std::int64_t rb = 0; rb < p.m; rb += kRowBlock) {
    const std::int64_t rb_end = std::min(p.m, rb + kRowBlock);
    const double block_us = static_cast<double>((rb_end - rb) * p.n * p.args.kp) / kIntMacsPerUs;
    parallel_for(tiles, block_us, Schedule::kStatic, [&](std::int64_t t0, std::int64_t t1) {
     for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t n0 = t * kOuts;
      std::int64_t r0 = rb;
      for (; r0 + kRows <= rb_end; r0 += kRows) tile<kRows, kVnni>(p, r0, rb_end, n0);
      for (; r0 < rb_end; ++r0) tile<1, kVnni>(p, r0, r0 + 1, n0);
     }
    });
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
    : out_(out_features), in_(in_features), in_pad_(round_up(in_features, kBlock)) {
  ATOM_CHECK(out_ > 0 && in_ > 0);
  ATOM_CHECK(static_cast<std::int64_t>(weight.size()) == out_ * in_);
  const std::int64_t out_pad = round_up(out_, kOuts);
  codes_.assign(static_cast<std::size_t>(out_pad * in_pad_), 0);
  scales_.assign(static_cast<std::size_t>(out_pad), 0.0f);
#pragma omp parallel
  {
    std::vector<std::int8_t> row(static_cast<std::size_t>(in_pad_), 0);
#pragma omp for schedule(static)
    for (std::int64_t n = 0; n < out_; ++n) {
      scales_[n] = quantize_int8_symmetric(weight.data() + n * in_, in_, row.data());
      const std::int8_t* src = row.data();
      std::int8_t* tile = codes_.data() + n / kOuts * kOuts * in_pad_;
      for (std::int64_t k = 0; k < in_pad_; k += kBlock)
        std::copy(src + k, src + k + kBlock, tile_codes(tile, k, n % kOuts));
    }
  }
}

std::int8_t Int8Linear::code(std::int64_t n, std::int64_t k) const {
  ATOM_CHECK(n >= 0 && n < out_ && k >= 0 && k < in_pad_);
  return tile_codes(codes_.data() + n / kOuts * kOuts * in_pad_, k / kBlock * kBlock, n % kOuts)[k % kBlock];
}

void Int8Linear::forward(const float* x, std::int64_t m, float* y) const {
  forward(x, m, y, best_int8_kernel());
}

void Int8Linear::forward(const float* x, std::int64_t m, float* y, Int8Kernel kernel) const {
  if (!int8_kernel_supported(kernel))
    fail("Int8Linear: this CPU has no {} instructions", int8_kernel_name(kernel));
  if (m <= 0) return;
  Activations& a = scratch_;
  const std::int64_t blocks = in_pad_ / kBlock;
  const auto cells = static_cast<std::size_t>(m * in_pad_);
  a.codes.resize(cells);
  a.magnitude.resize(cells);
  a.negative.resize(static_cast<std::size_t>(m * blocks));
  a.scales.resize(static_cast<std::size_t>(m * blocks));
  parallel_for(m, static_cast<double>(m * in_) / kRowElementsPerUs, Schedule::kStatic, [&](std::int64_t r0,
                                                                                         std::int64_t r1) {
   for (std::int64_t r = r0; r < r1; ++r) {
    std::int8_t* codes = a.codes.data() + r * in_pad_;
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t k0 = b * kBlock, len = std::min(kBlock, in_ - k0);
      std::fill(codes + k0, codes + k0 + kBlock, std::int8_t{0});  // the last block's padding
      a.scales[r * blocks + b] = quantize_int8_symmetric(x + r * in_ + k0, len, codes + k0);
      std::uint64_t negative = 0;
      for (std::int64_t i = 0; i < kBlock; ++i) {
        const std::int8_t c = codes[k0 + i];
        a.magnitude[r * in_pad_ + k0 + i] = static_cast<std::uint8_t>(c < 0 ? -c : c);
        negative |= std::uint64_t{c < 0} << i;
      }
      a.negative[r * blocks + b] = negative;
    }
   }
  });
  const Problem p{
      {a.codes.data(), a.magnitude.data(), a.negative.data(), a.scales.data(), codes_.data(), in_pad_},
      scales_.data(),
      m,
      out_,
      y};
  if (kernel == Int8Kernel::kAvx512Vnni)
    run<true>(p);
  else
    run<false>(p);
}

std::string Int8Linear::describe() const {
  return fmt::format("int8 (weights per row, activations per 64 columns) [{} x {}] ({})", out_, in_,
                     int8_kernel_name(best_int8_kernel()));
}

}  // namespace atom::cpu
