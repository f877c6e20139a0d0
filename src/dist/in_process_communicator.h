#pragma once
// Tensor-parallel ranks as threads of one process: the communicator of the CPU tests of sharding, and of a
// CPU run of a sharded model. Deterministic: every rank sums the ranks' buffers itself in rank order
// 0, 1, ..., N-1 (left to right, fp32), so results do not depend on thread timing and are the same bits on
// every rank.
//
//   InProcessGroup group(4);
//   run_ranks(group, [&](Communicator& comm) { ... comm.all_reduce_sum(x); ... });
//
// A rank that throws aborts the group: ranks waiting in a collective throw too, instead of waiting forever,
// and run_ranks rethrows the first rank's error.
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "common/error.h"
#include "dist/communicator.h"

namespace atom::dist {

// What a rank waiting in a collective throws when another rank has failed (the failure itself is the error
// that matters; run_ranks reports it in preference to these).
class GroupAborted : public Error {
 public:
  GroupAborted() : Error("in-process group: aborted (another rank failed)") {}
};

class InProcessGroup {
 public:
  // Throws atom::Error naming world_size unless 1 <= world_size <= 1024.
  explicit InProcessGroup(int world_size);
  ~InProcessGroup();
  InProcessGroup(const InProcessGroup&) = delete;
  InProcessGroup& operator=(const InProcessGroup&) = delete;

  int world_size() const { return world_size_; }
  // Rank `rank`'s endpoint, owned by the group (one thread uses it at a time).
  Communicator& communicator(int rank);

  // Wakes every rank waiting in a collective with an atom::Error; later collectives fail at once.
  void abort();

 private:
  friend class InProcessCommunicator;
  // Waits until every rank has arrived (a reusable barrier); throws once aborted.
  void arrive_and_wait();

  int world_size_;
  std::mutex mutex_;
  std::condition_variable arrived_;
  int waiting_ = 0;
  std::uint64_t generation_ = 0;
  bool aborted_ = false;
  // What each rank posted for the collective under way.
  struct Slot {
    const float* data = nullptr;
    std::size_t size = 0;
  };
  std::vector<Slot> slots_;
  std::vector<std::unique_ptr<Communicator>> ranks_;
};

// Runs body(communicator of rank r) on one thread per rank (rank 0 on the calling thread) and waits for all.
// If any rank throws, the group is aborted and, once every thread has ended, the first error other than the
// GroupAborted of the ranks it woke is rethrown.
void run_ranks(InProcessGroup& group, const std::function<void(Communicator&)>& body);

}  // namespace atom::dist
