// bench_gemm: validates, then times Atom's W4A4 (+INT8 outlier) GEMM against cuBLAS FP16, cuBLASLt INT8 and
// FP8 and against our W8A8 and W4A16 GEMMs, for the Llama-7B/8B/13B/70B-like linear shapes. One command:
//
//   bench_gemm [--quick] [--variants] [--csv FILE] [--shapes NxK,...] [--ms 1,8,...]
//
// Measures the two ceilings in the same run (device-to-device copy bandwidth; a large cuBLASLt INT8 GEMM),
// times each kernel as the median of CUDA-graph replays of a batch of launches that rotate through input
// copies larger than L2, and prints a table of times, ratios, effective TOPS and bytes/time.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_fp16.h>

#include "../common/bench_harness.cuh"
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/gemm/gemm_baselines.h"
#include "backend/cuda/gemm/gemm_w4a4.h"
#include "common/half.h"

using namespace atom;
using namespace atom::cuda;

namespace {

// ---------------------------------------------------------------- device random fills
__device__ __forceinline__ std::uint32_t hash32(std::uint64_t i, std::uint32_t seed) {
  std::uint64_t x = i * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  return static_cast<std::uint32_t>(x);
}
__global__ void fill_bytes_kernel(std::uint8_t* p, std::size_t n, std::uint32_t seed, std::uint8_t mask) {
  for (std::size_t i = blockIdx.x * (std::size_t)blockDim.x + threadIdx.x; i < n; i += (std::size_t)gridDim.x * blockDim.x)
    p[i] = static_cast<std::uint8_t>(hash32(i, seed)) & mask;
}
// fp16 scales 2^u, u uniform in [-9, -4).
__global__ void fill_scales_kernel(std::uint16_t* p, std::size_t n, std::uint32_t seed) {
  for (std::size_t i = blockIdx.x * (std::size_t)blockDim.x + threadIdx.x; i < n; i += (std::size_t)gridDim.x * blockDim.x)
    p[i] = __half_as_ushort(__float2half_rn(exp2f(-9.0f + 5.0f * (hash32(i, seed) >> 8) * (1.0f / 16777216.0f))));
}
// fp16 uniform in [-1, 1).
__global__ void fill_f16_kernel(std::uint16_t* p, std::size_t n, std::uint32_t seed) {
  for (std::size_t i = blockIdx.x * (std::size_t)blockDim.x + threadIdx.x; i < n; i += (std::size_t)gridDim.x * blockDim.x)
    p[i] = __half_as_ushort(__float2half_rn(-1.0f + 2.0f * (hash32(i, seed) >> 8) * (1.0f / 16777216.0f)));
}

template <class T>
using Buf = bench::DeviceBuffer<T>;

std::uint32_t g_seed = 1;
template <class T>
Buf<T> random_bytes(std::size_t count, std::uint8_t mask = 0xFF) {
  Buf<T> b(count);
  if (count) fill_bytes_kernel<<<1024, 256>>>(reinterpret_cast<std::uint8_t*>(b.p), b.bytes(), g_seed++, mask);
  ATOM_CUDA_CHECK_LAUNCH();
  return b;
}
Buf<std::uint16_t> random_scales(std::size_t count) {
  Buf<std::uint16_t> b(count);
  if (count) fill_scales_kernel<<<1024, 256>>>(b.p, count, g_seed++);
  ATOM_CUDA_CHECK_LAUNCH();
  return b;
}
Buf<std::uint16_t> random_f16(std::size_t count) {
  Buf<std::uint16_t> b(count);
  if (count) fill_f16_kernel<<<1024, 256>>>(b.p, count, g_seed++);
  ATOM_CUDA_CHECK_LAUNCH();
  return b;
}

// ---------------------------------------------------------------- timing
using Timer = bench::GraphTimer;  // median of CUDA-graph replays of a batch of launches

std::size_t g_l2_bytes = 50u << 20;
// Copies of an input set so that a rotation spans at least 3x L2.
int rotation(std::size_t set_bytes) {
  return bench::rotation_count(static_cast<double>(set_bytes), 3.0 * static_cast<double>(g_l2_bytes), 16);
}

// ---------------------------------------------------------------- W4A4 problem (canonical + prepacked copies)
struct W4A4Weights {
  Buf<std::uint8_t> packed;
  Buf<std::uint16_t> scales, outlier_scales;
  Buf<std::int8_t> outliers;
  std::vector<Buf<std::uint8_t>> p_packed;
  std::vector<Buf<std::int8_t>> p_outliers;
  std::vector<Buf<float>> p_scales;
  int n, k_normal, n_out;
  W4A4Weights(int n_, int k_normal_, int n_out_) : n(n_), k_normal(k_normal_), n_out(n_out_) {
    packed = random_bytes<std::uint8_t>((std::size_t)n * k_normal / 2);
    scales = random_scales((std::size_t)n * (k_normal / kW4A4Group));
    outliers = random_bytes<std::int8_t>((std::size_t)n * n_out);
    outlier_scales = random_scales(n_out > 0 ? n : 0);
    const W4A4PackedSizes s = w4a4_packed_sizes(n, k_normal, n_out);
    const int copies = rotation(s.packed_bytes + s.outlier_bytes + s.scale_bytes);
    for (int c = 0; c < copies; ++c) {
      p_packed.emplace_back(s.packed_bytes);
      p_outliers.emplace_back(s.outlier_bytes);
      p_scales.emplace_back(s.scale_bytes / sizeof(float));
      prepack_w4a4_weights_device(canonical(), get(c), nullptr);
    }
    ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  }
  W4A4CanonicalWeights canonical() const {
    W4A4CanonicalWeights c;
    c.packed = packed.p;
    c.scales = scales.p;
    c.outliers = outliers.p;
    c.outlier_scales = outlier_scales.p;
    c.n = n;
    c.k_normal = k_normal;
    c.n_outliers = n_out;
    return c;
  }
  int copies() const { return static_cast<int>(p_scales.size()); }
  W4A4PackedWeights get(int i) const {
    i %= copies();
    W4A4PackedWeights w;
    w.packed = p_packed[i].p;
    w.outliers = p_outliers[i].p;
    w.scales = p_scales[i].p;
    w.n = n;
    w.k_normal = k_normal;
    w.n_outliers = n_out;
    return w;
  }
  std::size_t gpu_bytes() const { return p_packed[0].bytes() + p_outliers[0].bytes() + p_scales[0].bytes(); }
};

struct W4A4Acts {
  std::vector<Buf<std::uint8_t>> packed;
  std::vector<Buf<std::uint16_t>> scales, outlier_scales;
  std::vector<Buf<std::int8_t>> outliers;
  int m, k_normal, n_out;
  W4A4Acts(int m_, int k_normal_, int n_out_) : m(m_), k_normal(k_normal_), n_out(n_out_) {
    const std::size_t set = (std::size_t)m * (k_normal / 2 + n_out + 2 * (k_normal / kW4A4Group) + 2);
    for (int c = 0, copies = rotation(set); c < copies; ++c) {
      packed.push_back(random_bytes<std::uint8_t>((std::size_t)m * k_normal / 2));
      scales.push_back(random_scales((std::size_t)m * (k_normal / kW4A4Group)));
      outliers.push_back(random_bytes<std::int8_t>((std::size_t)m * n_out));
      outlier_scales.push_back(random_scales(n_out > 0 ? m : 0));
    }
  }
  W4A4Activations get(int i) const {
    i %= static_cast<int>(packed.size());
    W4A4Activations a;
    a.packed = packed[i].p;
    a.scales = scales[i].p;
    a.outliers = outliers[i].p;
    a.outlier_scales = outlier_scales[i].p;
    a.m = m;
    return a;
  }
  std::size_t bytes() const { return packed[0].bytes() + scales[0].bytes() + outliers[0].bytes() + outlier_scales[0].bytes(); }
};

// Host copy of copy 0 of the inputs, for the sampled reference.
struct HostW4A4 {
  std::vector<std::uint8_t> wp, ap;
  std::vector<std::uint16_t> ws, wos, as, aos;
  std::vector<std::int8_t> wo, ao;
};

int nibble(const std::uint8_t* row, int k) {
  const int v = (row[k / 2] >> (4 * (k & 1))) & 0xF;
  return v >= 8 ? v - 16 : v;
}
// FORMAT.md's product for one output element (the order of atom::quant::atom_linear_reference).
float reference_w4a4(const HostW4A4& h, int m, int n, int k_normal, int n_out, double* abs_terms) {
  const int groups = k_normal / kW4A4Group;
  const std::uint8_t* ar = h.ap.data() + (std::size_t)m * k_normal / 2;
  const std::uint8_t* wr = h.wp.data() + (std::size_t)n * k_normal / 2;
  float acc = 0.0f;
  double mag = 0.0;
  for (int g = 0; g < groups; ++g) {
    std::int32_t d = 0;
    for (int k = g * kW4A4Group; k < (g + 1) * kW4A4Group; ++k) d += nibble(ar, k) * nibble(wr, k);
    const float t = static_cast<float>(d) * fp16_to_fp32(h.as[(std::size_t)m * groups + g]);
    const float sw = fp16_to_fp32(h.ws[(std::size_t)n * groups + g]);
    acc = std::fma(t, sw, acc);
    mag += std::fabs((double)t * sw);
  }
  if (n_out > 0) {
    std::int32_t d = 0;
    for (int o = 0; o < n_out; ++o) d += h.ao[(std::size_t)m * n_out + o] * h.wo[(std::size_t)n * n_out + o];
    const float t = static_cast<float>(d) * fp16_to_fp32(h.aos[m]);
    acc = std::fma(t, fp16_to_fp32(h.wos[n]), acc);
    mag += std::fabs((double)t * fp16_to_fp32(h.wos[n]));
  }
  *abs_terms = mag;
  return acc;
}

struct Check {
  int samples = 0, ok = 0, exact = 0;
  std::string str() const { return std::to_string(ok) + "/" + std::to_string(samples) + (ok == samples ? " ok" : " FAIL"); }
};

std::vector<std::pair<int, int>> sample_points(int m, int n, std::mt19937& rng) {
  std::vector<std::pair<int, int>> pts = {{0, 0}, {m - 1, n - 1}, {m - 1, 0}, {0, n - 1}};
  std::uniform_int_distribution<int> dm(0, m - 1), dn(0, n - 1);
  while (pts.size() < 64) pts.emplace_back(dm(rng), dn(rng));
  return pts;
}

Check validate_w4a4(const W4A4Weights& w, const W4A4Acts& a, const Buf<std::uint16_t>& out, std::mt19937& rng) {
  HostW4A4 h;
  h.wp = w.packed.download();
  h.ws = w.scales.download();
  h.wo = w.outliers.download();
  h.wos = w.outlier_scales.download();
  h.ap = a.packed[0].download();
  h.as = a.scales[0].download();
  h.ao = a.outliers[0].download();
  h.aos = a.outlier_scales[0].download();
  const auto got = out.download();
  Check c;
  for (const auto& [m, n] : sample_points(a.m, w.n, rng)) {
    double mag = 0;
    const float ref = reference_w4a4(h, m, n, w.k_normal, w.n_out, &mag);
    const std::uint16_t g = got[(std::size_t)m * w.n + n];
    const double gv = fp16_to_fp32(g);
    ++c.samples;
    c.exact += g == fp32_to_fp16(ref);
    c.ok += std::isfinite(gv) && std::fabs(gv - ref) <= bench::fp16_ulp(ref) + 32.0 * std::ldexp(mag, -24);
  }
  return c;
}

// ---------------------------------------------------------------- the benchmark
struct Row {
  int n, k, m;
  std::string kernel;
  double ours = 0, f16 = 0, i8 = 0, fp8 = 0, w8a8 = 0, w4a16 = 0;
  double bn128 = 0, bn64 = 0, mma = 0;
  double packed_auto = 0, swapab_auto = 0;  // the two activation layouts' kAuto kernels (0: not run)
  double bytes = 0;
  std::string tiles;  // the serving-size kernel's time per tile, "name us; ..." (the dispatch table's input)
  std::string valid;
};

std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  for (const char* p = s; *p;) {
    v.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p) ++p;
  }
  return v;
}


