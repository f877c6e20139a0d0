// Decode attention over paged KV caches: FP16 vs UINT8 vs UINT4, batch x context grid, MHA 32x128 and
// GQA 32/8 (Llama-3). Each configuration is validated (two sequences x two heads against an fp64
// reference on the downloaded pages) and then timed: cudaEvent around each launch, median of 30, the
// cache replicated and rotated until at least 512 MB are touched so that no run is served from L2.
// Bandwidth is bytes moved (K/V codes + scale/min + q + out) over time, against a device-to-device
// copy measured in the same run (bytes read + written).
// Usage: bench_attention [--quick | --headline | --profile | --groups]
//   --quick: batch {1,128} x context {1024}; --headline: batch 128 x context 1024 only (tuning sweeps);
//   --profile: MHA batch 128 x context 1024 only, no prefill (one launch each under ncu);
//   --groups: only the UINT4 cache with one (scale, min) per head vs per 32 channels (kv_group_size 32, which
//   decodes on the CUDA-core kernel), context 1024 (also printed after the full grid)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../common/bench_harness.cuh"
#include "backend/cuda/attention/attention_kernels.h"
#include "backend/cuda/common/cuda_check.h"
#include "common/half.h"
#include "format/format.h"

using namespace atom;
using namespace atom::cuda;
using bench::DeviceBuffer;

namespace {

__device__ __forceinline__ std::uint32_t hash32(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<std::uint32_t>(x);
}

// Random bytes (quantized codes) or random fp16 pairs in [-2, 2) (fp16 rows).
__global__ void fill_codes(std::uint32_t* p, std::size_t n, std::uint64_t seed, bool halves) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::uint32_t h = hash32(seed * 0x9E3779B97F4A7C15ULL + i);
    if (halves) {
      const __half a = __float2half_rn((h & 0xFFFF) / 16384.0f - 2.0f);
      const __half b = __float2half_rn((h >> 16) / 16384.0f - 2.0f);
      p[i] = static_cast<std::uint32_t>(__half_as_ushort(a)) |
             (static_cast<std::uint32_t>(__half_as_ushort(b)) << 16);
    } else {
      p[i] = h;
    }
  }
}

// scale in [0.5, 1.5) * 2 / qmax, lo = -scale * qmax / 2 (values roughly in [-1.5, 1.5]).
__global__ void fill_params(std::uint32_t* p, std::size_t n, std::uint64_t seed, float qmax) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::uint32_t h = hash32(seed * 0x9E3779B97F4A7C15ULL + i);
    const __half scale = __float2half_rn((0.5f + (h & 0xFFFF) / 65536.0f) * 2.0f / qmax);
    const __half lo = __float2half_rn(-__half2float(scale) * qmax * 0.5f);
    p[i] = static_cast<std::uint32_t>(__half_as_ushort(scale)) |
           (static_cast<std::uint32_t>(__half_as_ushort(lo)) << 16);
  }
}

struct Result {
  double us = 0, gbps = 0, err = 0;
  bool ok = false;
};

constexpr int kHeadDim = 128, kPageSize = 16;

