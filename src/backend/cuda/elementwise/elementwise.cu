// fp16 embedding lookup, RMSNorm, SiLU * up and deterministic fills (see elementwise.h). All memory-bound:
// 16-byte loads and stores, several loads in flight per lane before the first use.
//   embedding / silu_mul: a team of 1, 2, 4 or 8 warps per row (the fewest with at most 4 chunks of 8 per
//     lane), no barriers; grid-stride over rows.
//   rmsnorm: the sum of squares must come out in rmsnorm_quantize's order (quantize_act.cu, block-per-token
//     mode): 128 "virtual lanes", lane t accumulating chunks 8t + 1024i in order with fma, each warp's 32
//     virtual lanes summed by the xor butterfly, then the 4 warp sums in order from 0. A block of 128
//     threads per row does exactly that (few rows); a warp per row (many rows) runs virtual lanes
//     l, l+32, l+64, l+96 in lane l with 4 accumulators: the same loads and the same float operations.
//     The row h is staged in shared memory (gathered through perm when there is one); perm (as uint16)
//     and weight[perm] are staged once per block of a persistent grid.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "backend/cuda/common/cuda_check.h"
#include "backend/cuda/common/fp16_vec.cuh"
#include "backend/cuda/elementwise/elementwise.h"

namespace atom::cuda {
namespace detail {
// elementwise_check.cpp (atom::Error needs fmt, which nvcc cannot compile).
// data null with n > 0, data not aligned to element_bytes, lo / hi not finite (fp16: not representable
// without overflow) or lo > hi.
void check_fill_args(const char* what, const void* data, std::size_t n, std::size_t element_bytes, float lo,
                     float hi);
void check_fill_args(const char* what, const void* data, std::size_t n);
}  // namespace detail

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kUnroll = 4;  // 16-byte chunks in flight per lane (per stream)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

__device__ __forceinline__ uint4 load16(const void* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ void store16(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }

// ---- launch helpers

int current_device() {
  int dev = 0;
  ATOM_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

struct DeviceLimits {
  int sms;
  std::size_t smem_optin;  // dynamic + static shared memory a block may opt in to
};

DeviceLimits device_limits(int dev) {
  static std::mutex mutex;
  static std::vector<std::pair<int, DeviceLimits>> cache;
  const std::lock_guard lock(mutex);
  for (const auto& [d, limits] : cache) {
    if (d == dev) return limits;
  }
  int sms = 0, optin = 0;
  ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  cache.emplace_back(dev, DeviceLimits{sms, static_cast<std::size_t>(optin)});
  return cache.back().second;
}

int num_sms() { return device_limits(current_device()).sms; }

// Resident blocks of `kernel` with `smem` bytes of dynamic shared memory on the whole device, cached (the
// occupancy query would cost host time on every decode step). Raises the kernel's dynamic shared-memory
// limit (never lowers it) before the query, which otherwise assumes the 48 KB default.
long long resident_blocks(const void* kernel, int threads, std::size_t smem) {
  struct Entry {
    int dev;
    const void* kernel;
    std::size_t smem_limit;
    std::vector<std::pair<std::size_t, long long>> blocks;  // (smem, resident blocks)
  };
  static std::mutex mutex;
  static std::vector<Entry> cache;
  const int dev = current_device();
  const int sms = device_limits(dev).sms;
  const std::lock_guard lock(mutex);
  Entry* entry = nullptr;
  for (Entry& e : cache) {
    if (e.dev == dev && e.kernel == kernel) entry = &e;
  }
  if (entry == nullptr) entry = &cache.emplace_back(Entry{dev, kernel, 48 * 1024, {}});
  for (const auto& [bytes, blocks] : entry->blocks) {
    if (bytes == smem) return blocks;
  }
  if (smem > entry->smem_limit) {
    ATOM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    entry->smem_limit = smem;
  }
  int per_sm = 0;
  ATOM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  const long long blocks = static_cast<long long>(std::max(per_sm, 1)) * sms;
  entry->blocks.emplace_back(smem, blocks);
  return blocks;
}

// ---- embedding and silu_mul: a team of warps per row, no barriers.

constexpr int kRowTeamWarps = 8;  // warps per block

// Warps per row: the fewest with at most kUnroll chunks per lane.
int team_warps_for(int chunks) {
  int warps = 1;
  while (warps < kRowTeamWarps && warps * 32 * kUnroll < chunks) warps *= 2;
  return warps;
}

int row_team_grid(int num_rows, int team_warps) {
  const long long rows_per_block = kRowTeamWarps / team_warps;
  const long long need = (num_rows + rows_per_block - 1) / rows_per_block;
  const long long fit = static_cast<long long>(num_sms()) * (2048 / (kRowTeamWarps * 32));
  return static_cast<int>(std::min(need, fit));
}

struct RowTeam {
  int first_row, row_step, lane, threads;  // lane within the team, threads per team
};
__device__ __forceinline__ RowTeam row_team(int team_warps) {
  const int warp = threadIdx.x / 32, teams = kRowTeamWarps / team_warps;
  return {static_cast<int>(blockIdx.x) * teams + warp / team_warps, static_cast<int>(gridDim.x) * teams,
          (warp % team_warps) * 32 + static_cast<int>(threadIdx.x % 32), team_warps * 32};
}

__global__ void __launch_bounds__(kRowTeamWarps * 32) embedding_kernel(EmbeddingParams p, int team_warps) {
  const RowTeam team = row_team(team_warps);
  const int chunks = p.hidden / 8;
  for (int t = team.first_row; t < p.num_tokens; t += team.row_step) {
    const std::int32_t id = p.tokens[t];
    const bool valid = id >= 0 && id < p.vocab;
    const std::uint16_t* src = p.table + (valid ? static_cast<std::int64_t>(id) * p.hidden : 0);
    std::uint16_t* dst = p.out + t * p.out_stride;
    for (int base = team.lane; base < chunks; base += team.threads * kUnroll) {
      uint4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = base + u * team.threads;
        v[u] = make_uint4(0, 0, 0, 0);
        if (valid && c < chunks) v[u] = load16(src + c * 8);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = base + u * team.threads;
        if (c < chunks) store16(dst + c * 8, v[u]);
      }
    }
  }
}

// fp16( silu(g) * u ): the same expression as quantize_act.cu's silu_mul (same flags, same instructions),
// so that act_out there and out here are bit-identical.
__device__ __forceinline__ float silu_mul(float g, float u) { return __fdividef(g, 1.0f + __expf(-g)) * u; }

__global__ void __launch_bounds__(kRowTeamWarps * 32) silu_mul_kernel(SiluMulParams p, int team_warps) {
  const RowTeam team = row_team(team_warps);
  const int chunks = p.width / 8;
  for (int t = team.first_row; t < p.num_tokens; t += team.row_step) {
    const std::uint16_t* gate = p.gate + t * p.gate_stride;
    const std::uint16_t* up = p.up + t * p.up_stride;
    std::uint16_t* dst = p.out + t * p.out_stride;
    for (int base = team.lane; base < chunks; base += team.threads * kUnroll) {
      uint4 g[kUnroll], u[kUnroll];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        const int c = base + k * team.threads;
        if (c < chunks) {
          g[k] = load16(gate + c * 8);
          u[k] = load16(up + c * 8);
        }
      }
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        const int c = base + k * team.threads;
        if (c >= chunks) continue;
        float gv[8], uv[8], v[8];
        unpack8(g[k], gv);
        unpack8(u[k], uv);
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = silu_mul(gv[e], uv[e]);
        store16(dst + c * 8, pack8(v));
      }
    }
  }
}

