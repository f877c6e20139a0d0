#include "backend/cuda/calibration/calibration_kernels.h"

#include <cuda_fp16.h>

#include <algorithm>

#include "backend/cuda/common/cuda_check.h"

namespace atom::cuda::calib {

namespace {

using quant::NumberFormat;

constexpr int kThreads = 256;

int blocks_for(std::int64_t count, int threads = kThreads) {
  return static_cast<int>(std::min<std::int64_t>((count + threads - 1) / threads, 1 << 20));
}

// k x k kernels: blockIdx.y the column, x over the rows (callers keep k <= kMaxSquareSide).
dim3 square_grid(std::int64_t k) {
  return dim3(static_cast<unsigned>((k + kThreads - 1) / kThreads), static_cast<unsigned>(k));
}

// ---- the format's scalar rules on the device (format/format.h; every operation rounded as there: explicit
// _rn intrinsics, so that no contraction or fast-math flag changes a code)

__device__ __forceinline__ std::uint16_t fp16_bits(float x) { return __half_as_ushort(__float2half_rn(x)); }
__device__ __forceinline__ float fp16_value(std::uint16_t bits) { return __half2float(__ushort_as_half(bits)); }

// fp16(clip * max_abs / qmax), as quant::symmetric_scale.
__device__ __forceinline__ std::uint16_t symmetric_scale_bits(float max_abs, float clip, float qmax) {
  return fp16_bits(__fdiv_rn(__fmul_rn(clip, max_abs), qmax));
}

// The code of x under `scale` (quant::quantize_symmetric_value / quantize_fp4_value) and its dequantized value.
__device__ __forceinline__ int quantize_value(float x, float scale, NumberFormat format, float qmax,
                                              float& dequantized) {
  if (scale == 0.0f) {
    dequantized = 0.0f;
    return 0;
  }
  if (format == NumberFormat::kFp4) {
    const unsigned code = quant::fp4_encode(__fdiv_rn(x, scale));
    dequantized = __fmul_rn(quant::fp4_decode(static_cast<std::uint8_t>(code)), scale);
    return static_cast<int>(code);
  }
  const float r = fminf(fmaxf(rintf(__fdiv_rn(x, scale)), -qmax - 1.0f), qmax);  // NaN quotient -> lo
  dequantized = __fmul_rn(r + 0.0f, scale);                                      // +0, not -0
  return static_cast<int>(r);
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_min(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); the result in every thread.
__device__ double block_sum(double v) {
  __shared__ double partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // partial[] may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < warps; ++w) total += partial[w];  // fixed order: deterministic
  return total;
}

// ---- activation fake quantization

struct ReorderedF64 {
  double* out;
  __device__ void operator()(std::int64_t r, std::int64_t k, std::int64_t j, const std::int32_t*, float v) const {
    out[r * k + j] = static_cast<double>(v);
  }
};
struct OriginalF32 {
  float* out;
  __device__ void operator()(std::int64_t r, std::int64_t k, std::int64_t j, const std::int32_t* perm,
                             float v) const {
    out[r * k + perm[j]] = v;
  }
};

// One block per row; each warp takes whole groups (the outlier part is one more group, INT8 without clipping).
template <class Store>
__global__ void fake_quantize_kernel(const float* x, std::int64_t k, const std::int32_t* perm, ActQuantParams p,
                                     Store store) {
  const std::int64_t r = blockIdx.x;
  const float* xr = x + r * k;
  if (!p.enabled) {
    for (std::int64_t j = threadIdx.x; j < k; j += blockDim.x) store(r, k, j, perm, xr[perm[j]]);
    return;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const std::int64_t k_normal = k - p.n_outliers, groups = k_normal / p.group;
  const std::int64_t units = groups + (p.n_outliers > 0 ? 1 : 0);
  for (std::int64_t u = warp; u < units; u += warps) {
    const bool outliers = u == groups;
    const std::int64_t begin = outliers ? k_normal : u * p.group, size = outliers ? p.n_outliers : p.group;
    if (outliers && !p.int8_outliers) {
      for (std::int64_t i = lane; i < size; i += 32)
        store(r, k, begin + i, perm, __half2float(__float2half_rn(xr[perm[begin + i]])));
      continue;
    }
    const NumberFormat format = outliers ? NumberFormat::kInt8 : p.format;
    const float clip = outliers ? 1.0f : p.clip, qmax = quant::format_qmax(format);
    float max_abs = 0.0f;
    for (std::int64_t i = lane; i < size; i += 32) max_abs = fmaxf(fabsf(xr[perm[begin + i]]), max_abs);
    const float scale = fp16_value(symmetric_scale_bits(warp_max(max_abs), clip, qmax));
    for (std::int64_t i = lane; i < size; i += 32) {
      float v;
      quantize_value(xr[perm[begin + i]], scale, format, qmax, v);
      store(r, k, begin + i, perm, v);
    }
  }
}

// ---- forward pieces

__global__ void round_to_f32_kernel(const double* y, std::int64_t count, std::int64_t n, const float* bias,
                                    bool accumulate, float* out) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < count;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    float v = static_cast<float>(y[i]);
    if (bias != nullptr) v = __fadd_rn(v, bias[i % n]);
    out[i] = accumulate ? __fadd_rn(out[i], v) : v;
  }
}

__global__ void rms_norm_kernel(const float* x, std::int64_t dim, const float* weight, float eps, float* y) {
  const float* xr = x + blockIdx.x * dim;
  float* yr = y + blockIdx.x * dim;
  double sum_sq = 0.0;
  for (std::int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum_sq += static_cast<double>(xr[i]) * xr[i];
  sum_sq = block_sum(sum_sq);
  const float variance = static_cast<float>(sum_sq / static_cast<double>(dim));
  const float inv_rms = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(variance, eps)));
  for (std::int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = __fmul_rn(weight[i], __fmul_rn(xr[i], inv_rms));
}

__global__ void rope_kernel(float* x, std::int64_t rows, std::int64_t stride, int heads, int head_dim,
                            const float* cos, const float* sin) {
  const int half = head_dim / 2;
  const std::int64_t count = rows * heads * half;
  for (std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; t < count;
       t += std::int64_t{gridDim.x} * blockDim.x) {
    const int i = static_cast<int>(t % half);
    const std::int64_t rh = t / half, r = rh / heads;
    const int h = static_cast<int>(rh % heads);
    float* x1 = x + r * stride + std::int64_t{h} * head_dim;
    const float c = cos[r * half + i], s = sin[r * half + i], a = x1[i], b = x1[i + half];
    x1[i] = a * c - b * s;
    x1[i + half] = b * c + a * s;
  }
}

// One warp per (row, head).
__global__ void kv_fake_quantize_kernel(float* x, std::int64_t groups, int head_dim, int bits, double* sums) {
  const std::int64_t g = (blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (g >= groups) return;  // whole warps leave together (blockDim.x is a multiple of 32)
  float* v = x + g * head_dim;
  float lo_x = v[0], hi_x = v[0];
  for (int i = lane; i < head_dim; i += 32) {
    lo_x = fminf(v[i], lo_x);
    hi_x = fmaxf(v[i], hi_x);
  }
  lo_x = warp_min(lo_x);
  hi_x = warp_max(hi_x);
  const float qmax = static_cast<float>((1 << bits) - 1);
  const float lo = fp16_value(fp16_bits(lo_x));
  const float scale = fp16_value(fp16_bits(__fdiv_rn(__fsub_rn(hi_x, lo), qmax)));
  double sq = 0.0, err = 0.0;
  for (int i = lane; i < head_dim; i += 32) {
    const float q = scale == 0.0f ? 0.0f : fminf(fmaxf(rintf(__fdiv_rn(__fsub_rn(v[i], lo), scale)), 0.0f), qmax);
    const float stored = fmaf(q, scale, lo);
    const double d = static_cast<double>(v[i]) - stored;
    sq += static_cast<double>(v[i]) * v[i];
    err += d * d;
    v[i] = stored;
  }
  if (sums == nullptr) return;
  sq = warp_sum(sq);
  err = warp_sum(err);
  if (lane == 0) {
    atomicAdd(sums, sq);
    atomicAdd(sums + 1, err);
  }
}

// One block per (head, query row).
__global__ void causal_softmax_kernel(float* scores, std::int64_t n, float scale, int sliding_window) {
  const std::int64_t row = blockIdx.x, i = row % n;
  float* s = scores + row * n;
  const std::int64_t first = sliding_window > 0 ? max(std::int64_t{0}, i - sliding_window + 1) : 0;
  __shared__ float partial[32];
  __shared__ float shared_value;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float m = -INFINITY;
  for (std::int64_t j = first + threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, s[j] * scale);
  m = warp_max(m);
  if (lane == 0) partial[warp] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = partial[0];
    for (int w = 1; w < warps; ++w) t = fmaxf(t, partial[w]);
    shared_value = t;
  }
  __syncthreads();
  m = shared_value;
  double sum = 0.0;
  for (std::int64_t j = first + threadIdx.x; j <= i; j += blockDim.x) {
    const float e = expf(s[j] * scale - m);
    s[j] = e;
    sum += e;
  }
  const float inv = static_cast<float>(1.0 / block_sum(sum));
  for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x) s[j] = (j >= first && j <= i) ? s[j] * inv : 0.0f;
}

__global__ void silu_mul_kernel(const float* gate, const float* up, std::int64_t n, float* out) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// ---- statistics

constexpr int kStatColumns = 32, kStatRowLanes = 8;

// A block takes 32 columns; its 8 row lanes sum every 8th row, then join in a fixed order.
__global__ void channel_stats_kernel(const float* x, std::int64_t rows, std::int64_t k, double* sum_sq,
                                     float* absmax) {
  const int c = threadIdx.x % kStatColumns, lane = threadIdx.x / kStatColumns;
  const std::int64_t j = blockIdx.x * std::int64_t{kStatColumns} + c;
  double s = 0.0;
  float m = 0.0f;
  if (j < k) {
    for (std::int64_t r = lane; r < rows; r += kStatRowLanes) {
      const float v = x[r * k + j];
      s += static_cast<double>(v) * v;
      m = fmaxf(m, fabsf(v));
    }
  }
  __shared__ double ssum[kStatRowLanes][kStatColumns];
  __shared__ float smax[kStatRowLanes][kStatColumns];
  ssum[lane][c] = s;
  smax[lane][c] = m;
  __syncthreads();
  if (lane != 0 || j >= k) return;
  for (int l = 1; l < kStatRowLanes; ++l) {
    s += ssum[l][c];
    m = fmaxf(m, smax[l][c]);
  }
  sum_sq[j] += s;
  if (absmax != nullptr) absmax[j] = fmaxf(absmax[j], m);
}

__global__ void add_upper_triangle_kernel(const float* chunk, std::int64_t k, double* acc) {
  const std::int64_t j = blockIdx.y, i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (i < k) {
    const std::int64_t t = i + j * k;
    if (i <= j) acc[t] += chunk[t];
  }
}

__global__ void scale_upper_kernel(double* a, std::int64_t k, double factor) {
  const std::int64_t j = blockIdx.y, i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (i < k) {
    const std::int64_t t = i + j * k;
    if (i <= j) a[t] *= factor;
  }
}

__global__ void mirror_upper_to_lower_kernel(double* a, std::int64_t k) {
  const std::int64_t j = blockIdx.y, i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (i < k) {
    const std::int64_t t = i + j * k;
    if (i > j) a[t] = a[j + i * k];
  }
}

__global__ void mirror_lower_to_upper_kernel(double* a, std::int64_t k) {
  const std::int64_t j = blockIdx.y, i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (i < k) {
    const std::int64_t t = i + j * k;
    if (i < j) a[t] = a[j + i * k];
  }
}

__global__ void squared_difference_kernel(const float* a, const float* b, std::int64_t count, double* out) {
  double s = 0.0;
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < count;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const double d = static_cast<double>(a[i]) - b[i];
    s += d * d;
  }
  s = block_sum(s);
  if (threadIdx.x == 0) atomicAdd(out, s);
}