// ---------------------------------------------------------------- layout probe (diagnostics)
// One-hot codes: activation row m has code 1 at channel m, weight row n code 1 at channel n, unit scales.
// A correct kernel returns the identity; a wrong operand or output layout shows up as the pairs it makes.
void run_probe(W4A4Kernel kernel, bool outliers) {
  const int m = 128, n = 128, k_normal = outliers ? 0 : 128, n_out = outliers ? 128 : 0;
  std::vector<std::uint8_t> ap((std::size_t)m * k_normal / 2, 0), wp((std::size_t)n * k_normal / 2, 0);
  std::vector<std::int8_t> ao((std::size_t)m * n_out, 0), wo((std::size_t)n * n_out, 0);
  const std::uint16_t one = fp32_to_fp16(1.0f);
  std::vector<std::uint16_t> as((std::size_t)m * (k_normal / 128), one), ws((std::size_t)n * (k_normal / 128), one);
  std::vector<std::uint16_t> aos(n_out ? m : 0, one), wos(n_out ? n : 0, one);
  for (int i = 0; i < 128; ++i) {
    if (outliers) {
      ao[(std::size_t)i * n_out + i] = 1;
      wo[(std::size_t)i * n_out + i] = 1;
    } else {
      ap[(std::size_t)i * 64 + i / 2] = static_cast<std::uint8_t>(1u << (4 * (i & 1)));
      wp[(std::size_t)i * 64 + i / 2] = static_cast<std::uint8_t>(1u << (4 * (i & 1)));
    }
  }
  auto up = [](const auto& v) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    Buf<T> b(v.size());
    if (!v.empty()) ATOM_CUDA_CHECK(cudaMemcpy(b.p, v.data(), b.bytes(), cudaMemcpyHostToDevice));
    return b;
  };
  Buf<std::uint8_t> d_ap = up(ap), d_wp = up(wp);
  Buf<std::int8_t> d_ao = up(ao), d_wo = up(wo);
  Buf<std::uint16_t> d_as = up(as), d_ws = up(ws), d_aos = up(aos), d_wos = up(wos);
  const W4A4PackedSizes sz = w4a4_packed_sizes(n, k_normal, n_out);
  Buf<std::uint8_t> p_packed(sz.packed_bytes);
  Buf<std::int8_t> p_out(sz.outlier_bytes);
  Buf<float> p_scales(sz.scale_bytes / 4);
  W4A4CanonicalWeights c;
  c.packed = d_wp.p;
  c.scales = d_ws.p;
  c.outliers = d_wo.p;
  c.outlier_scales = d_wos.p;
  c.n = n;
  c.k_normal = k_normal;
  c.n_outliers = n_out;
  W4A4PackedWeights w;
  w.packed = p_packed.p;
  w.outliers = p_out.p;
  w.scales = p_scales.p;
  w.n = n;
  w.k_normal = k_normal;
  w.n_outliers = n_out;
  prepack_w4a4_weights_device(c, w, nullptr);
  Buf<std::uint16_t> y((std::size_t)m * n);
  ATOM_CUDA_CHECK(cudaMemset(y.p, 0xFF, y.bytes()));
  GemmW4A4Args args;
  args.a.packed = d_ap.p;
  args.a.scales = d_as.p;
  args.a.outliers = d_ao.p;
  args.a.outlier_scales = d_aos.p;
  args.a.m = m;
  args.w = w;
  args.out = y.p;
  gemm_w4a4_o8(args, nullptr, kernel);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  const auto h = y.download();
  int nonzero = 0, diag = 0, nan = 0;
  std::string pairs;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      const float v = fp16_to_fp32(h[(std::size_t)i * n + j]);
      if (std::isnan(v)) { ++nan; continue; }
      if (v != 0.0f) {
        ++nonzero;
        diag += (i == j && v == 1.0f);
        if (i != j && pairs.size() < 1500) pairs += " (" + std::to_string(i) + "," + std::to_string(j) + ")=" + std::to_string(v);
      }
    }
  std::printf("# probe %s %s: %d nonzero, %d on the diagonal, %d NaN (identity: 128, 128, 0)%s%s\n",
              w4a4_kernel_name(kernel), outliers ? "outliers" : "int4", nonzero, diag, nan,
              pairs.empty() ? "" : "; off-diagonal:", pairs.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, variants = false, probe = false, ours_only = false;
  const char* csv_path = nullptr;
  // Llama-2-7B (qkv, o, gate/up, down) and Llama-3-8B (qkv, gate/up, down) linear shapes, N x K.
  std::vector<std::pair<int, int>> shapes = {{12288, 4096}, {4096, 4096},  {22016, 4096}, {4096, 11008},
                                             {6144, 4096},  {28672, 4096}, {4096, 14336}};
  std::vector<int> ms = {1, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 8192};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--ours-only") {
      ours_only = true;
    } else if (a == "--probe") {
      probe = true;
    } else if (a == "--variants") {
      variants = true;
    } else if (a == "--csv" && i + 1 < argc) {
      csv_path = argv[++i];
    } else if (a == "--ms" && i + 1 < argc) {
      ms = parse_list(argv[++i]);
    } else if (a == "--shapes" && i + 1 < argc) {
      shapes.clear();
      for (const char* p = argv[++i]; *p;) {
        int n = std::atoi(p);
        while (*p && *p != 'x') ++p;
        if (*p) ++p;
        int k = std::atoi(p);
        shapes.emplace_back(n, k);
        while (*p && *p != ',') ++p;
        if (*p) ++p;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--variants] [--probe] [--ours-only] [--csv FILE] [--shapes NxK,...] [--ms 1,8,...]\n", argv[0]);
      return 2;
    }
  }
  if (quick) {
    shapes = {{4096, 4096}, {28672, 4096}};
    ms = {1, 16, 64, 256, 1024, 4096};
  }
  try {
    cudaDeviceProp prop{};
    ATOM_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    g_l2_bytes = prop.l2CacheSize;
    int runtime = 0, driver = 0;
    ATOM_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
    ATOM_CUDA_CHECK(cudaDriverGetVersion(&driver));
    const std::time_t now = std::time(nullptr);
    char date[64];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    std::printf("# bench_gemm  %s  device: %s (sm_%d%d, %d SMs, L2 %zu MB)  CUDA runtime %d driver %d\n", date, prop.name,
                prop.major, prop.minor, prop.multiProcessorCount, g_l2_bytes >> 20, runtime, driver);

    if (probe) {
      for (const bool o : {false, true})
        for (const W4A4Kernel k : {W4A4Kernel::kWgmmaBn128, W4A4Kernel::kWgmmaBn64, W4A4Kernel::kMmaS8, W4A4Kernel::kMmaS4,
                                  W4A4Kernel::kStreamS8})
          run_probe(k, o);
      return 0;
    }
    cudaStream_t stream;
    ATOM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    Timer timer{stream};
    GemmBaselines blas(stream);

    // ---- ceilings
    double hbm_gbs = 1, i8_peak = 1, f16_peak = 1;
    if (!ours_only) {
      const std::size_t bytes = std::size_t{1} << 30;
      Buf<std::uint8_t> src = random_bytes<std::uint8_t>(bytes), dst(bytes);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      const double us = timer.median_us(
          [&](int) { ATOM_CUDA_CHECK(cudaMemcpyAsync(dst.p, src.p, bytes, cudaMemcpyDeviceToDevice, stream)); });
      hbm_gbs = 2.0 * bytes / us * 1e-3;
    }
    if (!ours_only) {
      const int s = 8192;
      Buf<std::int8_t> x = random_bytes<std::int8_t>((std::size_t)s * s), w = random_bytes<std::int8_t>((std::size_t)s * s);
      Buf<std::int32_t> y((std::size_t)s * s);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      const double us = timer.median_us([&](int) { blas.i8(x.p, w.p, y.p, s, s, s); }, 5);
      i8_peak = 2.0 * s * s * s / us * 1e-6;
      Buf<std::uint16_t> xh = random_f16((std::size_t)s * s), wh = random_f16((std::size_t)s * s), yh((std::size_t)s * s);
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      const double us16 = timer.median_us([&](int) { blas.f16(xh.p, wh.p, yh.p, s, s, s); }, 5);
      f16_peak = 2.0 * s * s * s / us16 * 1e-6;
    }
    std::printf("# ceilings: device-to-device copy %.0f GB/s (read + write); cuBLASLt INT8 8192^3 %.0f TOPS; "
                "cuBLAS FP16 8192^3 %.0f TFLOPS\n",
                hbm_gbs, i8_peak, f16_peak);

    std::vector<Row> rows;
    std::mt19937 rng(12345);
    for (const auto& [N, K] : shapes) {
      const int n_out = 128, k_normal = K - n_out;
      W4A4Weights w4(N, k_normal, n_out);
      W4A4Weights w8(N, 0, K);  // W8A8: every channel INT8, per-channel scale
      W4A4Weights w4only(N, K, 0);  // W4A16: INT4 groups only
      const int r16 = rotation((std::size_t)N * K * 2), r8 = rotation((std::size_t)N * K);
      std::vector<Buf<std::uint16_t>> wf16;
      std::vector<Buf<std::int8_t>> wi8;
      std::vector<Buf<std::uint8_t>> wfp8;
      for (int c = 0; c < r16; ++c) wf16.push_back(random_f16((std::size_t)N * K));
      for (int c = 0; c < r8; ++c) {
        wi8.push_back(random_bytes<std::int8_t>((std::size_t)N * K));
        wfp8.push_back(random_bytes<std::uint8_t>((std::size_t)N * K, 0xBF));  // |x| < 2: no NaN codes
      }
      ATOM_CUDA_CHECK(cudaDeviceSynchronize());
      for (const int M : ms) {
        Row row{N, K, M};
        W4A4Acts a4(M, k_normal, n_out), a8(M, 0, K);
        const int ra16 = rotation((std::size_t)M * K * 2), ra8 = rotation((std::size_t)M * K);
        std::vector<Buf<std::uint16_t>> xf16;
        std::vector<Buf<std::int8_t>> xi8;
        std::vector<Buf<std::uint8_t>> xfp8;
        for (int c = 0; c < ra16; ++c) xf16.push_back(random_f16((std::size_t)M * K));
        for (int c = 0; c < ra8; ++c) {
          xi8.push_back(random_bytes<std::int8_t>((std::size_t)M * K));
          xfp8.push_back(random_bytes<std::uint8_t>((std::size_t)M * K, 0xBF));
        }
        Buf<std::uint16_t> y16((std::size_t)M * N), y_ours((std::size_t)M * N);
        Buf<std::int32_t> y32((std::size_t)M * N);
        ATOM_CUDA_CHECK(cudaDeviceSynchronize());  // random fills ran on the legacy stream

        auto ours = [&](W4A4Kernel kern) {
          return [&, kern](int i) {
            GemmW4A4Args args;
            args.a = a4.get(i);
            args.w = w4.get(i);
            args.out = y_ours.p;
            gemm_w4a4_o8(args, stream, kern);
          };
        };
        // Validate first (fresh poisoned output), then time.
        ATOM_CUDA_CHECK(cudaMemsetAsync(y_ours.p, 0xFF, y_ours.bytes(), stream));
        ours(W4A4Kernel::kAuto)(0);
        ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
        const Check c4 = validate_w4a4(w4, a4, y_ours, rng);
        row.kernel = w4a4_kernel_name(w4a4_auto_kernel(M, N));
        row.ours = row.packed_auto = timer.median_us(ours(W4A4Kernel::kAuto));
        // The serving-size kernel on int8 activations (converted from the same codes): validated, every tile
        // timed; the row reports what the model runner runs at this M with --serving-gemm.
        Check cs8;
        std::string tile_times;
        if (w4a4_swapab_available()) {
          const int row_bytes = w4a4_s8_row_bytes(k_normal, n_out);
          std::vector<Buf<std::int8_t>> codes;
          std::vector<Buf<std::uint16_t>> scales, oscales;
          for (int c = 0; c < static_cast<int>(a4.packed.size()); ++c) {
            codes.emplace_back((std::size_t)M * row_bytes);
            scales.emplace_back((std::size_t)M * (k_normal / kW4A4Group));
            oscales.emplace_back(M);
            convert_w4a4_activations_s8(a4.get(c), k_normal, n_out,
                                        W4A4ActivationsS8{codes[c].p, scales[c].p, oscales[c].p, M}, stream);
          }
          auto swapab = [&](W4A4SwapAbTile tile, int k_splits = 0) {
            return [&, tile, k_splits](int i) {
              const int c = i % static_cast<int>(codes.size());
              GemmW4A4S8Args args;
              args.a = W4A4ActivationsS8{codes[c].p, scales[c].p, oscales[c].p, M};
              args.w = w4.get(i);
              args.out = y_ours.p;
              gemm_w4a4_o8_s8(args, stream, tile, k_splits);
            };
          };
          ATOM_CUDA_CHECK(cudaMemsetAsync(y_ours.p, 0xFF, y_ours.bytes(), stream));
          swapab(W4A4SwapAbTile::kAuto)(0);
          ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
          cs8 = validate_w4a4(w4, a4, y_ours, rng);
          row.swapab_auto = timer.median_us(swapab(W4A4SwapAbTile::kAuto));
          // Every tile and split-K count up to twice the range the runner uses it for (the crossover with the
          // packed-layout kernels); "/sN" is N CTAs per output tile.
          const int units = k_normal / kW4A4Group + (n_out > 0 ? 1 : 0);
          for (const W4A4SwapAbTile tile : kW4A4SwapAbTiles) {
            if (M > 2 * kW4A4S8MaxRows) break;
            for (const int k_splits : {1, 2, 4, 8}) {
              if (k_splits > 1 && units / k_splits < kW4A4MinUnitsPerSplit) break;
              const double us = timer.median_us(swapab(tile, k_splits));
              char buf[112];
              std::snprintf(buf, sizeof buf, "%s%s/s%d %.2f", tile_times.empty() ? "" : ", ",
                            w4a4_swapab_tile_name(tile) + std::strlen("gemm_w4a4o8_swapab_sm90"), k_splits, us);
              tile_times += buf;
              std::snprintf(buf, sizeof buf, "%s%s/s%d %.3f", row.tiles.empty() ? "" : "; ", w4a4_swapab_tile_name(tile),
                            k_splits, us);
              row.tiles += buf;
            }
          }
          if (w4a4_prefers_s8_activations(M, N)) {
            row.ours = row.swapab_auto;
            row.kernel = std::string(w4a4_swapab_tile_name(w4a4_swapab_auto_tile(M, N))) + "/s" +
                         std::to_string(w4a4_swapab_auto_splits(M, N, k_normal, n_out, W4A4SwapAbTile::kAuto));
          }
        }
        if (variants && M >= 64) {
          row.bn128 = timer.median_us(ours(W4A4Kernel::kWgmmaBn128));
          row.bn64 = timer.median_us(ours(W4A4Kernel::kWgmmaBn64));
          if (M <= 1024) row.mma = timer.median_us(ours(W4A4Kernel::kMmaS8));
        }
        std::string decode_variants;
        if (variants && M <= 32) {
          // The one-pass split-K kernel and the stream kernel's tunings (slots per warp, CTAs per SM).
          row.mma = timer.median_us(ours(W4A4Kernel::kMmaS8));
          struct Variant {
            const char* name;
            int stages, per_sm;
          };
          for (const Variant v : {Variant{"3 slots", 3, 0}, Variant{"4 slots", 4, 0}, Variant{"6 slots", 6, 0},
                                  Variant{"4 slots 1 CTA/SM", 4, 1}}) {
            detail::W4A4StreamConfig c;
            c.stages = v.stages;
            c.max_ctas_per_sm = v.per_sm;
            const double us = timer.median_us([&, c](int i) {
              GemmW4A4Args args;
              args.a = a4.get(i);
              args.w = w4.get(i);
              args.out = y_ours.p;
              detail::launch_w4a4_stream(args, c, stream);
            });
            char buf[64];
            std::snprintf(buf, sizeof buf, "%s%s %.2f", decode_variants.empty() ? "" : ", ", v.name, us);
            decode_variants += buf;
          }
        }
        if (variants && M >= 4096 && (N == 4096 || N == 28672) && K == 4096) {
          // Ablations of the wgmma kernel (wrong results, timing only): what each stage costs.
          double t[4];
          for (int ab = 0; ab < 4; ++ab)
            t[ab] = timer.median_us([&, ab](int i) {
              GemmW4A4Args args;
              args.a = a4.get(i);
              args.w = w4.get(i);
              args.out = y_ours.p;
              detail::launch_w4a4_wgmma_sm90_ablation(args, ab, stream);
            });
          std::printf("    ablations (bn128): full %.1f us, no weight unpack %.1f us, no group rescale %.1f us, "
                      "no MMA %.1f us\n", t[0], t[1], t[2], t[3]);
        }
        row.bytes = (double)w4.gpu_bytes() + a4.bytes() + (double)M * N * 2;

        // W8A8 (ours): validated with the same reference (k_normal = 0).
        ATOM_CUDA_CHECK(cudaMemsetAsync(y_ours.p, 0xFF, y_ours.bytes(), stream));
        auto w8a8 = [&](int i) {
          GemmW4A4Args args;
          args.a = a8.get(i);
          args.w = w8.get(i);
          args.out = y_ours.p;
          gemm_w4a4_o8(args, stream);
        };
        w8a8(0);
        ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
        Check c8 = validate_w4a4(w8, a8, y_ours, rng);
        row.w8a8 = timer.median_us(w8a8);
        if (w4a4_prefers_s8_activations(M, N)) {
          // W8A8 as the model runner runs it with --serving-gemm: the serving-size kernel on the plain int8 layouts
          // (weights as cuBLASLt reads them: the canonical outlier codes; validated against the same reference).
          std::vector<float> ws_host(N);
          const auto wos = w8.outlier_scales.download();
          for (int i = 0; i < N; ++i) ws_host[i] = fp16_to_fp32(wos[i]);
          Buf<float> ws(N);
          ATOM_CUDA_CHECK(cudaMemcpy(ws.p, ws_host.data(), N * sizeof(float), cudaMemcpyHostToDevice));
          // Weight copies beyond L2 for timing; copy 0 holds the validated codes.
          std::vector<Buf<std::int8_t>> wc;
          wc.emplace_back((std::size_t)N * K);
          ATOM_CUDA_CHECK(cudaMemcpy(wc[0].p, w8.outliers.p, wc[0].bytes(), cudaMemcpyDeviceToDevice));
          for (int c = 1; c < r8; ++c) wc.push_back(random_bytes<std::int8_t>((std::size_t)N * K));
          ATOM_CUDA_CHECK(cudaDeviceSynchronize());
          auto w8a8_s8 = [&](int i) {
            const int c = i % static_cast<int>(a8.outliers.size());
            GemmW8A8Args args;
            args.x = a8.outliers[c].p;
            args.x_scales = a8.outlier_scales[c].p;
            args.m = M;
            args.w = wc[i % static_cast<int>(wc.size())].p;
            args.w_scales = ws.p;
            args.n = N;
            args.k = K;
            args.out = y_ours.p;
            gemm_w8a8_s8(args, stream);
          };
          ATOM_CUDA_CHECK(cudaMemsetAsync(y_ours.p, 0xFF, y_ours.bytes(), stream));
          w8a8_s8(0);
          ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
          c8 = validate_w4a4(w8, a8, y_ours, rng);
          row.w8a8 = timer.median_us(w8a8_s8);
        }
        if (ours_only) {
          std::printf("N %5d K %5d M %4d | ours %9.2f us %s | %s\n", N, K, M, row.ours, row.kernel.c_str(), c4.str().c_str());
          continue;
        }
        if (M <= 256) {
          row.w4a16 = timer.median_us([&](int i) {
            GemmW4A16Args args;
            args.x = xf16[i % ra16].p;
            args.m = M;
            args.w = w4only.get(i);
            args.out = y_ours.p;
            gemm_w4a16(args, stream);
          });
        }
        row.f16 = timer.median_us([&](int i) { blas.f16(xf16[i % ra16].p, wf16[i % r16].p, y16.p, M, N, K); });
        row.i8 = timer.median_us([&](int i) { blas.i8(xi8[i % ra8].p, wi8[i % r8].p, y32.p, M, N, K); });
        row.fp8 = timer.median_us([&](int i) { blas.fp8(xfp8[i % ra8].p, wfp8[i % r8].p, y16.p, M, N, K); });
        row.valid = "w4a4 " + c4.str() + " (" + std::to_string(c4.exact) + " exact), w8a8 " + c8.str();
        if (cs8.samples) row.valid += ", w4a4-s8 " + cs8.str() + " (" + std::to_string(cs8.exact) + " exact)";
        rows.push_back(row);
        const double ops = 2.0 * M * N * K;
        std::printf("N %5d K %5d M %4d | ours %9.2f us %-31s | fp16 %9.2f i8 %9.2f fp8 %9.2f w8a8 %9.2f w4a16 %9.2f | "
                    "x%.2f fp16 x%.2f i8 | %6.1f TOPS %5.1f%% i8peak | %6.0f GB/s %5.1f%% hbm | %s\n",
                    N, K, M, row.ours, row.kernel.c_str(), row.f16, row.i8, row.fp8, row.w8a8, row.w4a16,
                    row.f16 / row.ours, row.i8 / row.ours, ops / row.ours * 1e-6, 100.0 * ops / row.ours * 1e-6 / i8_peak,
                    row.bytes / row.ours * 1e-3, 100.0 * row.bytes / row.ours * 1e-3 / hbm_gbs, row.valid.c_str());
        if (variants && M >= 64)
          std::printf("    variants: wgmma bn128 %.2f us, wgmma bn64 %.2f us, mma_s8 %.2f us\n", row.bn128, row.bn64,
                      row.mma);
        if (!decode_variants.empty())
          std::printf("    decode variants (us): mma_s8 %.2f; stream %s\n", row.mma, decode_variants.c_str());
        if (!tile_times.empty())
          std::printf("    packed-layout auto %.2f us; int8-layout auto %.2f us; tiles (us): %s\n", row.packed_auto,
                      row.swapab_auto, tile_times.c_str());
        std::fflush(stdout);
      }
    }

    // ---- summary table (markdown)
    std::printf("\n%s", bench::markdown_header({"N x K", "M", "W4A4 us", "kernel", "cuBLAS FP16 us",
                                                "cuBLASLt INT8 us", "cuBLASLt FP8 us", "W8A8 us", "W4A16 us",
                                                "vs FP16", "vs INT8", "TOPS", "% INT8 peak", "GB/s", "% HBM"})
                            .c_str());
    int misses = 0;
    for (const Row& r : rows) {
      const double ops = 2.0 * r.m * r.n * r.k;
      const double vs16 = r.f16 / r.ours, vs8 = r.i8 / r.ours;
      const bool miss = (r.m >= 1024 && (vs16 < 1.5 || vs8 < 1.2)) || (r.m <= 16 && vs16 < 3.0);
      misses += miss;
      char w416[32] = "-";
      if (r.w4a16 > 0) std::snprintf(w416, sizeof w416, "%.1f", r.w4a16);
      std::printf("| %dx%d | %d | %.1f | %s | %.1f | %.1f | %.1f | %.1f | %s | %.2f%s | %.2f | %.0f | %.1f | %.0f | %.1f |\n",
                  r.n, r.k, r.m, r.ours, r.kernel.c_str(), r.f16, r.i8, r.fp8, r.w8a8, w416, vs16, miss ? " (miss)" : "",
                  vs8, ops / r.ours * 1e-6, 100.0 * ops / r.ours * 1e-6 / i8_peak, r.bytes / r.ours * 1e-3,
                  100.0 * r.bytes / r.ours * 1e-3 / hbm_gbs);
    }
    std::printf("\n# targets (M >= 1024: >= 1.5x FP16 and >= 1.2x INT8; M <= 16: >= 3x FP16): %d rows miss\n", misses);
    if (csv_path) {
      FILE* f = std::fopen(csv_path, "w");
      if (f) {
        std::fprintf(f, "n,k,m,kernel,ours_us,f16_us,i8_us,fp8_us,w8a8_us,w4a16_us,bn128_us,bn64_us,mma_us,"
                        "packed_auto_us,s8_auto_us,bytes,tiles,valid\n");
        for (const Row& r : rows)
          std::fprintf(f, "%d,%d,%d,\"%s\",%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%.0f,\"%s\",\"%s\"\n",
                       r.n, r.k, r.m, r.kernel.c_str(), r.ours, r.f16, r.i8, r.fp8, r.w8a8, r.w4a16, r.bn128, r.bn64,
                       r.mma, r.packed_auto, r.swapab_auto, r.bytes, r.tiles.c_str(), r.valid.c_str());
        std::fclose(f);
      }
    }
    bool all_valid = true;
    for (const Row& r : rows) all_valid &= r.valid.find("FAIL") == std::string::npos;
    ATOM_CUDA_CHECK(cudaStreamDestroy(stream));
    return all_valid ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gemm: %s\n", e.what());
    return 1;
  }
}