// ---- rmsnorm

constexpr int kNormWarps = 4;  // 128 virtual lanes: fixes the order of the sum of squares

struct NormArgs {
  int num_rows, hidden;
  const __half* input;
  std::int64_t input_stride;
  const std::int32_t* rows;
  const __half* residual;
  std::int64_t residual_stride;
  __half* residual_out;
  std::int64_t residual_out_stride;
  const __half* weight;
  float eps;
  const std::int32_t* perm;
  __half* out;
  std::int64_t out_stride;
};

// One row per team, then (perm only) perm as uint16 and weight[perm] for the block.
std::size_t norm_smem_bytes(int hidden, bool perm, int team) {
  return static_cast<std::size_t>(hidden) * 2 * (kNormWarps / team + (perm ? 2 : 0));
}

// kTeam: warps per row, kNormWarps (the whole block; its barriers are block barriers) or 1.
template <bool kPerm, int kTeam>
__global__ void __launch_bounds__(kNormWarps * 32) rmsnorm_kernel(NormArgs a) {
  static_assert(kTeam == 1 || kTeam == kNormWarps);
  static_assert(kUnroll == kNormWarps, "a warp runs one virtual lane per unrolled chunk");
  constexpr int kTeams = kNormWarps / kTeam;
  constexpr int kAcc = kTeam == 1 ? kUnroll : 1;  // virtual lanes per lane
  constexpr int kStep = kTeam * 32 * 8;          // elements between a lane's unrolled chunks
  extern __shared__ uint4 smem_raw[];
  __shared__ float s_sumsq[kNormWarps];
  const int hidden = a.hidden;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int team_lane = (warp % kTeam) * 32 + lane;
  const auto team_sync = [] {
    if constexpr (kTeam == 1) __syncwarp();
    else __syncthreads();
  };
  __half* row = reinterpret_cast<__half*>(smem_raw) + static_cast<std::size_t>(warp / kTeam) * hidden;
  std::uint16_t* perm_s = reinterpret_cast<std::uint16_t*>(smem_raw) + static_cast<std::size_t>(kTeams) * hidden;
  __half* gamma_s = reinterpret_cast<__half*>(perm_s + hidden);  // all 16-byte aligned: hidden % 8 == 0

  if constexpr (kPerm) {
    // perm as 16-byte loads (8 in flight per thread), clamped so that no gather leaves the row.
    for (int base = threadIdx.x * 4; base < hidden; base += kNormWarps * 32 * 4 * 8) {
      int4 idx[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int j = base + u * kNormWarps * 32 * 4;
        if (j < hidden) idx[u] = *reinterpret_cast<const int4*>(a.perm + j);
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int j = base + u * kNormWarps * 32 * 4;
        if (j >= hidden) continue;
        const int v[4] = {idx[u].x, idx[u].y, idx[u].z, idx[u].w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          perm_s[j + e] = static_cast<std::uint16_t>(min(static_cast<unsigned>(v[e]), static_cast<unsigned>(hidden - 1)));
        }
      }
    }
    __syncthreads();
#pragma unroll 8
    for (int j = threadIdx.x; j < hidden; j += kNormWarps * 32) gamma_s[j] = a.weight[perm_s[j]];
    __syncthreads();
  }

  for (int r = blockIdx.x * kTeams + warp / kTeam; r < a.num_rows; r += gridDim.x * kTeams) {  // team-uniform
    const std::int64_t src_row = a.rows != nullptr ? a.rows[r] : r;
    const __half* in = a.input + src_row * a.input_stride;
    const __half* res = a.residual != nullptr ? a.residual + src_row * a.residual_stride : nullptr;
    __half* res_out = a.residual_out != nullptr ? a.residual_out + r * a.residual_out_stride : nullptr;
    float acc[kAcc];
#pragma unroll
    for (int v = 0; v < kAcc; ++v) acc[v] = 0.0f;
    for (int base = team_lane * 8; base < hidden; base += kStep * kUnroll) {
      uint4 x[kUnroll], y[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = base + u * kStep;
        if (c < hidden) {
          x[u] = load16(in + c);
          if (res != nullptr) y[u] = load16(res + c);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = base + u * kStep;
        if (c >= hidden) continue;
        uint4 h = x[u];
        if (res != nullptr) {
          float xv[8], yv[8];
          unpack8(x[u], xv);
          unpack8(y[u], yv);
#pragma unroll
          for (int e = 0; e < 8; ++e) xv[e] = __fadd_rn(xv[e], yv[e]);
          h = pack8(xv);
        }
        if (res_out != nullptr) store16(res_out + c, h);
        store16(row + c, h);
        float hv[8];
        unpack8(h, hv);
        float& s = acc[kTeam == 1 ? u : 0];  // chunk u of a warp-per-row lane belongs to virtual lane + 32u
#pragma unroll
        for (int e = 0; e < 8; ++e) s = fmaf(hv[e], hv[e], s);
      }
    }
    float sumsq = 0.0f;
    if constexpr (kTeam == 1) {
#pragma unroll
      for (int v = 0; v < kAcc; ++v) sumsq += warp_sum(acc[v]);
    } else {
      const float w = warp_sum(acc[0]);
      if (lane == 0) s_sumsq[warp] = w;
      __syncthreads();
#pragma unroll
      for (int v = 0; v < kTeam; ++v) sumsq += s_sumsq[v];
    }
    const float inv_rms = rsqrtf(sumsq / static_cast<float>(hidden) + a.eps);  // as rmsnorm_quantize
    if constexpr (kPerm) team_sync();  // the gather reads other lanes' elements

    __half* dst = a.out + r * a.out_stride;
    for (int base = team_lane * 8; base < hidden; base += kStep * kUnroll) {
      uint4 g[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = base + u * kStep;
        if (c < hidden) g[u] = load16((kPerm ? gamma_s : a.weight) + c);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = base + u * kStep;
        if (c >= hidden) continue;
        float gv[8], hv[8];
        unpack8(g[u], gv);
        if constexpr (kPerm) {
          const uint4 idx = load16(perm_s + c);
          const std::uint32_t iw[4] = {idx.x, idx.y, idx.z, idx.w};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            hv[2 * e] = __half2float(row[iw[e] & 0xFFFFu]);
            hv[2 * e + 1] = __half2float(row[iw[e] >> 16]);
          }
        } else {
          unpack8(load16(row + c), hv);  // this lane's own chunk
        }
        float v[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = __fmul_rn(__fmul_rn(hv[e], inv_rms), gv[e]);
        store16(dst + c, pack8(v));
      }
    }
    team_sync();  // the next row overwrites the row buffer (and s_sumsq)
  }
}

// A block per row while the rows fit on the GPU at once, else a warp per row (the same sum order either
// way; the warp kernel keeps 4 rows in shared memory and falls back to the block kernel where the device
// cannot give it that much); persistent grid: never more blocks than fit at once or than the rows need.
template <bool kPerm>
void launch_rmsnorm(const NormArgs& a, cudaStream_t stream) {
  constexpr int kThreads = kNormWarps * 32;
  const auto team_kernel = rmsnorm_kernel<kPerm, kNormWarps>;
  const auto warp_kernel = rmsnorm_kernel<kPerm, 1>;
  const std::size_t team_smem = norm_smem_bytes(a.hidden, kPerm, kNormWarps);
  const std::size_t warp_smem = norm_smem_bytes(a.hidden, kPerm, 1);
  constexpr std::size_t kStaticSmem = kNormWarps * sizeof(float);  // s_sumsq
  const long long team_fit = resident_blocks(reinterpret_cast<const void*>(team_kernel), kThreads, team_smem);
  const bool teams =
      a.num_rows <= team_fit || warp_smem + kStaticSmem > device_limits(current_device()).smem_optin;
  const long long fit =
      teams ? team_fit : resident_blocks(reinterpret_cast<const void*>(warp_kernel), kThreads, warp_smem);
  const int rows_per_block = teams ? 1 : kNormWarps;
  const long long need = (static_cast<long long>(a.num_rows) + rows_per_block - 1) / rows_per_block;
  const int grid = static_cast<int>(std::min(fit, need));
  if (teams) team_kernel<<<grid, kThreads, team_smem, stream>>>(a);
  else warp_kernel<<<grid, kThreads, warp_smem, stream>>>(a);
  ATOM_CUDA_CHECK_LAUNCH();
}

// ---- fills: element i from (seed, i) alone. The aligned body goes out in 16-byte stores, the unaligned
// head and the tail (fewer than 16 bytes each) element by element.

constexpr int kFillThreads = 256;

struct UniformF32 {
  std::uint64_t key;  // fill_key(seed)
  float lo, hi;
  __device__ float operator()(std::uint64_t i) const {
    const std::uint64_t h = fill_hash_keyed(key, i);
    const float u = static_cast<float>(h >> 40) * 0x1p-24f;
    return fminf(fmaxf(fmaf(hi - lo, u, lo), lo), hi);
  }
};

struct UniformF16 {
  UniformF32 f;
  __device__ std::uint16_t operator()(std::uint64_t i) const {
    return __half_as_ushort(__float2half_rn(f(i)));
  }
};

struct RandomBytes {
  std::uint64_t key;
  __device__ std::uint64_t word(std::uint64_t w) const { return fill_hash_keyed(key, w); }
  __device__ std::uint8_t operator()(std::uint64_t i) const {
    return static_cast<std::uint8_t>(word(i / 8) >> (8 * (i % 8)));
  }
  // Bytes i .. i + 15 from two or three words.
  __device__ uint4 vector(std::uint64_t i) const {
    const std::uint64_t w = i / 8;
    const unsigned shift = 8 * static_cast<unsigned>(i % 8);
    const std::uint64_t w0 = word(w), w1 = word(w + 1);
    std::uint64_t lo = w0, hi = w1;
    if (shift != 0) {
      const std::uint64_t w2 = word(w + 2);
      lo = (w0 >> shift) | (w1 << (64 - shift));
      hi = (w1 >> shift) | (w2 << (64 - shift));
    }
    return make_uint4(static_cast<std::uint32_t>(lo), static_cast<std::uint32_t>(lo >> 32),
                      static_cast<std::uint32_t>(hi), static_cast<std::uint32_t>(hi >> 32));
  }
};

template <class T, class Gen>
__device__ __forceinline__ uint4 fill_vector(const Gen& gen, std::uint64_t i) {
  if constexpr (requires { gen.vector(i); }) {
    return gen.vector(i);
  } else {
    constexpr int kPer = 16 / sizeof(T);
    T v[kPer];
#pragma unroll
    for (int e = 0; e < kPer; ++e) v[e] = gen(i + e);
    uint4 out;
    memcpy(&out, v, 16);
    return out;
  }
}

// Elements [0, head) and [head + 16 / sizeof(T) * vectors, n) one by one, the vectors between in 16 bytes.
template <class T, class Gen>
__global__ void __launch_bounds__(kFillThreads) fill_kernel(T* data, std::size_t n, std::size_t head,
                                                            std::size_t vectors, Gen gen) {
  constexpr int kPer = 16 / sizeof(T);
  const std::size_t tid = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t v = tid; v < vectors; v += stride) {
    const std::size_t i = head + v * kPer;
    store16(data + i, fill_vector<T>(gen, i));
  }
  const std::size_t tail = head + vectors * kPer;
  if (tid < head) data[tid] = gen(tid);
  if (tid < n - tail) data[tail + tid] = gen(tail + tid);
}