// ---- weights

__device__ __forceinline__ float normal_code_value(const QuantizedLinearView& q, std::int64_t r, std::int64_t j) {
  if (q.format == NumberFormat::kInt8) {
    return static_cast<float>(static_cast<std::int8_t>(q.packed[r * q.k_normal + j]));
  }
  const std::uint8_t byte = q.packed[r * (q.k_normal / 2) + j / 2];
  const unsigned nibble = (j & 1) ? (byte >> 4) : (byte & 0x0Fu);
  if (q.format == NumberFormat::kFp4) return quant::fp4_decode(static_cast<std::uint8_t>(nibble));
  return static_cast<float>(static_cast<int>(nibble << 28) >> 28);  // sign-extended two's complement
}

// Reordered column j of row r, dequantized (quant::dequantize_rows).
__device__ __forceinline__ float dequantized_weight(const QuantizedLinearView& q, std::int64_t r, std::int64_t j) {
  const std::int64_t groups = q.k_normal / q.group;
  if (j < q.k_normal) return __fmul_rn(normal_code_value(q, r, j), fp16_value(q.scales[r * groups + j / q.group]));
  const std::int64_t o = j - q.k_normal;
  if (q.fp16_outliers != nullptr) return q.fp16_outliers[r * q.n_outliers + o];
  return __fmul_rn(static_cast<float>(q.outliers[r * q.n_outliers + o]), fp16_value(q.outlier_scales[r]));
}

