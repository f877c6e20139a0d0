#include "backend/cpu/parallel.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
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

thread_local bool t_in_unit = false;  // running a unit of a team's job: no nested splitting

// The worker threads of forward teams (OpenMP's thread count less one), started on first use and kept for
// the process: a forward's leader hands them jobs, and between forwards they sleep. (Not OpenMP's own
// threads: a region's end would wait for every one of them, which on an oversubscribed machine means
// waiting for the OS to schedule each, and with spinning waits the leader spins meanwhile.)
// The workers wait for the leader's jobs. A job is cut into units
// (static: one contiguous chunk per thread; dynamic: one index each) that any thread may claim, the leader
// included: a worker the OS has not scheduled (an oversubscribed machine) never holds the leader up, the
// leader then runs its units too. Claims carry the job's epoch (claim_ = epoch << 32 | next unit), so a
// worker that wakes late cannot take a unit of a later job; the job's fields are atomics for the same reason
// (a late worker may read them while the leader writes the next job's, and then fails its claim).
// Between jobs a worker spins (pause) for up to kSpinUs, then sleeps on the epoch (futex) until the next job;
// it sleeps at once after a job in which it got no unit: on an oversubscribed machine its spinning would
// take CPU time from the leader, which then does the work anyway.
class ForwardTeam {
 public:
  explicit ForwardTeam(int threads) : threads_(threads) {
    for (int t = 1; t < threads; ++t) workers_.emplace_back([this] { serve(); });
  }
  ~ForwardTeam() {
    stop();
    for (std::thread& w : workers_) w.join();
  }
  ForwardTeam(const ForwardTeam&) = delete;
  ForwardTeam& operator=(const ForwardTeam&) = delete;
  int threads() const { return threads_; }

  void run(std::int64_t n, Schedule schedule, void (*call)(void*, std::int64_t, std::int64_t), void* body) {
    const std::uint32_t e = epoch_.load(std::memory_order_relaxed) + 1;
    const std::int64_t units = schedule == Schedule::kDynamic ? n : std::min<std::int64_t>(n, threads_);
    // Close the claim word to every late claim first (epoch e, no unit left), then rewrite the fields with
    // release stores: a worker whose acquire load of any field sees this job's value then also sees the closed
    // claim word, so its claim of an earlier job fails (work() reads the fields before claiming).
    claim_.store((std::uint64_t{e} << 32) | kNoUnit, std::memory_order_relaxed);
    n_.store(n, std::memory_order_release);
    units_.store(units, std::memory_order_release);
    dynamic_.store(schedule == Schedule::kDynamic, std::memory_order_release);
    call_.store(call, std::memory_order_release);
    body_.store(body, std::memory_order_release);
    done_.store(0, std::memory_order_relaxed);
    claim_.store(std::uint64_t{e} << 32, std::memory_order_release);
    publish(e);
    work(e);
    for (int spins = 0; done_.load(std::memory_order_acquire) != units;) pause_or_yield(spins);
    std::exception_ptr error;
    {
      const std::lock_guard<std::mutex> lock(error_mutex_);
      std::swap(error, error_);
    }
    if (error) std::rethrow_exception(error);  // every unit has ended: nothing refers to body any more
  }

  void stop() {
    stop_.store(true, std::memory_order_relaxed);
    publish(epoch_.load(std::memory_order_relaxed) + 1);
  }

 private:
  // A worker: jobs until stop().
  void serve() {
    std::uint32_t seen = 0;
    bool useful = true;  // got a unit of the last job
    for (;;) {
      std::uint32_t e;
      const auto spin_end = std::chrono::steady_clock::now() + std::chrono::microseconds(useful ? kSpinUs : 0);
      for (int spins = 0; (e = epoch_.load(std::memory_order_acquire)) == seen;) {
        _mm_pause();
        if (++spins % 256 == 0 && std::chrono::steady_clock::now() >= spin_end) {
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          epoch_.wait(seen, std::memory_order_seq_cst);  // returns at once if the epoch moved meanwhile
          sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        }
      }
      seen = e;
      if (stop_.load(std::memory_order_acquire)) return;
      useful = work(e) > 0;
    }
  }

