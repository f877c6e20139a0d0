// Fused activation quantizers on Llama-2-7B / Llama-3-8B shapes (hidden 4096; intermediate 11008 /
// 14336) at M = 1 .. 8192 tokens: Atom rows (128 INT8 outliers, INT4 groups of 128, clip 0.9) and W8A8 rows
// (every channel INT8, one scale per token).
// Each shape is validated first (sampled rows bit-exact against quant::quantize_activations of the
// values the kernel quantized), then timed: cudaEvent per launch, median of 30, inputs/outputs replicated
// and rotated so that at least 512 MB are touched (nothing served from L2). Bandwidth = bytes read +
// written over time, against a device-to-device copy measured in the same run.
// --slices: every shape at decode sizes once per row-slice count (1, 2, 4, 8 and the kernels' default),
// the table the default rule is read from.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../common/bench_harness.cuh"
#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/quantize/quantize_act.h"
#include "common/half.h"
#include "format/format.h"

using namespace atom;
using namespace atom::cuda;
using bench::DeviceBuffer;

namespace {

enum class Kernel { kRmsNormResidual, kReorder, kSiluMul };
const char* kernel_name(Kernel k) {
  return k == Kernel::kRmsNormResidual ? "rmsnorm+residual" : k == Kernel::kReorder ? "reorder" : "silu*up";
}

constexpr int kAtomOutliers = 128, kGroup = 128;
constexpr float kClip = 0.9f;

struct Result {
  double us, gbps;
  bool ok;
};

Result run(Kernel kernel, int m, int k, int kOutliers, std::mt19937& rng, int slices = 0) {
  const int kn = k - kOutliers, groups = kn / kGroup;
  const int in_cols = kernel == Kernel::kSiluMul ? 2 * k : k;  // silu: [gate | up] rows
  // Per-replica bytes actually moved.
  double bytes_in = 2.0 * in_cols, bytes_out = kn / 2.0 + 2.0 * groups + kOutliers + 2.0;
  if (kernel == Kernel::kRmsNormResidual)
    bytes_in += 2.0 * k, bytes_out += 2.0 * k;  // residual read + written
  const double bytes = (bytes_in + bytes_out) * m;
  const int replicas = bench::rotation_count(bytes, 512e6, 64);
  const std::size_t rows = static_cast<std::size_t>(m) * replicas;

  DeviceBuffer<std::uint16_t> input(rows * in_cols), residual(rows * k),
      debug(static_cast<std::size_t>(m) * k);
  DeviceBuffer<std::uint8_t> packed(rows * (kn / 2));
  DeviceBuffer<std::uint16_t> scales(rows * groups), outlier_scales(rows);
  DeviceBuffer<std::int8_t> outliers(rows * kOutliers);
  DeviceBuffer<std::uint16_t> gamma(k);
  DeviceBuffer<std::int32_t> perm(k);
  {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<std::uint16_t> h(static_cast<std::size_t>(m) * in_cols);
    for (auto& x : h) x = fp32_to_fp16(normal(rng));
    for (int r = 0; r < replicas; ++r) {
      ATOM_CUDA_CHECK(cudaMemcpy(input.p + static_cast<std::size_t>(r) * h.size(), h.data(), h.size() * 2,
                                 cudaMemcpyHostToDevice));
    }
    ATOM_CUDA_CHECK(cudaMemset(residual.p, 0x30, rows * k * 2));  // fp16 0x3030 = 0.13
    std::vector<std::uint16_t> g(k);
    for (auto& x : g) x = fp32_to_fp16(0.5f + std::fabs(normal(rng)));
    gamma.upload(g);
    std::vector<std::int32_t> pm(k);
    std::iota(pm.begin(), pm.end(), 0);
    std::shuffle(pm.begin(), pm.end(), rng);
    perm.upload(pm);
  }
  const auto launch = [&](int r, bool with_debug) {
    QuantizedActOut out;
    out.packed = packed.p + static_cast<std::size_t>(r) * m * (kn / 2);
    out.packed_stride = kn / 2;
    out.scales = scales.p + static_cast<std::size_t>(r) * m * groups;
    out.scale_token_stride = groups;
    out.scale_group_stride = 1;
    out.outliers = outliers.p + static_cast<std::size_t>(r) * m * kOutliers;
    out.outlier_stride = kOutliers;
    out.outlier_scales = outlier_scales.p + static_cast<std::size_t>(r) * m;
    const ActQuantLayout layout{k, kOutliers, kGroup, ActFormat::kInt4, kClip};
    const std::uint16_t* in = input.p + static_cast<std::size_t>(r) * m * in_cols;
    if (kernel == Kernel::kRmsNormResidual) {
      RmsNormQuantParams p;
      p.num_tokens = m;
      p.layout = layout;
      p.input = in;
      p.input_stride = k;
      p.residual = p.residual_out = residual.p + static_cast<std::size_t>(r) * m * k;
      p.residual_stride = p.residual_out_stride = k;
      p.weight = gamma.p;
      p.perm = perm.p;
      p.out = out;
      p.normed_out = with_debug ? debug.p : nullptr;
      p.normed_stride = k;
      p.slices = slices;
      rmsnorm_quantize(p, nullptr);
    } else if (kernel == Kernel::kReorder) {
      ReorderQuantParams p;
      p.num_tokens = m;
      p.layout = layout;
      p.input = in;
      p.input_stride = k;
      p.perm = perm.p;
      p.out = out;
      p.slices = slices;
      reorder_quantize(p, nullptr);
    } else {
      SiluMulQuantParams p;
      p.num_tokens = m;
      p.layout = layout;
      p.gate = in;
      p.gate_stride = 2 * k;
      p.up = in + k;
      p.up_stride = 2 * k;
      p.out = out;
      p.act_out = with_debug ? debug.p : nullptr;
      p.act_stride = k;
      p.slices = slices;
      silu_mul_quantize(p, nullptr);
    }
  };

  // Validate replica 0 (sampled rows).
  launch(0, true);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  bool ok = true;
  {
    const std::vector<int> sample = {0, m / 2, m - 1};
    std::vector<float> values(sample.size() * k);
    const auto dbg = debug.download(static_cast<std::size_t>(m) * k);
    const auto in = input.download(static_cast<std::size_t>(m) * in_cols);
    const auto pm = perm.download(k);
    std::vector<std::int32_t> id(k);
    std::iota(id.begin(), id.end(), 0);
    for (std::size_t s = 0; s < sample.size(); ++s) {
      for (int j = 0; j < k; ++j) {
        values[s * k + j] = kernel == Kernel::kReorder
                                ? fp16_to_fp32(in[static_cast<std::size_t>(sample[s]) * k + j])
                                : fp16_to_fp32(dbg[static_cast<std::size_t>(sample[s]) * k + j]);
      }
    }
    const auto ref = quant::quantize_activations(values, static_cast<std::int64_t>(sample.size()),
                                                 kernel == Kernel::kReorder ? pm : id, kOutliers, kGroup,
                                                 quant::NumberFormat::kInt4, kClip);
    const auto pk = packed.download(static_cast<std::size_t>(m) * (kn / 2));
    const auto sc = scales.download(static_cast<std::size_t>(m) * groups);
    const auto ol = outliers.download(static_cast<std::size_t>(m) * kOutliers);
    const auto os = outlier_scales.download(m);
    for (std::size_t s = 0; s < sample.size(); ++s) {
      const std::size_t r = sample[s];
      ok = ok && std::equal(ref.packed.begin() + s * (kn / 2), ref.packed.begin() + (s + 1) * (kn / 2),
                            pk.begin() + r * (kn / 2));
      ok = ok && std::equal(ref.scales.begin() + s * groups, ref.scales.begin() + (s + 1) * groups,
                            sc.begin() + r * groups);
      ok = ok && std::equal(ref.outliers.begin() + s * kOutliers, ref.outliers.begin() + (s + 1) * kOutliers,
                            ol.begin() + r * kOutliers);
      ok = ok && ref.outlier_scales[s] == os[r];
    }
  }

  const double ms = bench::event_median_ms([&](int it) { launch(it % replicas, false); }, 33, 3);
  const double sec = ms * 1e-3;
  return {sec * 1e6, bytes / sec / 1e9, ok};
}

}  // namespace