__global__ void dequantize_f64_kernel(QuantizedLinearView q, double* out) {
  const std::int64_t k = q.k_normal + q.n_outliers, count = q.n * k;
  for (std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; t < count;
       t += std::int64_t{gridDim.x} * blockDim.x) {
    out[t] = dequantized_weight(q, t / k, t % k);
  }
}

__global__ void dequantize_f32_kernel(QuantizedLinearView q, const std::int32_t* perm, float* out) {
  const std::int64_t k = q.k_normal + q.n_outliers, count = q.n * k;
  for (std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; t < count;
       t += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t r = t / k, j = t % k;
    out[r * k + (perm != nullptr ? perm[j] : j)] = dequantized_weight(q, r, j);
  }
}

// ---- GPTQ

constexpr int kTile = 32;

// Transpose through shared memory: reads along a row of w (gathered by perm), writes along a column of wt.
__global__ void gather_columns_kernel(const float* w, std::int64_t n, std::int64_t k, const std::int32_t* perm,
                                      float* wt) {
  __shared__ float tile[kTile][kTile + 1];
  const std::int64_t j0 = blockIdx.x * std::int64_t{kTile}, r0 = blockIdx.y * std::int64_t{kTile};
  for (int dy = threadIdx.y; dy < kTile; dy += blockDim.y) {
    const std::int64_t r = r0 + dy, j = j0 + threadIdx.x;
    if (r < n && j < k) tile[dy][threadIdx.x] = w[r * k + perm[j]];
  }
  __syncthreads();
  for (int dy = threadIdx.y; dy < kTile; dy += blockDim.y) {
    const std::int64_t j = j0 + dy, r = r0 + threadIdx.x;
    if (r < n && j < k) wt[j * n + r] = tile[threadIdx.x][dy];
  }
}