  static constexpr int kSpinUs = 100;  // longer than the gaps between a decode step's parallel ops
  static constexpr std::uint64_t kNoUnit = 0xFFFFFFFFu;  // a claim word's unit while the job is being set up

  void publish(std::uint32_t e) {
    epoch_.store(e, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) epoch_.notify_all();
  }

  static void pause_or_yield(int& spins) {
    _mm_pause();
    if (++spins == 2000) {  // ~10-20 us of pause
      spins = 0;
      std::this_thread::yield();
    }
  }

  // Claims and runs units of job e until none is left (or the job is no longer e); returns how many it ran.
  int work(std::uint32_t e) {
    int ran = 0;
    for (;;) {
      std::uint64_t c = claim_.load(std::memory_order_acquire);
      if ((c >> 32) != e) return ran;
      // The job's fields, read after its open claim word and before claiming: if the leader has moved on to a
      // later job meanwhile and any of these loads sees that job's value, the claim below fails (run()).
      const std::int64_t n = n_.load(std::memory_order_acquire), units = units_.load(std::memory_order_acquire);
      const bool dynamic = dynamic_.load(std::memory_order_acquire);
      void (*call)(void*, std::int64_t, std::int64_t) = call_.load(std::memory_order_acquire);
      void* body = body_.load(std::memory_order_acquire);
      const std::int64_t unit = static_cast<std::int64_t>(c & 0xFFFFFFFFu);
      if (unit >= units) return ran;
      if (!claim_.compare_exchange_strong(c, c + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      t_in_unit = true;
      try {
        if (dynamic) {
          call(body, unit, unit + 1);
        } else {
          const std::int64_t chunk = (n + units - 1) / units;
          const std::int64_t begin = std::min(n, unit * chunk), end = std::min(n, begin + chunk);
          if (begin < end) call(body, begin, end);
        }
      } catch (...) {  // kept for the leader, which rethrows it once the job's other units have ended
        const std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      t_in_unit = false;
      done_.fetch_add(1, std::memory_order_release);
      ++ran;
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::atomic<std::int64_t> n_{0}, units_{0};
  std::atomic<bool> dynamic_{false};
  std::atomic<void (*)(void*, std::int64_t, std::int64_t)> call_{nullptr};
  std::atomic<void*> body_{nullptr};
  std::atomic<std::uint32_t> epoch_{0};
  std::atomic<std::uint64_t> claim_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<std::int64_t> done_{0};
  std::atomic<bool> stop_{false};
  std::mutex error_mutex_;
  std::exception_ptr error_;  // the first exception of the current job's units
};

thread_local ForwardTeam* t_team = nullptr;  // set on the leader while it runs a forward's body

std::mutex g_team_mutex;  // one forward on the team at a time
std::unique_ptr<ForwardTeam> g_team;

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
  if (t_in_unit) {
    call(body, 0, n);
    return;
  }
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
  const int threads = omp_get_max_threads();
  if (threads <= 1 || omp_in_parallel() || t_team != nullptr || t_in_unit) {
    body();
    return;
  }
  std::unique_lock<std::mutex> lock(g_team_mutex, std::try_to_lock);
  if (!lock.owns_lock()) {  // another thread's forward holds the team: this one splits in OpenMP regions
    body();
    return;
  }
  if (!g_team || g_team->threads() != threads) {
    g_team.reset();
    g_team = std::make_unique<ForwardTeam>(threads);
  }
  t_team = g_team.get();
  try {
    body();
  } catch (...) {
    t_team = nullptr;
    throw;
  }
  t_team = nullptr;
}

}  // namespace atom::cpu