int main(int argc, char** argv) {
  const bool profile = argc > 1 && std::string(argv[1]) == "--profile";  // M = 8192 only (for ncu)
  const bool slice_sweep = argc > 1 && std::string(argv[1]) == "--slices";
  const DeviceInfo info = current_device_info();
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  std::printf("device: %s (sm_%d%d, %d SMs), CUDA runtime %d\n", info.name, info.sm_major, info.sm_minor,
              info.num_sms, runtime);
  const double copy_gbps = bench::copy_bandwidth_gbps();
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n", copy_gbps);
  std::printf("atom: INT4 groups of %d (clip %.2f) + %d INT8 outliers; w8a8: all INT8; time us (GB/s, %% of copy)\n\n",
              kGroup, kClip, kAtomOutliers);
  std::mt19937 rng(4321);
  const std::vector<int> ms =
      profile ? std::vector<int>{8192} : std::vector<int>{1, 8, 16, 64, 256, 1024, 4096, 8192};
  struct Shape {
    const char* model;
    Kernel kernel;
    int k;
    bool w8a8;
  };
  const Shape shapes[] = {{"Llama-2-7B / Llama-3-8B", Kernel::kRmsNormResidual, 4096, false},
                          {"Llama-2-7B / Llama-3-8B", Kernel::kReorder, 4096, false},
                          {"Llama-2-7B", Kernel::kSiluMul, 11008, false},
                          {"Llama-3-8B", Kernel::kSiluMul, 14336, false},
                          {"Llama-2-7B / Llama-3-8B", Kernel::kRmsNormResidual, 4096, true},
                          {"Llama-2-7B", Kernel::kSiluMul, 11008, true}};
  bool all_ok = true;
  if (slice_sweep) {
    const int counts[] = {1, 2, 4, 8, 0};
    std::printf("time us per row-slice count (0 = default); ratio = default / 1 slice\n");
    std::printf("%-17s %-5s %-24s %6s %5s", "kernel", "rows", "model", "K", "M");
    for (int c : counts) std::printf(" | %8s", c == 0 ? "default" : ("s=" + std::to_string(c)).c_str());
    std::printf(" | %5s\n", "ratio");
    for (const Shape& s : shapes) {
      for (int m : {1, 8, 16, 64, 256}) {
        std::printf("%-17s %-5s %-24s %6d %5d", kernel_name(s.kernel), s.w8a8 ? "w8a8" : "atom", s.model, s.k, m);
        double one = 0, dflt = 0;
        for (int c : counts) {
          const Result r = run(s.kernel, m, s.k, s.w8a8 ? s.k : kAtomOutliers, rng, c);
          all_ok = all_ok && r.ok;
          if (c == 1) one = r.us;
          if (c == 0) dflt = r.us;
          std::printf(" | %7.1f%s", r.us, r.ok ? " " : "!");
          std::fflush(stdout);
        }
        std::printf(" | %5.2f\n", dflt / one);
      }
    }
    std::printf(all_ok ? "all validated (bit-exact on sampled rows)\n" : "VALIDATION FAILED (marked !)\n");
    return all_ok ? 0 : 1;
  }
  std::printf("%-17s %-5s %-24s %6s", "kernel", "rows", "model", "K");
  for (int m : ms) std::printf(" | %21s", ("M=" + std::to_string(m)).c_str());
  std::printf("\n");
  for (const Shape& s : shapes) {
    std::printf("%-17s %-5s %-24s %6d", kernel_name(s.kernel), s.w8a8 ? "w8a8" : "atom", s.model, s.k);
    for (int m : ms) {
      const Result r = run(s.kernel, m, s.k, s.w8a8 ? s.k : kAtomOutliers, rng);
      all_ok = all_ok && r.ok;
      std::printf(" | %7.1f (%5.0f, %3.0f%%)%s", r.us, r.gbps, 100.0 * r.gbps / copy_gbps, r.ok ? "" : "!");
      std::fflush(stdout);
    }
    std::printf("\n");
  }
  std::printf(all_ok ? "all shapes validated (bit-exact on sampled rows)\n"
                     : "VALIDATION FAILED (marked !)\n");
  return all_ok ? 0 : 1;
}