__global__ void gather_symmetric_kernel(const double* h, std::int64_t k, const std::int32_t* perm, double* out) {
  const std::int64_t j = blockIdx.y, i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (i < k) {
    const std::int64_t t = i + j * k;
    out[t] = h[std::int64_t{perm[j]} * k + perm[i]];  // h and out symmetric: either order
  }
}

__global__ void add_to_diagonal_kernel(double* a, std::int64_t k, double value) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < k;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    a[i * k + i] += value;
  }
}

__global__ void upper_to_row_major_kernel(const double* a, std::int64_t k, float* u) {
  const std::int64_t j = blockIdx.y, i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (i < k) {
    // u row-major: u[j * k + i] = U(j, i) = a(j, i) for i >= j.
    u[j * k + i] = i >= j ? static_cast<float>(a[j + i * k]) : 0.0f;
  }
}

// Group g's scale of row r from the current columns (the CPU's group_scales).
__device__ __forceinline__ void set_group_scale(const GptqBlockArgs& a, std::int64_t r, std::int64_t g, float qmax) {
  float max_abs = 0.0f;
  for (std::int64_t j = g * a.group; j < (g + 1) * a.group; ++j) max_abs = fmaxf(fabsf(a.wt[j * a.n + r]), max_abs);
  a.scales[r * a.groups + g] = symmetric_scale_bits(max_abs, a.clip, qmax);
}

