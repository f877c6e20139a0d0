// W4A4 (+INT8 outlier) GEMM kernels against the scalar reference of the format
// (atom::quant::atom_linear_reference), on fresh random inputs with poisoned outputs. The in-order wgmma
// kernel must match the reference bit for bit; the split-K kernels may differ by fp32 reassociation only.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <stdexcept>
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "backend/cuda/gemm/gemm_w4a4_layout.h"
#include "common/half.h"
#include "format/format.h"

namespace atom::cuda {
namespace {

bool have_gpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}
int device_sm() {
  int dev = 0, major = 0, minor = 0;
  ATOM_CUDA_CHECK(cudaGetDevice(&dev));
  ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  return major * 10 + minor;
}
#define ATOM_REQUIRE_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device"

template <class T>
class GemmDeviceBuffer {
 public:
  explicit GemmDeviceBuffer(std::size_t count) : count_(count) {
    if (count_) ATOM_CUDA_CHECK(cudaMalloc(&ptr_, count_ * sizeof(T)));
  }
  explicit GemmDeviceBuffer(const std::vector<T>& host) : GemmDeviceBuffer(host.size()) {
    if (count_) ATOM_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), count_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~GemmDeviceBuffer() { cudaFree(ptr_); }
  GemmDeviceBuffer(const GemmDeviceBuffer&) = delete;
  GemmDeviceBuffer& operator=(const GemmDeviceBuffer&) = delete;
  T* get() const { return ptr_; }
  std::vector<T> download() const {
    std::vector<T> h(count_);
    if (count_) ATOM_CUDA_CHECK(cudaMemcpy(h.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  void fill_bytes(int value) {
    if (count_) ATOM_CUDA_CHECK(cudaMemset(ptr_, value, count_ * sizeof(T)));
  }

 private:
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

enum class Codes { kRandom, kMostNegative };

// Fresh random codes (every byte is a valid pair of INT4 codes) and fp16 scales.
struct GemmProblem {
  quant::QuantizedActivations a;
  quant::QuantizedLinearWeights w;
};

std::uint16_t random_scale(std::mt19937& rng) {
  std::uniform_real_distribution<float> log2s(-9.0f, -4.0f);
  return fp32_to_fp16(std::exp2(log2s(rng)));
}

GemmProblem make_problem(int m, int n, int k_normal, int n_out, std::mt19937& rng,
                         Codes codes = Codes::kRandom) {
  GemmProblem p;
  auto fill = [&](auto& q, int rows) {
    q.k_normal = k_normal;
    q.n_outliers = n_out;
    q.group = kW4A4Group;
    q.format = quant::NumberFormat::kInt4;
    q.packed.resize((std::size_t)rows * k_normal / 2);
    q.scales.resize((std::size_t)rows * (k_normal / kW4A4Group));
    q.outliers.resize((std::size_t)rows * n_out);
    q.outlier_scales.resize(n_out > 0 ? rows : 0);
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& b : q.packed) b = codes == Codes::kRandom ? static_cast<std::uint8_t>(byte(rng)) : 0x88;
    for (auto& o : q.outliers) o = codes == Codes::kRandom ? static_cast<std::int8_t>(byte(rng) - 128) : -128;
    for (auto& s : q.scales) s = random_scale(rng);
    for (auto& s : q.outlier_scales) s = random_scale(rng);
  };
  p.a.m = m;
  fill(p.a, m);
  p.w.n = n;
  fill(p.w, n);
  p.w.perm.resize(k_normal + n_out);
  for (int i = 0; i < k_normal + n_out; ++i) p.w.perm[i] = i;
  return p;
}

// Canonical weights and activations on the device, weights prepacked on the device.
struct DeviceProblem {
  GemmDeviceBuffer<std::uint8_t> a_packed, w_packed_canonical;
  GemmDeviceBuffer<std::uint16_t> a_scales, a_outlier_scales, w_scales_canonical, w_outlier_scales_canonical;
  GemmDeviceBuffer<std::int8_t> a_outliers, w_outliers_canonical;
  GemmDeviceBuffer<std::uint8_t> w_packed;
  GemmDeviceBuffer<std::int8_t> w_outliers;
  GemmDeviceBuffer<float> w_scales;
  int m, n, k_normal, n_out;

  explicit DeviceProblem(const GemmProblem& p)
      : a_packed(p.a.packed),
        w_packed_canonical(p.w.packed),
        a_scales(p.a.scales),
        a_outlier_scales(p.a.outlier_scales),
        w_scales_canonical(p.w.scales),
        w_outlier_scales_canonical(p.w.outlier_scales),
        a_outliers(p.a.outliers),
        w_outliers_canonical(p.w.outliers),
        w_packed(w4a4_packed_sizes(p.w.n, p.w.k_normal, p.w.n_outliers).packed_bytes),
        w_outliers(w4a4_packed_sizes(p.w.n, p.w.k_normal, p.w.n_outliers).outlier_bytes),
        w_scales(w4a4_packed_sizes(p.w.n, p.w.k_normal, p.w.n_outliers).scale_bytes / sizeof(float)),
        m(p.a.m),
        n(p.w.n),
        k_normal(p.w.k_normal),
        n_out(p.w.n_outliers) {
    w_packed.fill_bytes(0x5A);  // poison: prepack must write every byte
    w_outliers.fill_bytes(0x5A);
    w_scales.fill_bytes(0xFF);
    prepack_w4a4_weights_device(canonical(), packed(), nullptr);
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  }
  W4A4CanonicalWeights canonical() const {
    W4A4CanonicalWeights c;
    c.packed = w_packed_canonical.get();
    c.scales = w_scales_canonical.get();
    c.outliers = w_outliers_canonical.get();
    c.outlier_scales = w_outlier_scales_canonical.get();
    c.n = n;
    c.k_normal = k_normal;
    c.n_outliers = n_out;
    return c;
  }
  W4A4PackedWeights packed() const {
    W4A4PackedWeights w;
    w.packed = w_packed.get();
    w.outliers = w_outliers.get();
    w.scales = w_scales.get();
    w.n = n;
    w.k_normal = k_normal;
    w.n_outliers = n_out;
    return w;
  }
  W4A4Activations activations() const {
    W4A4Activations a;
    a.packed = a_packed.get();
    a.scales = a_scales.get();
    a.outliers = a_outliers.get();
    a.outlier_scales = a_outlier_scales.get();
    a.m = m;
    return a;
  }
};

// Sum over groups (and outliers) of |t * sw|: bounds the fp32 reassociation error of split-K kernels.
std::vector<double> reference_abs_terms(const GemmProblem& p) {
  const auto& a = p.a;
  const auto& w = p.w;
  const int groups = a.k_normal / kW4A4Group;
  std::vector<double> out((std::size_t)a.m * w.n, 0.0);
  std::vector<std::int8_t> wi((std::size_t)w.n * a.k_normal);
  for (int n = 0; n < w.n; ++n) {
    const auto row = quant::unpack_int4(
        {w.packed.data() + (std::size_t)n * a.k_normal / 2, (std::size_t)a.k_normal / 2}, a.k_normal);
    std::copy(row.begin(), row.end(), wi.begin() + (std::size_t)n * a.k_normal);
  }
  for (int m = 0; m < a.m; ++m) {
    const auto ai = quant::unpack_int4(
        {a.packed.data() + (std::size_t)m * a.k_normal / 2, (std::size_t)a.k_normal / 2}, a.k_normal);
    for (int n = 0; n < w.n; ++n) {
      double s = 0.0;
      for (int g = 0; g < groups; ++g) {
        long d = 0;
        for (int k = g * kW4A4Group; k < (g + 1) * kW4A4Group; ++k)
          d += ai[k] * wi[(std::size_t)n * a.k_normal + k];
        s += std::fabs((double)d * fp16_to_fp32(a.scales[(std::size_t)m * groups + g]) *
                       fp16_to_fp32(w.scales[(std::size_t)n * groups + g]));
      }
      if (a.n_outliers > 0) {
        long d = 0;
        for (int o = 0; o < a.n_outliers; ++o)
          d += a.outliers[(std::size_t)m * a.n_outliers + o] * w.outliers[(std::size_t)n * a.n_outliers + o];
        s += std::fabs((double)d * fp16_to_fp32(a.outlier_scales[m]) * fp16_to_fp32(w.outlier_scales[n]));
      }
      out[(std::size_t)m * w.n + n] = s;
    }
  }
  return out;
}

float out_to_float(std::uint16_t v, GemmOutType t) {
  return t == GemmOutType::kF16 ? fp16_to_fp32(v) : bf16_to_fp32(v);
}
std::uint16_t float_to_out(float v, GemmOutType t) {
  return t == GemmOutType::kF16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
}
// One unit in the last place of the output type at magnitude |v|.
double out_ulp(double v, GemmOutType t) {
  const int mant = t == GemmOutType::kF16 ? 10 : 7;
  const double a = std::max(std::fabs(v), t == GemmOutType::kF16 ? 6.103515625e-05 : 1.1754943508222875e-38);
  return std::exp2(std::floor(std::log2(a)) - mant);
}

struct RunOptions {
  GemmOutType out_type = GemmOutType::kF16;
  bool residual = false;
};

// Runs `kernel` (or `stream_config`'s variant of the stream kernel) and compares with the reference.
// exact: bitwise equal to round(ref [+ residual]).
void check_kernel(const GemmProblem& p, const DeviceProblem& d, W4A4Kernel kernel, bool exact,
                  const RunOptions& o, std::mt19937& rng, const std::vector<float>& ref,
                  const std::vector<double>& abs_terms,
                  const detail::W4A4StreamConfig* stream_config = nullptr) {
  const std::string variant = stream_config ? " stages=" + std::to_string(stream_config->stages) +
                                                  " max_ctas=" + std::to_string(stream_config->max_ctas) +
                                                  (stream_config->native_s4 ? " s4" : "")
                                            : "";
  SCOPED_TRACE(std::string(w4a4_kernel_name(kernel)) + variant + " m=" + std::to_string(d.m) +
               " n=" + std::to_string(d.n) + " k_normal=" + std::to_string(d.k_normal) +
               " n_out=" + std::to_string(d.n_out) + (o.out_type == GemmOutType::kBF16 ? " bf16" : " f16") +
               (o.residual ? " +residual" : ""));
  const std::size_t count = (std::size_t)d.m * d.n;
  std::vector<std::uint16_t> residual(o.residual ? count : 0);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (auto& r : residual) r = float_to_out(normal(rng), o.out_type);
  GemmDeviceBuffer<std::uint16_t> out(count);
  GemmDeviceBuffer<std::uint16_t> res(residual);
  out.fill_bytes(0xFF);  // NaN in both fp16 and bf16
  GemmW4A4Args args;
  args.a = d.activations();
  args.w = d.packed();
  args.out = out.get();
  args.out_type = o.out_type;
  args.residual = o.residual ? res.get() : nullptr;
  if (stream_config)
    detail::launch_w4a4_stream(args, *stream_config, nullptr);
  else
    gemm_w4a4_o8(args, nullptr, kernel);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = out.download();
  int bad = 0;
  for (std::size_t i = 0; i < count && bad < 8; ++i) {
    const float r_add = o.residual ? out_to_float(residual[i], o.out_type) : 0.0f;
    const float want_f = o.residual ? ref[i] + r_add : ref[i];
    const std::uint16_t want = float_to_out(want_f, o.out_type);
    const float g = out_to_float(got[i], o.out_type);
    bool ok;
    if (exact) {
      ok = got[i] == want;
    } else {
      // fp32 reassociation (<= 16 additions of rounded terms) plus one rounding to the output type.
      const double slack = 32.0 * std::ldexp(abs_terms[i] + std::fabs(r_add), -24);
      ok = std::isfinite(g) && std::fabs((double)g - (double)want_f) <= out_ulp(want_f, o.out_type) + slack;
    }
    if (!ok) {
      ++bad;
      ADD_FAILURE() << "row " << i / d.n << " col " << i % d.n << ": got " << g << " (0x" << std::hex
                    << got[i] << std::dec << "), reference " << want_f << " (0x" << std::hex << want
                    << std::dec << ")";
    }
  }
}

struct Shape {
  int m, n, k_normal, n_out;
};

void run_all_kernels(const Shape& s, std::uint32_t seed, Codes codes = Codes::kRandom) {
  std::mt19937 rng(seed);
  const GemmProblem p = make_problem(s.m, s.n, s.k_normal, s.n_out, rng, codes);
  const DeviceProblem d(p);
  const std::vector<float> ref = quant::atom_linear_reference(p.a, p.w);
  const std::vector<double> abs_terms = reference_abs_terms(p);
  const bool sm90 = device_sm() >= 90 && device_sm() < 100 && detail::wgmma_sm90_compiled();
  for (const RunOptions o : {RunOptions{GemmOutType::kF16, false}, RunOptions{GemmOutType::kBF16, true}}) {
    if (sm90) {
      check_kernel(p, d, W4A4Kernel::kWgmmaBn128, true, o, rng, ref, abs_terms);
      check_kernel(p, d, W4A4Kernel::kWgmmaBn64, true, o, rng, ref, abs_terms);
    }
    check_kernel(p, d, W4A4Kernel::kMmaS8, false, o, rng, ref, abs_terms);
    check_kernel(p, d, W4A4Kernel::kMmaS4, false, o, rng, ref, abs_terms);  // emulated INT4 MMA on sm_90
    check_kernel(p, d, W4A4Kernel::kStreamS8, false, o, rng, ref, abs_terms);
    check_kernel(p, d, W4A4Kernel::kStreamS4, false, o, rng, ref, abs_terms);
    check_kernel(p, d, W4A4Kernel::kAuto, false, o, rng, ref, abs_terms);
  }
}

// ---- Serving-size kernel (int8 activations, swapped operands).

// The device conversion into the int8 layout, checked byte for byte against the host conversion.
struct DeviceActivationsS8 {
  GemmDeviceBuffer<std::int8_t> codes;
  GemmDeviceBuffer<std::uint16_t> scales, outlier_scales;
  int m;
  DeviceActivationsS8(const GemmProblem& p, const DeviceProblem& d)
      : codes((std::size_t)d.m * w4a4_s8_row_bytes(d.k_normal, d.n_out)),
        scales((std::size_t)d.m * (d.k_normal / kW4A4Group)),
        outlier_scales(d.n_out > 0 ? d.m : 0),
        m(d.m) {
    codes.fill_bytes(0x5A);  // poison: the conversion must write every byte, padding included
    scales.fill_bytes(0xFF);
    convert_w4a4_activations_s8(d.activations(), d.k_normal, d.n_out, get(), nullptr);
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<std::int8_t> h_codes((std::size_t)d.m * w4a4_s8_row_bytes(d.k_normal, d.n_out), 0x11);
    std::vector<std::uint16_t> h_scales(p.a.scales.size()), h_oscales(p.a.outlier_scales.size());
    W4A4Activations src;
    src.packed = p.a.packed.data();
    src.scales = p.a.scales.data();
    src.outliers = p.a.outliers.data();
    src.outlier_scales = p.a.outlier_scales.data();
    src.m = d.m;
    W4A4ActivationsS8 dst{h_codes.data(), h_scales.data(), h_oscales.data(), d.m};
    convert_w4a4_activations_s8_host(src, d.k_normal, d.n_out, dst);
    EXPECT_EQ(h_codes, codes.download());
    EXPECT_EQ(h_scales, scales.download());
    EXPECT_EQ(h_oscales, outlier_scales.download());
  }
  W4A4ActivationsS8 get() const { return {codes.get(), scales.get(), outlier_scales.get(), m}; }
};

// k_splits = 1: bitwise equal to round(ref [+ residual]); otherwise (split-K) within fp32 reassociation.
std::vector<std::uint16_t> check_swapab(const GemmProblem& p, const DeviceProblem& d,
                                        const DeviceActivationsS8& a, W4A4SwapAbTile tile, int k_splits,
                                        const RunOptions& o, std::mt19937& rng, const std::vector<float>& ref,
                                        const std::vector<double>& abs_terms) {
  SCOPED_TRACE(std::string(w4a4_swapab_tile_name(tile)) + " k_splits=" + std::to_string(k_splits) + " m=" +
               std::to_string(d.m) + " n=" + std::to_string(d.n) + " k_normal=" + std::to_string(d.k_normal) +
               " n_out=" + std::to_string(d.n_out) + (o.out_type == GemmOutType::kBF16 ? " bf16" : " f16") +
               (o.residual ? " +residual in place" : ""));
  const std::size_t count = (std::size_t)d.m * d.n;
  std::vector<std::uint16_t> residual(o.residual ? count : 0);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (auto& r : residual) r = float_to_out(normal(rng), o.out_type);
  GemmDeviceBuffer<std::uint16_t> out(count);
  if (o.residual)
    ATOM_CUDA_CHECK(
        cudaMemcpy(out.get(), residual.data(), count * 2, cudaMemcpyHostToDevice));  // out == residual
  else
    out.fill_bytes(0xFF);  // NaN in both fp16 and bf16
  GemmW4A4S8Args args;
  args.a = a.get();
  args.w = d.packed();
  args.out = out.get();
  args.out_type = o.out_type;
  args.residual = o.residual ? out.get() : nullptr;
  gemm_w4a4_o8_s8(args, nullptr, tile, k_splits);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = out.download();
  int bad = 0;
  for (std::size_t i = 0; i < count && bad < 8; ++i) {
    const float r_add = o.residual ? out_to_float(residual[i], o.out_type) : 0.0f;
    const float want_f = o.residual ? ref[i] + r_add : ref[i];
    const std::uint16_t want = float_to_out(want_f, o.out_type);
    bool ok = got[i] == want;
    if (!ok && k_splits != 1) {
      // At most kW4A4MaxSplits - 1 extra fp32 additions of partial sums, then one rounding to the output
      // type.
      const float g = out_to_float(got[i], o.out_type);
      const double slack = 32.0 * std::ldexp(abs_terms[i] + std::fabs(r_add), -24);
      ok = std::isfinite(g) && std::fabs((double)g - (double)want_f) <= out_ulp(want_f, o.out_type) + slack;
    }
    if (!ok) {
      ++bad;
      ADD_FAILURE() << "row " << i / d.n << " col " << i % d.n << ": got " << out_to_float(got[i], o.out_type)
                    << " (0x" << std::hex << got[i] << std::dec << "), reference " << want_f << " (0x"
                    << std::hex << want << std::dec << ")";
    }
  }
  return got;
}

// Every tile bit-exact without split-K; split-K (2, 3 and 8 CTAs per cluster, and kAuto's choice) within
// fp32 reassociation, and the same output twice (the cluster reduction runs in a fixed order).
void run_swapab_tiles(const Shape& s, std::uint32_t seed, Codes codes = Codes::kRandom) {
  std::mt19937 rng(seed);
  const GemmProblem p = make_problem(s.m, s.n, s.k_normal, s.n_out, rng, codes);
  const DeviceProblem d(p);
  const DeviceActivationsS8 a(p, d);
  if (!w4a4_swapab_available()) GTEST_SKIP() << "needs sm_90 and sm_90a code";
  const std::vector<float> ref = quant::atom_linear_reference(p.a, p.w);
  const std::vector<double> abs_terms = reference_abs_terms(p);
  for (const RunOptions o : {RunOptions{GemmOutType::kF16, false}, RunOptions{GemmOutType::kBF16, true}}) {
    for (const W4A4SwapAbTile tile : kW4A4SwapAbTiles) {
      check_swapab(p, d, a, tile, 1, o, rng, ref, abs_terms);
      for (const int splits : {2, 3, kW4A4MaxSplits}) {
        if (o.residual) {
          check_swapab(p, d, a, tile, splits, o, rng, ref, abs_terms);
          continue;
        }
        const auto first = check_swapab(p, d, a, tile, splits, o, rng, ref, abs_terms);
        EXPECT_EQ(first, check_swapab(p, d, a, tile, splits, o, rng, ref, abs_terms))
            << w4a4_swapab_tile_name(tile) << " k_splits=" << splits << ": not deterministic";
      }
    }
    check_swapab(p, d, a, W4A4SwapAbTile::kAuto, 0, o, rng, ref, abs_terms);
  }
}

// The rows of a product do not depend on how many other rows it has (same tile and split count), so a
// sequence's output does not change with the batch it is served in.
TEST(GemmW4A4SwapAb, SplitKRowsDoNotDependOnM) {
  ATOM_REQUIRE_GPU();
  if (!w4a4_swapab_available()) GTEST_SKIP() << "needs sm_90 and sm_90a code";
  std::mt19937 rng(1401);
  const int m = 70, m_small = 5, n = 256, k_normal = 1536, n_out = 128;
  const GemmProblem big = make_problem(m, n, k_normal, n_out, rng);
  GemmProblem small = big;
  const int groups = k_normal / kW4A4Group;
  small.a.m = m_small;
  small.a.packed.resize((std::size_t)m_small * k_normal / 2);
  small.a.scales.resize((std::size_t)m_small * groups);
  small.a.outliers.resize((std::size_t)m_small * n_out);
  small.a.outlier_scales.resize(m_small);
  const DeviceProblem d_big(big), d_small(small);
  const DeviceActivationsS8 a_big(big, d_big), a_small(small, d_small);
  const std::vector<float> ref_big = quant::atom_linear_reference(big.a, big.w);
  const std::vector<float> ref_small = quant::atom_linear_reference(small.a, small.w);
  const std::vector<double> abs_big = reference_abs_terms(big), abs_small = reference_abs_terms(small);
  for (const W4A4SwapAbTile tile : {W4A4SwapAbTile::kT32C128, W4A4SwapAbTile::kT64C64}) {
    for (const int splits : {1, 4}) {
      const RunOptions o{GemmOutType::kF16, false};
      const auto rows_big = check_swapab(big, d_big, a_big, tile, splits, o, rng, ref_big, abs_big);
      const auto rows_small =
          check_swapab(small, d_small, a_small, tile, splits, o, rng, ref_small, abs_small);
      EXPECT_TRUE(std::equal(rows_small.begin(), rows_small.end(), rows_big.begin()))
          << w4a4_swapab_tile_name(tile) << " k_splits=" << splits;
    }
  }
}

TEST(GemmW4A4SwapAb, LayoutPositionsAreBijections) {
  std::vector<int> seen_g(128, 0), seen_o(128, 0);
  for (int e = 0; e < 128; ++e) {
    ++seen_g[layout::s8_group_position(e)];
    ++seen_o[layout::s8_outlier_position(e)];
  }
  for (int pos = 0; pos < 128; ++pos) {
    EXPECT_EQ(seen_g[pos], 1) << pos;
    EXPECT_EQ(seen_o[pos], 1) << pos;
  }
  // The outlier order is the prepacked weights' (unswizzled, row 0): both sides pair the same channel.
  for (int e = 0; e < 128; ++e)
    EXPECT_EQ(layout::outlier_channel_of_byte(0, layout::s8_outlier_position(e)), e);
}

TEST(GemmW4A4SwapAb, BitExactAcrossTilesAndShapes) {
  ATOM_REQUIRE_GPU();
  run_swapab_tiles({1, 128, 128, 0}, 1101);      // one group, one token
  run_swapab_tiles({17, 192, 256, 32}, 1102);    // partial channel tile, one partial outlier chunk
  run_swapab_tiles({33, 576, 512, 64}, 1103);    // SmolLM2's hidden size
  run_swapab_tiles({64, 256, 1280, 144}, 1104);  // two outlier chunks
  run_swapab_tiles({100, 136, 1024, 256}, 1105);
  run_swapab_tiles({129, 384, 384, 16}, 1106);
  run_swapab_tiles({300, 512, 1920, 128}, 1107);
}

TEST(GemmW4A4SwapAb, W8A8AndMostNegativeCodes) {
  ATOM_REQUIRE_GPU();
  run_swapab_tiles({5, 256, 0, 512}, 1201);
  run_swapab_tiles({131, 256, 0, 384}, 1202);
  run_swapab_tiles({70, 128, 1024, 128}, 1203, Codes::kMostNegative);
}

// W8A8 on the same kernel from the plain layouts (cuBLASLt's): the all-outlier case of the reference.
TEST(GemmW4A4SwapAb, W8A8FromPlainLayouts) {
  ATOM_REQUIRE_GPU();
  if (!w4a4_swapab_available()) GTEST_SKIP() << "needs sm_90 and sm_90a code";
  for (const Shape s :
       {Shape{5, 256, 0, 512}, Shape{131, 256, 0, 384}, Shape{40, 576, 0, 576}, Shape{300, 136, 0, 1024}}) {
    std::mt19937 rng(1300 + s.m);
    const GemmProblem p = make_problem(s.m, s.n, 0, s.n_out, rng);
    const std::vector<float> ref = quant::atom_linear_reference(p.a, p.w);
    std::vector<float> w_scales(s.n);
    for (int i = 0; i < s.n; ++i) w_scales[i] = fp16_to_fp32(p.w.outlier_scales[i]);
    GemmDeviceBuffer<std::int8_t> x(p.a.outliers), w(p.w.outliers);
    GemmDeviceBuffer<std::uint16_t> xs(p.a.outlier_scales);
    GemmDeviceBuffer<float> ws(w_scales);
    // Split-K adds int32 partial sums: bit-exact at every split count (8 > the chunks of two shapes:
    // clamped).
    for (const W4A4SwapAbTile tile : kW4A4SwapAbTiles)
      for (const int k_splits : {1, 2, 3, kW4A4MaxSplits}) {
        SCOPED_TRACE(std::string(w4a4_swapab_tile_name(tile)) + " k_splits=" + std::to_string(k_splits) +
                     " m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) +
                     " k=" + std::to_string(s.n_out));
        GemmDeviceBuffer<std::uint16_t> out((std::size_t)s.m * s.n);
        out.fill_bytes(0xFF);
        GemmW8A8Args args;
        args.x = x.get();
        args.x_scales = xs.get();
        args.m = s.m;
        args.w = w.get();
        args.w_scales = ws.get();
        args.n = s.n;
        args.k = s.n_out;
        args.out = out.get();
        gemm_w8a8_s8(args, nullptr, tile, k_splits);
        ATOM_CUDA_CHECK(cudaDeviceSynchronize());
        const auto got = out.download();
        int bad = 0;
        for (std::size_t i = 0; i < got.size() && bad < 8; ++i)
          if (got[i] != fp32_to_fp16(ref[i])) {
            ++bad;
            ADD_FAILURE() << "row " << i / s.n << " col " << i % s.n << ": got " << fp16_to_fp32(got[i])
                          << ", reference " << ref[i];
          }
      }
  }
}

TEST(GemmW4A4SwapAb, BadArgumentsAreRejected) {
  GemmW4A4S8Args args;
  args.w.n = 100;  // not a multiple of 8
  args.w.k_normal = 128;
  EXPECT_THROW(gemm_w4a4_o8_s8(args, nullptr), std::runtime_error);
  args.w.n = 128;
  EXPECT_THROW(gemm_w4a4_o8_s8(args, nullptr, W4A4SwapAbTile::kAuto, -1),
               std::runtime_error);  // even at m = 0
  args.a.m = 4;                      // null pointers
  EXPECT_THROW(gemm_w4a4_o8_s8(args, nullptr), std::runtime_error);
  EXPECT_EQ(w4a4_s8_row_bytes(4096 - 128, 128), 4096);
  EXPECT_EQ(w4a4_s8_row_bytes(512, 16), 640);
}

TEST(GemmW4A4, SmallestGroupCountNoOutliers) {
  ATOM_REQUIRE_GPU();
  run_all_kernels({1, 128, 128, 0}, 101);
  run_all_kernels({3, 136, 128, 0}, 102);
}

TEST(GemmW4A4, OddMAndPartialTiles) {
  ATOM_REQUIRE_GPU();
  run_all_kernels({7, 192, 256, 32}, 201);
  run_all_kernels({129, 256, 128, 128}, 202);
  run_all_kernels({197, 576, 512, 64}, 203);  // n not a multiple of 128 (SmolLM2's hidden size)
}

TEST(GemmW4A4, TokenTilesOfTheSplitKKernel) {
  ATOM_REQUIRE_GPU();
  for (int m : {9, 16, 17, 33, 64, 65}) run_all_kernels({m, 128, 384, 16}, 300 + m);
}

TEST(GemmW4A4, SeveralOutlierChunksAndManyGroups) {
  ATOM_REQUIRE_GPU();
  run_all_kernels({150, 256, 1280, 144}, 401);
  run_all_kernels({260, 384, 1024, 256}, 402);
}

TEST(GemmW4A4, MostNegativeCodesDoNotOverflow) {
  ATOM_REQUIRE_GPU();
  run_all_kernels({70, 128, 1024, 128}, 501, Codes::kMostNegative);
}

TEST(GemmW4A4, W8A8IsTheAllOutlierCase) {
  ATOM_REQUIRE_GPU();
  run_all_kernels({5, 256, 0, 512}, 601);
  run_all_kernels({131, 256, 0, 384}, 602);
}

TEST(GemmW4A4, LargerRandomProblem) {
  ATOM_REQUIRE_GPU();
  run_all_kernels({300, 512, 1920, 128}, 701);
}

// The stream kernel's CTAs walk many slabs with cp.async rings that run ahead across slab boundaries: a small
// grid (1 or 3 CTAs) makes every ring wrap many times; odd group counts leave a half-empty last item, and a
// second, partial outlier chunk and a partial last slab (n % 16 == 8) are covered too.
TEST(GemmW4A4, StreamKernelWalksManySlabsPerBlock) {
  ATOM_REQUIRE_GPU();
  for (const Shape s : {Shape{1, 1032, 640, 144}, Shape{13, 520, 1152, 128}, Shape{29, 264, 384, 16},
                        Shape{3, 256, 0, 272}}) {
    std::mt19937 rng(1000 + s.m);
    const GemmProblem p = make_problem(s.m, s.n, s.k_normal, s.n_out, rng);
    const DeviceProblem d(p);
    const std::vector<float> ref = quant::atom_linear_reference(p.a, p.w);
    const std::vector<double> abs_terms = reference_abs_terms(p);
    for (const int stages : {3, 4, 6})
      for (const int max_ctas : {1, 3, 0}) {
        detail::W4A4StreamConfig c;
        c.stages = stages;
        c.max_ctas = max_ctas;
        check_kernel(p, d, W4A4Kernel::kStreamS8, false, RunOptions{}, rng, ref, abs_terms, &c);
      }
    detail::W4A4StreamConfig s4;
    s4.native_s4 = true;
    s4.max_ctas = 2;
    check_kernel(p, d, W4A4Kernel::kStreamS4, false, RunOptions{GemmOutType::kBF16, true}, rng, ref,
                 abs_terms, &s4);
  }
}

TEST(GemmW4A4, DevicePrepackMatchesHostPrepack) {
  ATOM_REQUIRE_GPU();
  std::mt19937 rng(801);
  for (const Shape s : {Shape{1, 200, 384, 48}, Shape{1, 256, 0, 128}, Shape{1, 64, 256, 0}}) {
    const GemmProblem p = make_problem(s.m, s.n, s.k_normal, s.n_out, rng);
    const DeviceProblem d(p);
    const W4A4PackedSizes sizes = w4a4_packed_sizes(s.n, s.k_normal, s.n_out);
    std::vector<std::uint8_t> packed(sizes.packed_bytes, 0xA5);
    std::vector<std::int8_t> outliers(sizes.outlier_bytes, 0x5A);
    std::vector<float> scales(sizes.scale_bytes / sizeof(float), -1.0f);
    W4A4CanonicalWeights c;
    c.packed = p.w.packed.data();
    c.scales = p.w.scales.data();
    c.outliers = p.w.outliers.data();
    c.outlier_scales = p.w.outlier_scales.data();
    c.n = s.n;
    c.k_normal = s.k_normal;
    c.n_outliers = s.n_out;
    prepack_w4a4_weights_host(c, packed.data(), outliers.data(), scales.data());
    EXPECT_EQ(packed, d.w_packed.download());
    EXPECT_EQ(outliers, d.w_outliers.download());
    const auto dev_scales = d.w_scales.download();
    ASSERT_EQ(scales.size(), dev_scales.size());
    EXPECT_EQ(0, std::memcmp(scales.data(), dev_scales.data(), scales.size() * sizeof(float)));
    // Spot-check the documented layout: a code, an outlier and a scale land where gemm_w4a4.h says.
    if (s.k_normal >= 256 && s.n > 130) {
      const int row = 130, g = 1, piece = 2, word = 3;  // tile 1, row 2
      const int cw = layout::packed_canonical_word(piece, word);
      std::uint32_t want, got;
      std::memcpy(&want, p.w.packed.data() + (std::size_t)row * s.k_normal / 2 + g * 64 + cw * 4, 4);
      const int groups = s.k_normal / kW4A4Group;
      std::memcpy(&got, packed.data() + (((1 * groups + g) * 4 + piece) * 128 + 2) * 16 + word * 4, 4);
      EXPECT_EQ(want, got);
      EXPECT_EQ(fp16_to_fp32(p.w.scales[(std::size_t)row * groups + g]),
                scales[((1 * (groups + 1)) + g) * 128 + layout::scale_position_of_channel(2)]);
    }
  }
}

TEST(GemmW4A4, LayoutMapsAreBijections) {
  std::vector<int> seen(128, 0);
  for (int r = 0; r < 8; ++r) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int p = 0; p < 128; ++p) ++seen[layout::outlier_channel_of_byte(r, p)];
    for (int c = 0; c < 128; ++c) ASSERT_EQ(seen[c], 1) << "row " << r << " channel " << c;
  }
  for (int c = 0; c < 128; ++c)
    EXPECT_EQ(layout::scale_channel_of_position(layout::scale_position_of_channel(c)), c);
}

TEST(GemmW4A4, BadShapesAreRejected) {
  EXPECT_THROW(validate_w4a4_shape(128, 100, 0, "test"),
               std::runtime_error);  // k_normal not a multiple of 128
  EXPECT_THROW(validate_w4a4_shape(128, 128, 24, "test"),
               std::runtime_error);  // outliers not a multiple of 16
  EXPECT_THROW(validate_w4a4_shape(100, 128, 0, "test"), std::runtime_error);  // n not a multiple of 8
  EXPECT_THROW(validate_w4a4_shape(128, 0, 0, "test"), std::runtime_error);
  try {
    validate_w4a4_shape(128, 130, 0, "layer.7.q_proj");
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {  // atom::Error
    EXPECT_NE(std::string(e.what()).find("layer.7.q_proj"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("130"), std::string::npos);
  }
}

// ---- W4A16 baseline: fp64 reference of sum_g sw * sum_k x * q.
TEST(GemmW4A16, MatchesFp64Reference) {
  ATOM_REQUIRE_GPU();
  std::mt19937 rng(901);
  for (const Shape s :
       {Shape{1, 128, 128, 0}, Shape{13, 200, 512, 0}, Shape{64, 256, 1024, 0}, Shape{100, 64, 256, 0}}) {
    SCOPED_TRACE("m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) +
                 " k=" + std::to_string(s.k_normal));
    const GemmProblem p = make_problem(1, s.n, s.k_normal, 0, rng);
    const DeviceProblem d(p);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<std::uint16_t> x((std::size_t)s.m * s.k_normal);
    for (auto& v : x) v = fp32_to_fp16(normal(rng));
    GemmDeviceBuffer<std::uint16_t> dx(x), out((std::size_t)s.m * s.n);
    out.fill_bytes(0xFF);
    GemmW4A16Args args;
    args.x = dx.get();
    args.m = s.m;
    args.w = d.packed();
    args.out = out.get();
    gemm_w4a16(args, nullptr);
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());
    const auto got = out.download();
    const int groups = s.k_normal / kW4A4Group;
    int bad = 0;
    for (int n = 0; n < s.n; ++n) {
      const auto q = quant::unpack_int4(
          {p.w.packed.data() + (std::size_t)n * s.k_normal / 2, (std::size_t)s.k_normal / 2}, s.k_normal);
      for (int m = 0; m < s.m && bad < 8; ++m) {
        double y = 0.0, mag = 0.0;
        for (int g = 0; g < groups; ++g) {
          double d_g = 0.0;
          for (int k = g * kW4A4Group; k < (g + 1) * kW4A4Group; ++k) {
            const double prod = fp16_to_fp32(x[(std::size_t)m * s.k_normal + k]) * q[k];
            d_g += prod;
            mag += std::fabs(prod) * fp16_to_fp32(p.w.scales[(std::size_t)n * groups + g]);
          }
          y += d_g * fp16_to_fp32(p.w.scales[(std::size_t)n * groups + g]);
        }
        const double g_val = fp16_to_fp32(got[(std::size_t)m * s.n + n]);
        const double tol = out_ulp(y, GemmOutType::kF16) + 64.0 * std::ldexp(mag, -24);
        if (!(std::fabs(g_val - y) <= tol)) {
          ++bad;
          ADD_FAILURE() << "m " << m << " n " << n << ": got " << g_val << ", reference " << y;
        }
      }
    }
  }
}

}  // namespace
}  // namespace atom::cuda
