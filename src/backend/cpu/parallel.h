#pragma once
// How the CPU ops split work over threads.
//
// A parallel region costs a fork and a join, which depends on the machine and on how OpenMP's threads wait:
// about 1 us with libgomp's default (spinning) waits, 30-55 us with OMP_WAIT_POLICY=passive on the 2-core dev
// machine (a futex wake-up and a sleep each, barriers alike; bench/backend/cpu/omp_fork_join). A decode step
// of a small model is mostly ops of 5-100 us. So:
//  - outside a forward team, an op opens an OpenMP region only when splitting its estimated serial time saves
//    more than twice a region's cost, measured on first use (worth_parallel);
//  - a decode-sized forward of a model whose ops all split through parallel_for runs on a team: worker
//    threads of our own (OpenMP's thread count less one, kept for the process) that spin for up to 100 us
//    after each job and then sleep until the next, so an op hands out work for about what a spinning wait
//    costs, whatever OMP_WAIT_POLICY says, and an idle process sleeps. Any thread may take any unit of a
//    job, the leader too: a worker the OS has not scheduled never holds the leader up.
// Neither choice changes results: parallel ops split independent rows, tiles or items.
#include <cstdint>
#include <functional>
#include <type_traits>

namespace atom::cpu {

// Median cost of one parallel region as measured on first use (an empty region after a short gap, as
// between the ops of a decode step), in microseconds; 0 with one OpenMP thread.
double parallel_region_cost_us();

// Whether `serial_us` of work, split over the OpenMP threads, finishes sooner than on the calling thread
// alone by more than twice the region's cost. False with one thread or inside a parallel region.
bool worth_parallel(double serial_us);

// Serial-time estimates of the CPU kernels' work units, measured on the dev machine (one core, Zen 4):
// integer multiply-adds of the Atom and int8 products; query-key pairs of attention (head_dim 64, reading
// INT4 codes); elements of the light row-wise ops (norms, RoPE, activation quantization, adds).
inline constexpr double kIntMacsPerUs = 20000.0;
inline constexpr double kAttentionPairsPerUs = 120.0;
inline constexpr double kRowElementsPerUs = 1000.0;

// Overrides the measured cost (tests; < 0 measures again on next use).
void set_parallel_region_cost_us(double us);
// What handing an op's work to a forward team is taken to cost (default 1 us, about a spinning wait's
// fork/join; tests set 0 to split every op).
void set_team_hand_out_cost_us(double us);

enum class Schedule { kStatic, kDynamic };

// Runs body(begin, end) over [0, n): kStatic in one contiguous chunk per thread, kDynamic one index at a time
// to whichever thread is free. On the active forward team if the calling thread leads one (when the split
// saves more than twice a hand-out's cost), else in an OpenMP region if worth_parallel(serial_us), else on
// the calling thread as body(0, n). On a team, an exception from body reaches the caller once every unit of
// the job has ended (inside an OpenMP region it ends the process, as OpenMP has it).
void parallel_for_impl(std::int64_t n, double serial_us, Schedule schedule,
                       void (*call)(void*, std::int64_t, std::int64_t), void* body);

template <class Body>
void parallel_for(std::int64_t n, double serial_us, Schedule schedule, Body&& body) {
  using B = std::remove_reference_t<Body>;
  parallel_for_impl(
      n, serial_us, schedule,
      [](void* b, std::int64_t begin, std::int64_t end) { (*static_cast<B*>(b))(begin, end); },
      const_cast<void*>(static_cast<const void*>(&body)));
}

// Runs `body` on the calling thread with the team's workers taking the ops' units inside (parallel_for);
// body's exceptions reach the caller. Runs body plainly with one thread, inside a parallel region or a
// team's job, or while another thread's forward holds the team.
void run_with_forward_team(const std::function<void()>& body);

// Whether the calling thread leads a forward team now.
bool forward_team_active();

}  // namespace atom::cpu
