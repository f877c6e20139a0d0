#include "backend/cpu/parallel.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <thread>
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

// What handing an op's work to a waiting team costs (a release store, the workers' acquire loads, the
// leader's wait on a counter): on the order of the spinning fork/join, ~1 us.
std::atomic<double> g_team_hand_out_us{1.0};

// The other threads of a forward's OpenMP region, waiting for the leader's jobs. One job at a time: the
// leader publishes it by bumping `epoch` (release) and waits until `pending` drops to 0.
class ForwardTeam {
 public:
  int threads() const { return threads_; }
  // The region's actual thread count, set by the leader before its first job (the workers read it after
  // that job's release).
  void set_threads(int threads) { threads_ = threads; }

  void run(std::int64_t n, Schedule schedule, void (*call)(void*, std::int64_t, std::int64_t), void* body) {
    n_ = n;
    schedule_ = schedule;
    call_ = call;
    body_ = body;
    next_.store(0, std::memory_order_relaxed);
    pending_.store(threads_ - 1, std::memory_order_relaxed);
    epoch_.fetch_add(1, std::memory_order_release);
    work(0);
    while (pending_.load(std::memory_order_acquire) != 0) _mm_pause();
  }

  // Thread t (>= 1) of the region: jobs until stop().
  void serve(int t) {
    std::uint64_t seen = 0;
    for (;;) {
      std::uint64_t e;
      int spins = 0;
      // Spin (pause) while the leader runs its serial parts, yielding the core now and then so that an
      // oversubscribed machine's other threads still run.
      while ((e = epoch_.load(std::memory_order_acquire)) == seen) {
        _mm_pause();
        if (++spins == kSpinsBeforeYield) {
          spins = 0;
          std::this_thread::yield();
        }
      }
      seen = e;
      if (stop_.load(std::memory_order_acquire)) return;
      work(t);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  void stop() {
    stop_.store(true, std::memory_order_release);
    epoch_.fetch_add(1, std::memory_order_release);
  }

 private:
  static constexpr int kSpinsBeforeYield = 2000;  // ~10-20 us of pause

  void work(int t) {
    if (schedule_ == Schedule::kDynamic) {
      for (std::int64_t i; (i = next_.fetch_add(1, std::memory_order_relaxed)) < n_;) call_(body_, i, i + 1);
      return;
    }
    const std::int64_t chunk = (n_ + threads_ - 1) / threads_;
    const std::int64_t begin = std::min(n_, t * chunk), end = std::min(n_, begin + chunk);
    if (begin < end) call_(body_, begin, end);
  }

  int threads_ = 1;
  std::int64_t n_ = 0;
  Schedule schedule_ = Schedule::kStatic;
  void (*call_)(void*, std::int64_t, std::int64_t) = nullptr;
  void* body_ = nullptr;
  std::atomic<std::uint64_t> epoch_{0};
  std::atomic<std::int64_t> next_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

thread_local ForwardTeam* t_team = nullptr;  // set on the leader while it runs a forward's body

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
void set_team_hand_out_cost_us(double us) { g_team_hand_out_us.store(us); }

bool worth_parallel(double serial_us) {
  const int threads = omp_get_max_threads();
  if (threads <= 1 || omp_in_parallel()) return false;
  const double saved = serial_us * (1.0 - 1.0 / threads);
  return saved > 2.0 * parallel_region_cost_us();
}

bool forward_team_active() { return t_team != nullptr; }

void parallel_for_impl(std::int64_t n, double serial_us, Schedule schedule,
                       void (*call)(void*, std::int64_t, std::int64_t), void* body) {
  if (n <= 0) return;
  if (ForwardTeam* team = t_team) {
    if (n > 1 && serial_us * (1.0 - 1.0 / team->threads()) > 2.0 * g_team_hand_out_us.load(std::memory_order_relaxed)) {
      team->run(n, schedule, call, body);
    } else {
      call(body, 0, n);
    }
    return;
  }
  if (n == 1 || !worth_parallel(serial_us)) {
    call(body, 0, n);
    return;
  }
  if (schedule == Schedule::kDynamic) {
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t i = 0; i < n; ++i) call(body, i, i + 1);
    return;
  }
#pragma omp parallel
  {
    const std::int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const std::int64_t chunk = (n + threads - 1) / threads;
    const std::int64_t begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    if (begin < end) call(body, begin, end);
  }
}

void run_with_forward_team(const std::function<void()>& body) {
  if (omp_get_max_threads() <= 1 || omp_in_parallel() || t_team != nullptr) {
    body();
    return;
  }
  std::exception_ptr error;
  ForwardTeam team;
#pragma omp parallel
  {
    if (omp_get_thread_num() == 0) {
      team.set_threads(omp_get_num_threads());
      t_team = &team;
      try {
        body();
      } catch (...) {
        error = std::current_exception();
      }
      t_team = nullptr;
      team.stop();
    } else {
      team.serve(omp_get_thread_num());
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace atom::cpu