template <class T, class Gen>
void launch_fill(T* data, std::size_t n, const Gen& gen, cudaStream_t stream) {
  if (n == 0) return;
  constexpr std::size_t kPer = 16 / sizeof(T);
  const auto address = reinterpret_cast<std::uintptr_t>(data);
  const std::size_t to_boundary = ((16 - address % 16) % 16) / sizeof(T);  // data is sizeof(T)-aligned
  const std::size_t head = std::min(n, to_boundary);
  const std::size_t vectors = (n - head) / kPer;
  const long long fit = static_cast<long long>(num_sms()) * (2048 / kFillThreads);
  const long long need = static_cast<long long>((std::max<std::size_t>(vectors, kPer) + kFillThreads - 1) / kFillThreads);
  fill_kernel<T><<<static_cast<int>(std::min(fit, need)), kFillThreads, 0, stream>>>(data, n, head, vectors, gen);
  ATOM_CUDA_CHECK_LAUNCH();
}

UniformF32 uniform_f32(std::uint64_t seed, float lo, float hi) { return {fill_key(seed), lo, hi}; }

}  // namespace

void embedding_lookup(const EmbeddingParams& p, cudaStream_t stream) {
  check_params(p);
  if (p.num_tokens == 0) return;
  const int team_warps = team_warps_for(p.hidden / 8);
  embedding_kernel<<<row_team_grid(p.num_tokens, team_warps), kRowTeamWarps * 32, 0, stream>>>(p, team_warps);
  ATOM_CUDA_CHECK_LAUNCH();
}

