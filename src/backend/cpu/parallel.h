#pragma once
// When an op should open an OpenMP parallel region. A region costs a fork and a join, which depends on the
// machine and on how the threads wait: about 1 us with libgomp's default (spinning) waits, 30-55 us with
// OMP_WAIT_POLICY=passive on the 2-core dev machine (a futex wake-up and a sleep each; bench/backend/cpu/
// omp_fork_join). A decode step of a small model is mostly ops of 5-100 us, so a fixed size threshold is
// wrong under one policy or the other: ops ask here instead, with their own estimate of their serial time.
// The choice never changes results: parallel ops split independent rows or tiles.
#include <cstdint>

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

}  // namespace atom::cpu