__global__ void gptq_block_kernel(GptqBlockArgs a) {
  const std::int64_t r = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (r >= a.n) return;
  const float qmax = quant::format_qmax(a.format);
  double loss = 0.0;
  for (std::int64_t i = a.begin; i < a.end; ++i) {
    if (!a.static_groups && i % a.group == 0) set_group_scale(a, r, i / a.group, qmax);
    const float d = a.u[i * a.k + i];
    const float scale = fp16_value(a.scales[r * a.groups + i / a.group]);
    const float w = a.wt[i * a.n + r];
    float dq;
    a.codes[i * a.n + r] = static_cast<std::int8_t>(quantize_value(w, scale, a.format, qmax, dq));
    const float diff = __fsub_rn(w, dq);
    loss += static_cast<double>(diff) * diff / (static_cast<double>(d) * d) / 2.0;
    const float e = __fdiv_rn(diff, d);
    a.err[(i - a.begin) * a.n + r] = e;
    const float* u_row = a.u + i * a.k;
    for (std::int64_t j = i + 1; j < a.end; ++j) {
      float* dst = a.wt + j * a.n + r;
      *dst = fmaf(-e, u_row[j], *dst);
    }
  }
  a.loss[r] += loss;
}

__global__ void gptq_group_scales_kernel(GptqBlockArgs a, std::int64_t groups) {
  const std::int64_t r = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (r >= a.n) return;
  const float qmax = quant::format_qmax(a.format);
  for (std::int64_t g = 0; g < groups; ++g) set_group_scale(a, r, g, qmax);
}

__global__ void pack_code_rows_kernel(const std::int8_t* codes, std::int64_t n, std::int64_t k_normal, bool packed,
                                      std::uint8_t* out) {
  const std::int64_t row_bytes = packed ? k_normal / 2 : k_normal, count = n * row_bytes;
  for (std::int64_t t = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; t < count;
       t += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t r = t % n, b = t / n;  // consecutive threads read consecutive rows of one column
    if (packed) {
      const unsigned lo = static_cast<std::uint8_t>(codes[(2 * b) * n + r]) & 0x0Fu;
      const unsigned hi = static_cast<std::uint8_t>(codes[(2 * b + 1) * n + r]) & 0x0Fu;
      out[r * row_bytes + b] = static_cast<std::uint8_t>(lo | (hi << 4));
    } else {
      out[r * row_bytes + b] = static_cast<std::uint8_t>(codes[b * n + r]);
    }
  }
}

}  // namespace

void fake_quantize_to_reordered_f64(const float* x, std::int64_t rows, std::int64_t k, const std::int32_t* perm,
                                    const ActQuantParams& p, double* out, cudaStream_t stream) {
  if (rows <= 0) return;
  fake_quantize_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, k, perm, p, ReorderedF64{out});
  ATOM_CUDA_CHECK_LAUNCH();
}

