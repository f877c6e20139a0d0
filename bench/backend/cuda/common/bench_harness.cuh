#pragma once
// The timing and validation harness of the GPU benchmarks (bench/backend/cuda/*/bench_*.cu):
//  - DeviceBuffer: move-only device memory with host upload / download;
//  - timing: cudaEvent around each launch with the median over the timed launches (event_median_ms), or
//    CUDA-graph replays of a captured batch of launches with the median replay over the batch size
//    (GraphTimer); launch(i) gets the launch index, so that a benchmark rotates through input copies;
//  - L2: rotation_count() says how many input copies a rotation needs to touch a given number of bytes
//    (beyond L2, so that no timed launch is served from it); l2_cache_bytes() is the device's L2;
//  - the ceilings: copy_bandwidth_gbps(), the device-to-device copy bandwidth (bytes read + written);
//  - validation: RelErrorNorm (||got - want|| / ||want|| over sampled outputs), fp16_ulp();
//  - tables: markdown_header() for the summary tables.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/common/cuda_check.h"

namespace atom::bench {

// ---------------------------------------------------------------- device memory
// `count` elements of T on the device (none, and a null pointer, for count 0).
template <class T>
struct DeviceBuffer {
  T* p = nullptr;
  std::size_t n = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) : n(count) {
    if (n) ATOM_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
  }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p(o.p), n(o.n) {
    o.p = nullptr;
    o.n = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(p, o.p);
    std::swap(n, o.n);
    return *this;
  }
  std::size_t bytes() const { return n * sizeof(T); }
  void upload(const std::vector<T>& h) {
    ATOM_CUDA_CHECK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download(std::size_t count) const {
    std::vector<T> h(count);
    if (count) ATOM_CUDA_CHECK(cudaMemcpy(h.data(), p, count * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  std::vector<T> download() const { return download(n); }
};

// ---------------------------------------------------------------- timing
// The upper median (v[size / 2] of the sorted values).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs launch(0 .. iters - 1) on `stream`, each between two events, and returns the median time in ms of
// the launches after the first `warmup`.
inline double event_median_ms(const std::function<void(int)>& launch, int iters, int warmup,
                              cudaStream_t stream = nullptr) {
  cudaEvent_t e0, e1;
  ATOM_CUDA_CHECK(cudaEventCreate(&e0));
  ATOM_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<double> ms;
  for (int it = 0; it < iters; ++it) {
    ATOM_CUDA_CHECK(cudaEventRecord(e0, stream));
    launch(it);
    ATOM_CUDA_CHECK(cudaEventRecord(e1, stream));
    ATOM_CUDA_CHECK(cudaEventSynchronize(e1));
    float t;
    ATOM_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    if (it >= warmup) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return median(std::move(ms));
}

// CUDA-graph batch timing: one warm-up launch, an estimate from three launches, then a graph of a batch of
// launches (about 2 ms of work, 3 to 200 launches) replayed `replays` times.
struct GraphTimer {
  cudaStream_t stream;
  // Median over graph replays of (replay time / launches per replay), in microseconds. launch(i) enqueues the
  // i-th launch of the batch on `stream` (rotating inputs by i).
  double median_us(const std::function<void(int)>& launch, int replays = 9) const {
    launch(0);
    ATOM_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaEvent_t e0, e1;
    ATOM_CUDA_CHECK(cudaEventCreate(&e0));
    ATOM_CUDA_CHECK(cudaEventCreate(&e1));
    ATOM_CUDA_CHECK(cudaEventRecord(e0, stream));
    for (int i = 0; i < 3; ++i) launch(i);
    ATOM_CUDA_CHECK(cudaEventRecord(e1, stream));
    ATOM_CUDA_CHECK(cudaEventSynchronize(e1));
    float est_ms = 0;
    ATOM_CUDA_CHECK(cudaEventElapsedTime(&est_ms, e0, e1));
    est_ms /= 3;
    const int batch = std::clamp(static_cast<int>(2.0 / std::max(est_ms, 1e-4f)), 3, 200);
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    ATOM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < batch; ++i) launch(i);
    ATOM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    ATOM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    ATOM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    std::vector<float> t(replays);
    for (int r = 0; r < replays; ++r) {
      ATOM_CUDA_CHECK(cudaEventRecord(e0, stream));
      ATOM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      ATOM_CUDA_CHECK(cudaEventRecord(e1, stream));
      ATOM_CUDA_CHECK(cudaEventSynchronize(e1));
      ATOM_CUDA_CHECK(cudaEventElapsedTime(&t[r], e0, e1));
    }
    ATOM_CUDA_CHECK(cudaGraphExecDestroy(exec));
    ATOM_CUDA_CHECK(cudaGraphDestroy(graph));
    ATOM_CUDA_CHECK(cudaEventDestroy(e0));
    ATOM_CUDA_CHECK(cudaEventDestroy(e1));
    std::sort(t.begin(), t.end());
    return 1000.0 * t[replays / 2] / batch;
  }
};

// ---------------------------------------------------------------- L2 and input rotation
// Copies of a set of `set_bytes` that a rotation needs so that it spans at least `touch_bytes`
// (ceil(touch / set), clamped to [1, max_copies]).
inline int rotation_count(double set_bytes, double touch_bytes, int max_copies) {
  return static_cast<int>(
      std::clamp(std::ceil(touch_bytes / std::max(set_bytes, 1.0)), 1.0, static_cast<double>(max_copies)));
}

// The current device's L2 size in bytes.
inline std::size_t l2_cache_bytes() {
  int device = 0, bytes = 0;
  ATOM_CUDA_CHECK(cudaGetDevice(&device));
  ATOM_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrL2CacheSize, device));
  return static_cast<std::size_t>(bytes);
}

// ---------------------------------------------------------------- ceilings
// Device-to-device copy of 1 GiB, event-timed (median of 10 after 3 warm-up copies): GB/s read + written.
inline double copy_bandwidth_gbps() {
  const std::size_t bytes = std::size_t{1} << 30;
  DeviceBuffer<std::uint8_t> a(bytes), b(bytes);
  ATOM_CUDA_CHECK(cudaMemset(a.p, 1, bytes));
  const double ms = event_median_ms(
      [&](int) { ATOM_CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice)); }, 13, 3);
  return 2.0 * bytes / (ms * 1e-3) / 1e9;
}

// ---------------------------------------------------------------- validation
// Relative L2 error ||got - want|| / ||want|| of sampled outputs; infinite when an output is not finite.
struct RelErrorNorm {
  double num = 0, den = 0;
  void add(double got, double want) {
    num += (got - want) * (got - want);
    den += want * want;
  }
  double rel() const { return std::isfinite(num) ? std::sqrt(num / std::max(den, 1e-30)) : INFINITY; }
};

// The spacing of fp16 values near v (the normal spacing at the smallest normal for subnormal values).
inline double fp16_ulp(double v) {
  return std::exp2(std::floor(std::log2(std::max(std::fabs(v), 6.103515625e-05))) - 10);
}

// ---------------------------------------------------------------- tables
// "| a | b |\n|---|---|\n": the header of a markdown table.
inline std::string markdown_header(const std::vector<std::string>& columns) {
  std::string head = "|", rule = "|";
  for (const std::string& c : columns) {
    head += " " + c + " |";
    rule += "---|";
  }
  return head + "\n" + rule + "\n";
}

}  // namespace atom::bench
