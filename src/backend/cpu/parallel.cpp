#include "backend/cpu/parallel.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <vector>

namespace atom::cpu {

namespace {

double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double measure_region_cost_us() {
  if (omp_get_max_threads() <= 1) return 0.0;
  constexpr int kWarmUp = 4, kSamples = 24;
  constexpr double kGapUs = 20.0;  // the calling thread alone between regions, as between a step's ops
  std::vector<double> samples;
  std::atomic<int> sink{0};
  for (int i = 0; i < kWarmUp + kSamples; ++i) {
    const double gap_end = now_us() + kGapUs;
    while (now_us() < gap_end) {
    }
    const double t0 = now_us();
#pragma omp parallel
    { sink.fetch_add(1, std::memory_order_relaxed); }
    if (i >= kWarmUp) samples.push_back(now_us() - t0);
  }
  std::nth_element(samples.begin(), samples.begin() + kSamples / 2, samples.end());
  return samples[kSamples / 2];
}

std::atomic<double> g_cost_us{-1.0};
std::mutex g_measure;

}  // namespace

double parallel_region_cost_us() {
  double cost = g_cost_us.load(std::memory_order_relaxed);
  if (cost >= 0.0) return cost;
  const std::lock_guard<std::mutex> lock(g_measure);
  cost = g_cost_us.load();
  if (cost < 0.0) {
    cost = measure_region_cost_us();
    g_cost_us.store(cost);
  }
  return cost;
}

void set_parallel_region_cost_us(double us) { g_cost_us.store(us); }

bool worth_parallel(double serial_us) {
  const int threads = omp_get_max_threads();
  if (threads <= 1 || omp_in_parallel()) return false;
  const double saved = serial_us * (1.0 - 1.0 / threads);
  return saved > 2.0 * parallel_region_cost_us();
}

}  // namespace atom::cpu