void fake_quantize_to_original_f32(const float* x, std::int64_t rows, std::int64_t k, const std::int32_t* perm,
                                   const ActQuantParams& p, float* out, cudaStream_t stream) {
  if (rows <= 0) return;
  fake_quantize_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, k, perm, p, OriginalF32{out});
  ATOM_CUDA_CHECK_LAUNCH();
}

void round_to_f32(const double* y, std::int64_t rows, std::int64_t n, const float* bias, bool accumulate,
                  float* out, cudaStream_t stream) {
  const std::int64_t count = rows * n;
  if (count <= 0) return;
  round_to_f32_kernel<<<blocks_for(count), kThreads, 0, stream>>>(y, count, n, bias, accumulate, out);
  ATOM_CUDA_CHECK_LAUNCH();
}

void rms_norm_rows(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps, float* y,
                   cudaStream_t stream) {
  if (rows <= 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, dim, weight, eps, y);
  ATOM_CUDA_CHECK_LAUNCH();
}

void apply_rope_rows(float* x, std::int64_t rows, std::int64_t stride, int heads, int head_dim, const float* cos,
                     const float* sin, cudaStream_t stream) {
  const std::int64_t count = rows * heads * (head_dim / 2);
  if (count <= 0) return;
  rope_kernel<<<blocks_for(count), kThreads, 0, stream>>>(x, rows, stride, heads, head_dim, cos, sin);
  ATOM_CUDA_CHECK_LAUNCH();
}

void kv_fake_quantize_rows(float* x, std::int64_t rows, std::int64_t width, int group, int bits, double* sums,
                           cudaStream_t stream) {
  const std::int64_t groups = rows * (width / group);
  if (groups <= 0) return;
  kv_fake_quantize_kernel<<<blocks_for(groups * 32), kThreads, 0, stream>>>(x, groups, group, bits, sums);
  ATOM_CUDA_CHECK_LAUNCH();
}

void causal_softmax(float* scores, int heads, std::int64_t n, float scale, int sliding_window, cudaStream_t stream) {
  if (heads <= 0 || n <= 0) return;
  causal_softmax_kernel<<<static_cast<unsigned>(heads * n), kThreads, 0, stream>>>(scores, n, scale, sliding_window);
  ATOM_CUDA_CHECK_LAUNCH();
}

void silu_mul(const float* gate, const float* up, std::int64_t n, float* out, cudaStream_t stream) {
  if (n <= 0) return;
  silu_mul_kernel<<<blocks_for(n), kThreads, 0, stream>>>(gate, up, n, out);
  ATOM_CUDA_CHECK_LAUNCH();
}

void channel_stats_accumulate(const float* x, std::int64_t rows, std::int64_t k, double* sum_sq, float* absmax,
                              cudaStream_t stream) {
  if (rows <= 0 || k <= 0) return;
  const auto blocks = static_cast<unsigned>((k + kStatColumns - 1) / kStatColumns);
  channel_stats_kernel<<<blocks, kStatColumns * kStatRowLanes, 0, stream>>>(x, rows, k, sum_sq, absmax);
  ATOM_CUDA_CHECK_LAUNCH();
}

void add_upper_triangle(const float* chunk, std::int64_t k, double* acc, cudaStream_t stream) {
  add_upper_triangle_kernel<<<square_grid(k), kThreads, 0, stream>>>(chunk, k, acc);
  ATOM_CUDA_CHECK_LAUNCH();
}

void scale_and_symmetrize_upper(double* a, std::int64_t k, double factor, cudaStream_t stream) {
  scale_upper_kernel<<<square_grid(k), kThreads, 0, stream>>>(a, k, factor);
  ATOM_CUDA_CHECK_LAUNCH();
  mirror_upper_to_lower_kernel<<<square_grid(k), kThreads, 0, stream>>>(a, k);
  ATOM_CUDA_CHECK_LAUNCH();
}

void squared_difference_sum(const float* a, const float* b, std::int64_t count, double* out, cudaStream_t stream) {
  ATOM_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), stream));
  if (count <= 0) return;
  squared_difference_kernel<<<std::min(blocks_for(count), 1024), kThreads, 0, stream>>>(a, b, count, out);
  ATOM_CUDA_CHECK_LAUNCH();
}