// group_size: channels per (scale, min) word of a quantized row (0: the head).
Result run_config(KvDtype dtype, int hq, int hkv, int batch, int ctx, std::mt19937& rng, int group_size = 0) {
  const int pages_per_seq = ctx / kPageSize;
  PagedKvCache c;
  c.dtype = dtype;
  c.group_size = group_size;
  c.page_size = kPageSize;
  c.num_kv_heads = hkv;
  c.head_dim = kHeadDim;
  c.num_pages = batch * pages_per_seq;
  const std::size_t one_bytes = c.codes_bytes() * 2 + c.params_bytes() * 2;
  const int replicas = bench::rotation_count(static_cast<double>(one_bytes), 512.0 * (1 << 20), 64);
  c.num_pages *= replicas;
  DeviceBuffer<std::uint8_t> k_codes(c.codes_bytes()), v_codes(c.codes_bytes());
  const bool quantized = dtype != KvDtype::kF16;
  const int groups = c.groups();
  const std::size_t param_words = quantized ? c.params_bytes() / 4 : 1;
  DeviceBuffer<std::uint32_t> k_params(param_words), v_params(param_words);
  const float qmax = dtype == KvDtype::kU4 ? 15.0f : 255.0f;
  fill_codes<<<4096, 256>>>(reinterpret_cast<std::uint32_t*>(k_codes.p), c.codes_bytes() / 4, 1, !quantized);
  fill_codes<<<4096, 256>>>(reinterpret_cast<std::uint32_t*>(v_codes.p), c.codes_bytes() / 4, 2, !quantized);
  if (quantized) {
    fill_params<<<4096, 256>>>(k_params.p, param_words, 3, qmax);
    fill_params<<<4096, 256>>>(v_params.p, param_words, 4, qmax);
  }
  ATOM_CUDA_CHECK_LAUNCH();
  c.k_codes = k_codes.p;
  c.v_codes = v_codes.p;
  c.k_params = quantized ? k_params.p : nullptr;
  c.v_params = quantized ? v_params.p : nullptr;

  // Replica r uses pages [r * batch * pages_per_seq, ...), scattered by a random permutation.
  std::vector<std::int32_t> tables(static_cast<std::size_t>(replicas) * batch * pages_per_seq);
  for (int r = 0; r < replicas; ++r) {
    std::vector<std::int32_t> pages(static_cast<std::size_t>(batch) * pages_per_seq);
    std::iota(pages.begin(), pages.end(), r * batch * pages_per_seq);
    std::shuffle(pages.begin(), pages.end(), rng);
    std::copy(pages.begin(), pages.end(), tables.begin() + static_cast<std::ptrdiff_t>(r) * pages.size());
  }
  DeviceBuffer<std::int32_t> d_tables(tables.size()), d_lens(batch);
  d_tables.upload(tables);
  d_lens.upload(std::vector<std::int32_t>(batch, ctx));
  std::vector<std::uint16_t> q(static_cast<std::size_t>(batch) * hq * kHeadDim);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& x : q) x = fp32_to_fp16(normal(rng));
  DeviceBuffer<std::uint16_t> d_q(q.size()), d_out(q.size());
  d_q.upload(q);

  DecodeParams p;
  p.cache = c;
  p.batch = batch;
  p.num_qo_heads = hq;
  p.q = d_q.p;
  p.q_token_stride = static_cast<std::int64_t>(hq) * kHeadDim;
  p.q_head_stride = kHeadDim;
  p.out = d_out.p;
  p.out_token_stride = p.q_token_stride;
  p.out_head_stride = kHeadDim;
  p.kv_lens = d_lens.p;
  p.block_table_stride = pages_per_seq;
  p.max_kv_len = ctx;
  p.sm_scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  const std::size_t ws = decode_workspace_bytes(p);
  DeviceBuffer<std::uint8_t> workspace(std::max<std::size_t>(ws, 1));
  p.workspace = workspace.p;
  p.workspace_bytes = ws;

  Result res;
  // Validate replica 0 on two sequences x two query heads.
  p.block_tables = d_tables.p;
  ATOM_CUDA_CHECK(cudaMemset(d_out.p, 0xFF, q.size() * 2));
  attention_decode(p, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<std::uint16_t> out(q.size());
  ATOM_CUDA_CHECK(cudaMemcpy(out.data(), d_out.p, out.size() * 2, cudaMemcpyDeviceToHost));
  const int row_bytes = kv_row_bytes(dtype, kHeadDim);
  double worst = 0;
  for (int b : {0, batch - 1}) {
    for (int h : {0, hq - 1}) {
      const int kvh = h / (hq / hkv);
      std::vector<double> kd(static_cast<std::size_t>(ctx) * kHeadDim), vd(kd.size());
      for (int which = 0; which < 2; ++which) {
        std::vector<std::uint8_t> codes(static_cast<std::size_t>(kPageSize) * row_bytes);
        std::vector<std::uint32_t> params(static_cast<std::size_t>(kPageSize) * groups);
        for (int pg = 0; pg < pages_per_seq; ++pg) {
          const std::size_t first_row =
              (static_cast<std::size_t>(tables[static_cast<std::size_t>(b) * pages_per_seq + pg]) * hkv +
               kvh) *
              kPageSize;
          const std::uint8_t* src =
              static_cast<const std::uint8_t*>(which == 0 ? c.k_codes : c.v_codes) + first_row * row_bytes;
          ATOM_CUDA_CHECK(cudaMemcpy(codes.data(), src, codes.size(), cudaMemcpyDeviceToHost));
          if (quantized) {
            ATOM_CUDA_CHECK(cudaMemcpy(params.data(), (which == 0 ? c.k_params : c.v_params) + first_row * groups,
                                       params.size() * 4, cudaMemcpyDeviceToHost));
          }
          for (int t = 0; t < kPageSize; ++t) {
            for (int i = 0; i < kHeadDim; ++i) {
              double x;
              if (dtype == KvDtype::kF16) {
                std::uint16_t bits;
                std::memcpy(&bits, &codes[(static_cast<std::size_t>(t) * kHeadDim + i) * 2], 2);
                x = fp16_to_fp32(bits);
              } else {
                const std::uint8_t code = dtype == KvDtype::kU8
                                              ? codes[t * row_bytes + i]
                                              : ((codes[t * row_bytes + i / 2] >> (4 * (i % 2))) & 0xF);
                const std::uint32_t word = params[static_cast<std::size_t>(t) * groups + i * groups / kHeadDim];
                x = quant::dequantize_asymmetric_value(code, word & 0xFFFF, word >> 16);
              }
              (which == 0 ? kd : vd)[(static_cast<std::size_t>(pg) * kPageSize + t) * kHeadDim + i] = x;
            }
          }
        }
      }
      const std::uint16_t* qh = &q[(static_cast<std::size_t>(b) * hq + h) * kHeadDim];
      std::vector<double> s(ctx);
      double mx = -INFINITY, l = 0;
      for (int t = 0; t < ctx; ++t) {
        double dot = 0;
        for (int i = 0; i < kHeadDim; ++i)
          dot += fp16_to_fp32(qh[i]) * kd[static_cast<std::size_t>(t) * kHeadDim + i];
        s[t] = dot * p.sm_scale;
        mx = std::max(mx, s[t]);
      }
      for (int t = 0; t < ctx; ++t) l += (s[t] = std::exp(s[t] - mx));
      bench::RelErrorNorm e;
      for (int i = 0; i < kHeadDim; ++i) {
        double want = 0;
        for (int t = 0; t < ctx; ++t) want += s[t] / l * vd[static_cast<std::size_t>(t) * kHeadDim + i];
        e.add(fp16_to_fp32(out[(static_cast<std::size_t>(b) * hq + h) * kHeadDim + i]), want);
      }
      worst = std::max(worst, e.rel());
    }
  }
  res.err = worst;
  res.ok = worst < 2e-3;

  const double ms = bench::event_median_ms(
      [&](int it) {
        p.block_tables = d_tables.p + static_cast<std::size_t>(it % replicas) * batch * pages_per_seq;
        attention_decode(p, nullptr);
      },
      33, 3);
  const double sec = ms * 1e-3;
  const double rows = static_cast<double>(batch) * ctx * hkv;
  const double bytes = rows * 2 * (row_bytes + (quantized ? 4.0 * groups : 0.0)) + 2.0 * q.size() * 2;
  res.us = sec * 1e6;
  res.gbps = bytes / sec / 1e9;
  return res;
}

