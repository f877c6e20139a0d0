// Fused activation quantizers (see quantize_act.h). One 256-thread block walks over tokens; per token:
//   1. (row kernels) the fp16 row is read once with 16-byte loads into shared memory (residual added,
//      residual written, sum of squares taken on the way);
//   2. normal groups: G/8 lanes per group, 8 consecutive reordered channels per lane, the group max by
//      shuffles, one 4-byte store of 8 packed codes per lane;
//   3. outliers: block-wide max, one INT8 per channel.
// The arithmetic mirrors quant/format.h step by step (fp32, IEEE division, round half to even).
#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/quantize_act.h"

namespace atom::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// Every thread of the block calls these; `red` holds kWarps floats.
__device__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float t = threadIdx.x % 32 < kWarps ? red[threadIdx.x % 32] : 0.0f;
  t = warp_sum(t);
  __syncthreads();  // red is reused by the next reduction
  return t;
}
__device__ float block_max(float v, float* red) {
  v = warp_max(v);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float t = threadIdx.x % 32 < kWarps ? red[threadIdx.x % 32] : 0.0f;
  t = warp_max(t);
  __syncthreads();
  return t;
}

__device__ __forceinline__ float round_to_half(float x) { return __half2float(__float2half_rn(x)); }

// quant::fp4_encode.
__device__ __forceinline__ unsigned fp4_encode(float v) {
  const float a = fabsf(v);
  unsigned m;
  if (!(a > 0.25f)) m = 0;
  else if (a < 0.75f) m = 1;
  else if (a <= 1.25f) m = 2;
  else if (a < 1.75f) m = 3;
  else if (a <= 2.5f) m = 4;
  else if (a < 3.5f) m = 5;
  else if (a <= 5.0f) m = 6;
  else m = 7;
  return (m != 0 && v < 0.0f) ? (m | 8u) : m;
}

// quant::quantize_symmetric_value (signed code) or quant::quantize_fp4_value (nibble), as 4 bits.
template <bool kFp4>
__device__ __forceinline__ unsigned quantize_nibble(float x, float scale, float qmax) {
  if (scale == 0.0f) return 0u;
  const float r = __fdiv_rn(x, scale);
  if constexpr (kFp4) {
    return fp4_encode(r);
  } else {
    const float q = fminf(fmaxf(rintf(r), -qmax - 1.0f), qmax);
    return static_cast<unsigned>(static_cast<int>(q)) & 0xFu;
  }
}

struct GroupArgs {
  float qmax, clip;
};

// One group spread over `lanes` (a power of two, aligned) lanes of the warp, 8 values per lane. All 32
// lanes must call it (shuffles); `active` lanes store. Returns nothing; writes 4 packed bytes per lane
// and the group's fp16 scale (first lane of the group).
template <bool kFp4>
__device__ __forceinline__ void quantize_group8(const float (&v)[8], int lanes, GroupArgs a, bool active,
                                                std::uint32_t* packed_dst, __half* scale_dst, bool first_lane) {
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < 8; ++i) amax = fmaxf(fabsf(v[i]), amax);
  for (int off = lanes / 2; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, off));
  const __half scale_h = __float2half_rn(__fdiv_rn(__fmul_rn(a.clip, amax), a.qmax));
  const float scale = __half2float(scale_h);
  std::uint32_t word = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) word |= quantize_nibble<kFp4>(v[i], scale, a.qmax) << (4 * i);
  if (active) {
    *packed_dst = word;
    if (first_lane) *scale_dst = scale_h;
  }
}