void dequantize_linear_f64(const QuantizedLinearView& q, double* out, cudaStream_t stream) {
  const std::int64_t count = q.n * (q.k_normal + q.n_outliers);
  if (count <= 0) return;
  dequantize_f64_kernel<<<blocks_for(count), kThreads, 0, stream>>>(q, out);
  ATOM_CUDA_CHECK_LAUNCH();
}

void dequantize_linear_f32(const QuantizedLinearView& q, const std::int32_t* perm, float* out, cudaStream_t stream) {
  const std::int64_t count = q.n * (q.k_normal + q.n_outliers);
  if (count <= 0) return;
  dequantize_f32_kernel<<<blocks_for(count), kThreads, 0, stream>>>(q, perm, out);
  ATOM_CUDA_CHECK_LAUNCH();
}

void gather_columns(const float* w, std::int64_t n, std::int64_t k, const std::int32_t* perm, float* wt,
                    cudaStream_t stream) {
  if (n <= 0 || k <= 0) return;
  const dim3 grid(static_cast<unsigned>((k + kTile - 1) / kTile), static_cast<unsigned>((n + kTile - 1) / kTile));
  gather_columns_kernel<<<grid, dim3(kTile, 8), 0, stream>>>(w, n, k, perm, wt);
  ATOM_CUDA_CHECK_LAUNCH();
}

void gather_symmetric(const double* h, std::int64_t k, const std::int32_t* perm, double* out, cudaStream_t stream) {
  gather_symmetric_kernel<<<square_grid(k), kThreads, 0, stream>>>(h, k, perm, out);
  ATOM_CUDA_CHECK_LAUNCH();
}

void add_to_diagonal(double* a, std::int64_t k, double value, cudaStream_t stream) {
  add_to_diagonal_kernel<<<blocks_for(k), kThreads, 0, stream>>>(a, k, value);
  ATOM_CUDA_CHECK_LAUNCH();
}

void mirror_lower_to_upper(double* a, std::int64_t k, cudaStream_t stream) {
  mirror_lower_to_upper_kernel<<<square_grid(k), kThreads, 0, stream>>>(a, k);
  ATOM_CUDA_CHECK_LAUNCH();
}

void upper_to_row_major_f32(const double* a, std::int64_t k, float* u, cudaStream_t stream) {
  upper_to_row_major_kernel<<<square_grid(k), kThreads, 0, stream>>>(a, k, u);
  ATOM_CUDA_CHECK_LAUNCH();
}

void gptq_quantize_block(const GptqBlockArgs& a, cudaStream_t stream) {
  constexpr int kRowsPerBlock = 64;  // small blocks: a few thousand rows still fill the SMs
  gptq_block_kernel<<<blocks_for(a.n, kRowsPerBlock), kRowsPerBlock, 0, stream>>>(a);
  ATOM_CUDA_CHECK_LAUNCH();
}

void gptq_group_scales(const GptqBlockArgs& a, std::int64_t k_normal, cudaStream_t stream) {
  constexpr int kRowsPerBlock = 64;  // small blocks: a few thousand rows still fill the SMs
  gptq_group_scales_kernel<<<blocks_for(a.n, kRowsPerBlock), kRowsPerBlock, 0, stream>>>(a, k_normal / a.group);
  ATOM_CUDA_CHECK_LAUNCH();
}

void pack_code_rows(const std::int8_t* codes, std::int64_t n, std::int64_t k_normal, bool packed,
                    std::uint8_t* out, cudaStream_t stream) {
  const std::int64_t count = n * (packed ? k_normal / 2 : k_normal);
  if (count <= 0) return;
  pack_code_rows_kernel<<<blocks_for(count), kThreads, 0, stream>>>(codes, n, k_normal, packed, out);
  ATOM_CUDA_CHECK_LAUNCH();
}

}  // namespace atom::cuda::calib