// Causal prefill of one 2048-token sequence (no prefix), 32x128 MHA: time and tensor-core TFLOP/s;
// validated on three query rows x two heads.
void run_prefill_bench(KvDtype dtype, int len) {
  constexpr int kHeads = 32;
  PagedKvCache c;
  c.dtype = dtype;
  c.page_size = kPageSize;
  c.num_kv_heads = kHeads;
  c.head_dim = kHeadDim;
  c.num_pages = len / kPageSize;
  const bool quantized = dtype != KvDtype::kF16;
  DeviceBuffer<std::uint8_t> k_codes(c.codes_bytes()), v_codes(c.codes_bytes());
  DeviceBuffer<std::uint32_t> k_params(quantized ? c.rows() : 1), v_params(quantized ? c.rows() : 1);
  const float qmax = dtype == KvDtype::kU4 ? 15.0f : 255.0f;
  fill_codes<<<4096, 256>>>(reinterpret_cast<std::uint32_t*>(k_codes.p), c.codes_bytes() / 4, 5, !quantized);
  fill_codes<<<4096, 256>>>(reinterpret_cast<std::uint32_t*>(v_codes.p), c.codes_bytes() / 4, 6, !quantized);
  if (quantized) {
    fill_params<<<4096, 256>>>(k_params.p, c.rows(), 7, qmax);
    fill_params<<<4096, 256>>>(v_params.p, c.rows(), 8, qmax);
  }
  ATOM_CUDA_CHECK_LAUNCH();
  c.k_codes = k_codes.p;
  c.v_codes = v_codes.p;
  c.k_params = quantized ? k_params.p : nullptr;
  c.v_params = quantized ? v_params.p : nullptr;
  std::vector<std::int32_t> table(c.num_pages);
  std::iota(table.begin(), table.end(), 0);
  DeviceBuffer<std::int32_t> d_table(table.size()), d_len(1), d_indptr(2);
  d_table.upload(table);
  d_len.upload({len});
  d_indptr.upload({0, len});
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::uint16_t> q(static_cast<std::size_t>(len) * kHeads * kHeadDim);
  for (auto& x : q) x = fp32_to_fp16(normal(rng));
  DeviceBuffer<std::uint16_t> d_q(q.size()), d_out(q.size());
  d_q.upload(q);
  PrefillParams p;
  p.cache = c;
  p.batch = 1;
  p.num_qo_heads = kHeads;
  p.max_q_len = len;
  p.q = d_q.p;
  p.q_token_stride = kHeads * kHeadDim;
  p.q_head_stride = kHeadDim;
  p.out = d_out.p;
  p.out_token_stride = kHeads * kHeadDim;
  p.out_head_stride = kHeadDim;
  p.qo_indptr = d_indptr.p;
  p.kv_lens = d_len.p;
  p.block_tables = d_table.p;
  p.block_table_stride = c.num_pages;
  p.sm_scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  ATOM_CUDA_CHECK(cudaMemset(d_out.p, 0xFF, q.size() * 2));
  attention_prefill(p, nullptr);
  ATOM_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<std::uint16_t> out(q.size());
  ATOM_CUDA_CHECK(cudaMemcpy(out.data(), d_out.p, out.size() * 2, cudaMemcpyDeviceToHost));
  // Reference rows (pages are in order: token t is row t of the pool for head h).
  const int row_bytes = kv_row_bytes(dtype, kHeadDim);
  std::vector<std::uint8_t> kc(c.codes_bytes()), vc(c.codes_bytes());
  std::vector<std::uint32_t> kp(quantized ? c.rows() : 0), vp(kp.size());
  ATOM_CUDA_CHECK(cudaMemcpy(kc.data(), c.k_codes, kc.size(), cudaMemcpyDeviceToHost));
  ATOM_CUDA_CHECK(cudaMemcpy(vc.data(), c.v_codes, vc.size(), cudaMemcpyDeviceToHost));
  if (quantized) {
    ATOM_CUDA_CHECK(cudaMemcpy(kp.data(), c.k_params, kp.size() * 4, cudaMemcpyDeviceToHost));
    ATOM_CUDA_CHECK(cudaMemcpy(vp.data(), c.v_params, vp.size() * 4, cudaMemcpyDeviceToHost));
  }
  const auto value = [&](const std::vector<std::uint8_t>& codes, const std::vector<std::uint32_t>& params,
                         int t, int h, int i) {
    const std::size_t row =
        (static_cast<std::size_t>(t / kPageSize) * kHeads + h) * kPageSize + t % kPageSize;
    if (!quantized) {
      std::uint16_t bits;
      std::memcpy(&bits, &codes[(row * kHeadDim + i) * 2], 2);
      return static_cast<double>(fp16_to_fp32(bits));
    }
    const std::uint8_t code = dtype == KvDtype::kU8
                                  ? codes[row * row_bytes + i]
                                  : ((codes[row * row_bytes + i / 2] >> (4 * (i % 2))) & 0xF);
    return static_cast<double>(
        quant::dequantize_asymmetric_value(code, params[row] & 0xFFFF, params[row] >> 16));
  };
  double worst = 0;
  for (int row : {0, len / 2 + 3, len - 1}) {
    for (int h : {0, kHeads - 1}) {
      std::vector<double> s(row + 1);
      double mx = -INFINITY, l = 0;
      for (int t = 0; t <= row; ++t) {
        double dot = 0;
        for (int i = 0; i < kHeadDim; ++i)
          dot += fp16_to_fp32(q[(static_cast<std::size_t>(row) * kHeads + h) * kHeadDim + i]) *
                 value(kc, kp, t, h, i);
        s[t] = dot * p.sm_scale;
        mx = std::max(mx, s[t]);
      }
      for (int t = 0; t <= row; ++t) l += (s[t] = std::exp(s[t] - mx));
      bench::RelErrorNorm e;
      for (int i = 0; i < kHeadDim; ++i) {
        double want = 0;
        for (int t = 0; t <= row; ++t) want += s[t] / l * value(vc, vp, t, h, i);
        e.add(fp16_to_fp32(out[(static_cast<std::size_t>(row) * kHeads + h) * kHeadDim + i]), want);
      }
      worst = std::max(worst, e.rel());
    }
  }
  const double ms = bench::event_median_ms([&](int) { attention_prefill(p, nullptr); }, 13, 3);
  const double sec = ms * 1e-3;
  const double flops =
      4.0 * kHeads * kHeadDim * (static_cast<double>(len) * (len + 1) / 2);  // causal QK^T + PV
  std::printf("prefill %-5s len %d, 32x128 causal: %8.1f us, %6.1f TFLOP/s, max rel err %.1e%s\n",
              kv_dtype_name(dtype), len, sec * 1e6, flops / sec / 1e12, worst,
              worst < 6e-3 ? "" : "  VALIDATION FAILED");
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const bool profile = argc > 1 && std::strcmp(argv[1], "--profile") == 0;  // MHA b128 ctx1024 only (ncu)
  const bool headline = argc > 1 && std::strcmp(argv[1], "--headline") == 0;
  const bool groups_only = argc > 1 && std::strcmp(argv[1], "--groups") == 0;
  const DeviceInfo info = current_device_info();
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  std::printf("device: %s (sm_%d%d, %d SMs, %.1f GiB), CUDA runtime %d, driver %d\n", info.name,
              info.sm_major, info.sm_minor, info.num_sms, info.memory_gib, runtime, driver);
  const double copy_gbps = bench::copy_bandwidth_gbps();
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n\n", copy_gbps);

  std::mt19937 rng(12345);
  const std::vector<int> batches = profile || headline ? std::vector<int>{128}
                                   : quick             ? std::vector<int>{1, 128}
                                                       : std::vector<int>{1, 16, 64, 128, 256};
  const std::vector<int> contexts =
      quick || profile || headline ? std::vector<int>{1024} : std::vector<int>{512, 1024, 4096};
  struct Heads {
    int qo, kv;
    const char* name;
  };
  bool all_ok = true;
  for (Heads heads : {Heads{32, 32, "MHA 32x128"}, Heads{32, 8, "GQA 32/8 x128"}}) {
    if (profile && heads.kv != 32) continue;
    if (groups_only) break;
    std::printf("== decode attention, %s, page %d; time us (GB/s, %% of copy)\n", heads.name, kPageSize);
    std::printf("%5s %6s | %22s | %22s | %22s | %7s %7s | %s\n", "batch", "ctx", "FP16", "UINT8", "UINT4",
                "u4/f16", "u4/u8", "max rel err f16/u8/u4");
    for (int batch : batches) {
      for (int ctx : contexts) {
        Result r[3];
        const KvDtype dtypes[3] = {KvDtype::kF16, KvDtype::kU8, KvDtype::kU4};
        for (int i = 0; i < 3; ++i) {
          r[i] = run_config(dtypes[i], heads.qo, heads.kv, batch, ctx, rng);
          all_ok = all_ok && r[i].ok;
        }
        char cell[3][64];
        for (int i = 0; i < 3; ++i) {
          std::snprintf(cell[i], sizeof cell[i], "%8.1f (%5.0f, %3.0f%%)", r[i].us, r[i].gbps,
                        100.0 * r[i].gbps / copy_gbps);
        }
        std::printf("%5d %6d | %s | %s | %s | %6.2fx %6.2fx | %.1e %.1e %.1e%s\n", batch, ctx, cell[0],
                    cell[1], cell[2], r[0].us / r[2].us, r[1].us / r[2].us, r[0].err, r[1].err, r[2].err,
                    (r[0].ok && r[1].ok && r[2].ok) ? "" : "  VALIDATION FAILED");
        std::fflush(stdout);
      }
    }
    std::printf("\n");
  }
  if (!profile && !headline) {
    std::printf("== decode attention, UINT4 cache, one (scale, min) per head vs per 32 channels, context 1024; "
                "time us\n%-14s %5s | %9s | %9s | %7s | %s\n", "heads", "batch", "per head", "g32", "g32/head",
                "max rel err head/g32");
    for (Heads heads : {Heads{32, 32, "MHA 32x128"}, Heads{32, 8, "GQA 32/8 x128"}}) {
      for (int batch : {1, 16, 64, 128, 256}) {
        const Result head = run_config(KvDtype::kU4, heads.qo, heads.kv, batch, 1024, rng);
        const Result g32 = run_config(KvDtype::kU4, heads.qo, heads.kv, batch, 1024, rng, 32);
        all_ok = all_ok && head.ok && g32.ok;
        std::printf("%-14s %5d | %9.1f | %9.1f | %6.2fx | %.1e %.1e%s\n", heads.name, batch, head.us, g32.us,
                    g32.us / head.us, head.err, g32.err, head.ok && g32.ok ? "" : "  VALIDATION FAILED");
        std::fflush(stdout);
      }
    }
    std::printf("\n");
  }
  if (!profile && !headline && !groups_only) {
    for (KvDtype dtype : {KvDtype::kF16, KvDtype::kU8, KvDtype::kU4}) run_prefill_bench(dtype, 2048);
  }
  std::printf(all_ok ? "all decode configurations validated\n"
                     : "SOME DECODE CONFIGURATIONS FAILED VALIDATION\n");
  return all_ok ? 0 : 1;
}