__device__ __forceinline__ void unpack8(const uint4& u, float (&v)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ uint4 pack8(const float (&v)[8]) {
  uint4 u;
  __half2* h = reinterpret_cast<__half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
  return u;
}

// Steps 2 and 3 for one token. Source::get8(j, v) gives the fp16-exact values (as floats) of reordered
// channels j..j+7 and writes them to the debug output if any; Source::get1(j, write_debug) one channel.
template <bool kFp4, class Source>
__device__ void quantize_token(int token, const ActQuantLayout& layout, const QuantizedActOut& out, Source& src,
                               float* red) {
  const int k_normal = layout.k - layout.n_outliers;
  const int group = layout.group_size;
  const int lanes = group / 8;
  const int groups = k_normal / group;
  const int groups_per_pass = kThreads / lanes;
  const int slot = threadIdx.x / lanes, lane_in_group = threadIdx.x % lanes;
  const float qmax = layout.format == ActFormat::kInt3 ? 3.0f : layout.format == ActFormat::kFp4 ? 6.0f : 7.0f;
  const GroupArgs args{qmax, layout.clip_ratio};
  std::uint8_t* packed_row = out.packed + token * out.packed_stride;
  for (int first = 0; first < groups; first += groups_per_pass) {  // same trip count in every thread
    const int g = first + slot;
    const bool active = g < groups;
    const int j = g * group + lane_in_group * 8;
    float v[8];
    if (active) {
      src.get8(j, v);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = 0.0f;
    }
    quantize_group8<kFp4>(v, lanes, args, active, reinterpret_cast<std::uint32_t*>(packed_row + j / 2),
                          reinterpret_cast<__half*>(out.scales) + token * out.scale_token_stride +
                              static_cast<std::int64_t>(g) * out.scale_group_stride,
                          lane_in_group == 0);
  }
  if (layout.n_outliers > 0) {
    float amax = 0.0f;
    for (int o = threadIdx.x; o < layout.n_outliers; o += kThreads) {
      amax = fmaxf(fabsf(src.get1(k_normal + o, false)), amax);
    }
    amax = block_max(amax, red);
    const __half scale_h = __float2half_rn(__fdiv_rn(amax, 127.0f));
    const float scale = __half2float(scale_h);
    std::int8_t* dst = out.outliers + token * out.outlier_stride;
    for (int o = threadIdx.x; o < layout.n_outliers; o += kThreads) {
      const float x = src.get1(k_normal + o, true);
      float q = 0.0f;
      if (scale != 0.0f) q = fminf(fmaxf(rintf(__fdiv_rn(x, scale)), -128.0f), 127.0f);
      dst[o] = static_cast<std::int8_t>(q);
    }
    if (threadIdx.x == 0) reinterpret_cast<__half*>(out.outlier_scales)[token * out.outlier_scale_stride] = scale_h;
  }
}

// ---- rmsnorm_quantize / reorder_quantize: the row is staged in shared memory, then gathered by perm.

struct RowSmem {
  std::uint16_t* perm;  // [K] (K <= 32768)
  __half* gamma;        // [K] gamma[perm[j]] (norm only)
  __half* row;          // [K] h, original order
};

template <bool kNorm>
struct GatherSource {
  const RowSmem& s;
  float inv_rms;
  __half* debug;  // this token's normed_out row or null

  __device__ float value(int j) const {
    const float h = __half2float(s.row[s.perm[j]]);
    if constexpr (kNorm) {
      return round_to_half(__fmul_rn(__fmul_rn(h, inv_rms), __half2float(s.gamma[j])));
    } else {
      return h;
    }
  }
  __device__ void get8(int j, float (&v)[8]) {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = value(j + i);
    if (debug != nullptr) *reinterpret_cast<uint4*>(debug + j) = pack8(v);
  }
  __device__ float get1(int j, bool write_debug) {
    const float x = value(j);
    if (write_debug && debug != nullptr) debug[j] = __float2half_rn(x);
    return x;
  }
};

struct RowKernelArgs {
  int num_tokens;
  ActQuantLayout layout;
  const __half* input;
  std::int64_t input_stride;
  const __half* residual;
  std::int64_t residual_stride;
  __half* residual_out;
  std::int64_t residual_out_stride;
  const __half* weight;  // null: no norm
  float eps;
  const std::int32_t* perm;
  QuantizedActOut out;
  __half* normed_out;
  std::int64_t normed_stride;
};

std::size_t row_smem_bytes(int k, bool norm) { return static_cast<std::size_t>(k) * 2 * (norm ? 3 : 2); }

template <bool kNorm, bool kFp4>
__global__ void __launch_bounds__(kThreads) row_quantize_kernel(RowKernelArgs a) {
  extern __shared__ uint4 smem_raw[];
  __shared__ float red[kWarps];
  const int k = a.layout.k;
  RowSmem s;
  s.perm = reinterpret_cast<std::uint16_t*>(smem_raw);
  s.gamma = reinterpret_cast<__half*>(s.perm + k);
  s.row = kNorm ? s.gamma + k : reinterpret_cast<__half*>(s.perm + k);  // offsets are multiples of 16 bytes
  for (int j = threadIdx.x; j < k; j += kThreads) {
    const int src = min(static_cast<unsigned>(a.perm[j]), static_cast<unsigned>(k - 1));  // never out of bounds
    s.perm[j] = static_cast<std::uint16_t>(src);
    if constexpr (kNorm) s.gamma[j] = a.weight[src];
  }
  // (the first token's __syncthreads below orders these writes before the gathers)
  for (int token = blockIdx.x; token < a.num_tokens; token += gridDim.x) {
    float sumsq = 0.0f;
    const __half* in = a.input + token * a.input_stride;
    const __half* res = a.residual ? a.residual + token * a.residual_stride : nullptr;
    __half* res_out = a.residual_out ? a.residual_out + token * a.residual_out_stride : nullptr;
    constexpr int kUnroll = 2;
    for (int base = threadIdx.x * 8; base < k; base += kThreads * 8 * kUnroll) {
      uint4 x[kUnroll], r[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = base + u * kThreads * 8;
        if (c < k) {
          x[u] = *reinterpret_cast<const uint4*>(in + c);
          if (res) r[u] = *reinterpret_cast<const uint4*>(res + c);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = base + u * kThreads * 8;
        if (c >= k) continue;
        uint4 h = x[u];
        if (res) {
          float xv[8], rv[8];
          unpack8(x[u], xv);
          unpack8(r[u], rv);
#pragma unroll
          for (int i = 0; i < 8; ++i) xv[i] = __fadd_rn(xv[i], rv[i]);
          h = pack8(xv);
        }
        if (res_out) *reinterpret_cast<uint4*>(res_out + c) = h;
        *reinterpret_cast<uint4*>(s.row + c) = h;
        if constexpr (kNorm) {
          float hv[8];
          unpack8(h, hv);
#pragma unroll
          for (int i = 0; i < 8; ++i) sumsq = fmaf(hv[i], hv[i], sumsq);
        }
      }
    }
    float inv_rms = 1.0f;
    if constexpr (kNorm) {
      const float total = block_sum(sumsq, red);  // also the barrier after the row's smem writes
      inv_rms = rsqrtf(total / static_cast<float>(k) + a.eps);
    } else {
      __syncthreads();
    }
    GatherSource<kNorm> src{s, inv_rms, a.normed_out ? a.normed_out + token * a.normed_stride : nullptr};
    quantize_token<kFp4>(token, a.layout, a.out, src, red);
    __syncthreads();  // the next token overwrites s.row
  }
}

// ---- silu_mul_quantize: streaming, no shared row.

struct SiluKernelArgs {
  int num_tokens;
  ActQuantLayout layout;
  const __half* gate;
  std::int64_t gate_stride;
  const __half* up;
  std::int64_t up_stride;
  QuantizedActOut out;
  __half* act_out;
  std::int64_t act_stride;
};

__device__ __forceinline__ float silu_mul(float g, float u) {
  return round_to_half(__fmul_rn(__fdiv_rn(g, 1.0f + __expf(-g)), u));
}

struct SiluSource {
  const __half* gate;
  const __half* up;
  __half* debug;

  __device__ void get8(int j, float (&v)[8]) {
    float g[8], u[8];
    unpack8(*reinterpret_cast<const uint4*>(gate + j), g);
    unpack8(*reinterpret_cast<const uint4*>(up + j), u);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = silu_mul(g[i], u[i]);
    if (debug != nullptr) *reinterpret_cast<uint4*>(debug + j) = pack8(v);
  }
  __device__ float get1(int j, bool write_debug) {
    const float x = silu_mul(__half2float(gate[j]), __half2float(up[j]));
    if (write_debug && debug != nullptr) debug[j] = __float2half_rn(x);
    return x;
  }
};

template <bool kFp4>
__global__ void __launch_bounds__(kThreads) silu_quantize_kernel(SiluKernelArgs a) {
  __shared__ float red[kWarps];
  for (int token = blockIdx.x; token < a.num_tokens; token += gridDim.x) {
    SiluSource src{a.gate + token * a.gate_stride, a.up + token * a.up_stride,
                   a.act_out ? a.act_out + token * a.act_stride : nullptr};
    quantize_token<kFp4>(token, a.layout, a.out, src, red);
  }
}

int num_sms() {
  static int count = [] {
    int dev = 0, n = 0;
    ATOM_CUDA_CHECK(cudaGetDevice(&dev));
    ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }();
  return count;
}

// Persistent grid: as many blocks as fit at once, never more than tokens.
template <class Kernel>
int grid_size(Kernel kernel, std::size_t smem, int num_tokens) {
  int per_sm = 0;
  ATOM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  if (per_sm < 1) per_sm = 1;
  const long long blocks = static_cast<long long>(per_sm) * num_sms();
  return static_cast<int>(blocks < num_tokens ? blocks : num_tokens);
}

template <bool kNorm, bool kFp4>
void launch_row(const RowKernelArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0) return;
  auto kernel = row_quantize_kernel<kNorm, kFp4>;
  const std::size_t smem = row_smem_bytes(a.layout.k, kNorm);
  ATOM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid_size(kernel, smem, a.num_tokens), kThreads, smem, stream>>>(a);
  ATOM_CUDA_CHECK_LAUNCH();
}

template <bool kNorm>
void dispatch_row(const RowKernelArgs& a, cudaStream_t stream) {
  if (a.layout.format == ActFormat::kFp4) launch_row<kNorm, true>(a, stream);
  else launch_row<kNorm, false>(a, stream);
}

}  // namespace