void silu_mul_f16(const SiluMulParams& p, cudaStream_t stream) {
  check_params(p);
  if (p.num_tokens == 0) return;
  const int team_warps = team_warps_for(p.width / 8);
  silu_mul_kernel<<<row_team_grid(p.num_tokens, team_warps), kRowTeamWarps * 32, 0, stream>>>(p, team_warps);
  ATOM_CUDA_CHECK_LAUNCH();
}

void rmsnorm_f16(const RmsNormParams& p, cudaStream_t stream) {
  check_params(p);
  if (p.num_rows == 0) return;
  const NormArgs a{p.num_rows,
                   p.hidden,
                   reinterpret_cast<const __half*>(p.input),
                   p.input_stride,
                   p.rows,
                   reinterpret_cast<const __half*>(p.residual),
                   p.residual_stride,
                   reinterpret_cast<__half*>(p.residual_out),
                   p.residual_out_stride,
                   reinterpret_cast<const __half*>(p.weight),
                   p.eps,
                   p.perm,
                   reinterpret_cast<__half*>(p.out),
                   p.out_stride};
  if (p.perm != nullptr) launch_rmsnorm<true>(a, stream);
  else launch_rmsnorm<false>(a, stream);
}

void fill_uniform_f32(float* data, std::size_t n, std::uint64_t seed, float lo, float hi, cudaStream_t stream) {
  detail::check_fill_args("fill_uniform_f32", data, n, sizeof(float), lo, hi);
  launch_fill(data, n, uniform_f32(seed, lo, hi), stream);
}

void fill_uniform_f16(std::uint16_t* data, std::size_t n, std::uint64_t seed, float lo, float hi,
                      cudaStream_t stream) {
  detail::check_fill_args("fill_uniform_f16", data, n, sizeof(std::uint16_t), lo, hi);
  launch_fill(data, n, UniformF16{uniform_f32(seed, lo, hi)}, stream);
}

void fill_random_bytes(void* data, std::size_t n, std::uint64_t seed, cudaStream_t stream) {
  detail::check_fill_args("fill_random_bytes", data, n);
  launch_fill(static_cast<std::uint8_t*>(data), n, RandomBytes{fill_key(seed)}, stream);
}

}  // namespace atom::cuda
