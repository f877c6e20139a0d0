// What one OpenMP parallel region costs on this machine (the CPU backend opens one per parallelized op):
// an empty `#pragma omp parallel`, a parallel for of trivial work, and a barrier inside one region, each
// timed over many repetitions; with the thread count and OMP_WAIT_POLICY of the environment.
//   OMP_NUM_THREADS=2 [OMP_WAIT_POLICY=passive] omp_fork_join [--reps 20000] [--gap-us 0]
// --gap-us: the calling thread works alone this long between regions (a decode step's serial ops), during
// which the other threads spin, then sleep: with libgomp's default waits a short gap keeps them spinning.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void spin_for(double us) {
  const double end = now_us() + us;
  while (now_us() < end) {
  }
}

volatile float g_sink = 0.0f;

}  // namespace

int main(int argc, char** argv) {
  int reps = 20000;
  double gap_us = 0.0;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--gap-us") && i + 1 < argc) gap_us = std::atof(argv[++i]);
    else {
      std::fprintf(stderr, "usage: omp_fork_join [--reps N] [--gap-us US]\n");
      return 2;
    }
  }
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  std::printf("threads %d, OMP_WAIT_POLICY=%s, gap %.1f us between regions, %d repetitions\n",
              omp_get_max_threads(), policy ? policy : "unset", gap_us, reps);
  std::vector<float> data(4096, 1.0f);
  auto time_it = [&](const char* what, auto&& body) {
    for (int r = 0; r < 200; ++r) body();  // warm-up
    std::vector<double> samples;
    samples.reserve(static_cast<std::size_t>(reps));
    for (int r = 0; r < reps; ++r) {
      if (gap_us > 0) spin_for(gap_us);
      const double t0 = now_us();
      body();
      samples.push_back(now_us() - t0);
    }
    std::sort(samples.begin(), samples.end());
    const auto at = [&](double q) { return samples[static_cast<std::size_t>(q * (samples.size() - 1))]; };
    std::printf("%-34s median %7.2f us, p90 %7.2f us, p99 %7.2f us\n", what, at(0.5), at(0.9), at(0.99));
  };
  time_it("empty parallel region", [] {
#pragma omp parallel
    { g_sink = g_sink + 0.0f; }
  });
  time_it("parallel for over 4096 floats", [&] {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < 4096; ++i) data[static_cast<std::size_t>(i)] *= 1.0000001f;
  });
  time_it("4 barriers in one region", [] {
#pragma omp parallel
    {
#pragma omp barrier
#pragma omp barrier
#pragma omp barrier
#pragma omp barrier
    }
  });
  return 0;
}