void rmsnorm_quantize(const RmsNormQuantParams& p, cudaStream_t stream) {
  check_params(p);
  RowKernelArgs a{p.num_tokens,
                  p.layout,
                  reinterpret_cast<const __half*>(p.input),
                  p.input_stride,
                  reinterpret_cast<const __half*>(p.residual),
                  p.residual_stride,
                  reinterpret_cast<__half*>(p.residual_out),
                  p.residual_out_stride,
                  reinterpret_cast<const __half*>(p.weight),
                  p.eps,
                  p.perm,
                  p.out,
                  reinterpret_cast<__half*>(p.normed_out),
                  p.normed_stride};
  dispatch_row<true>(a, stream);
}

void reorder_quantize(const ReorderQuantParams& p, cudaStream_t stream) {
  check_params(p);
  RowKernelArgs a{p.num_tokens, p.layout, reinterpret_cast<const __half*>(p.input), p.input_stride, nullptr, 0,
                  nullptr,      0,        nullptr,                                  0.0f,           p.perm, p.out,
                  nullptr,      0};
  dispatch_row<false>(a, stream);
}

void silu_mul_quantize(const SiluMulQuantParams& p, cudaStream_t stream) {
  check_params(p);
  if (p.num_tokens == 0) return;
  SiluKernelArgs a{p.num_tokens,
                   p.layout,
                   reinterpret_cast<const __half*>(p.gate),
                   p.gate_stride,
                   reinterpret_cast<const __half*>(p.up),
                   p.up_stride,
                   p.out,
                   reinterpret_cast<__half*>(p.act_out),
                   p.act_stride};
  if (p.layout.format == ActFormat::kFp4) {
    silu_quantize_kernel<true><<<grid_size(silu_quantize_kernel<true>, 0, p.num_tokens), kThreads, 0, stream>>>(a);
  } else {
    silu_quantize_kernel<false><<<grid_size(silu_quantize_kernel<false>, 0, p.num_tokens), kThreads, 0, stream>>>(a);
  }
  ATOM_CUDA_CHECK_LAUNCH();
}

}  // namespace atom::cuda
