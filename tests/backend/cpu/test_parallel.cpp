// The parallel-region cost model: measured once, overridable, and the decision it gives.
#include <gtest/gtest.h>
#include <omp.h>

#include "backend/cpu/parallel.h"

namespace atom::cpu {
namespace {

TEST(Parallel, RegionCostIsMeasuredOnceAndDecidesBySavedTime) {
  const int before = omp_get_max_threads();
  omp_set_num_threads(2);
  set_parallel_region_cost_us(-1.0);
  const double measured = parallel_region_cost_us();
  EXPECT_GT(measured, 0.0);     // a fork and a join take some time
  EXPECT_LT(measured, 1.0e5);   // and not 0.1 s
  EXPECT_EQ(parallel_region_cost_us(), measured);  // kept
  set_parallel_region_cost_us(10.0);
  // Two threads save half the serial time; worth it above twice the cost.
  EXPECT_FALSE(worth_parallel(40.0));
  EXPECT_TRUE(worth_parallel(41.0));
  bool inside = true;
#pragma omp parallel num_threads(2)
  {
#pragma omp master
    inside = worth_parallel(1e9);  // never nested
  }
  EXPECT_FALSE(inside);
  omp_set_num_threads(1);
  EXPECT_FALSE(worth_parallel(1e9));  // one thread: nothing to split over
  omp_set_num_threads(before);
  set_parallel_region_cost_us(-1.0);
}

}  // namespace
}  // namespace atom::cpu
