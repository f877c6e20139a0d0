#include "dist/in_process_communicator.h"

#include <algorithm>
#include <thread>

#include "common/error.h"

namespace atom::dist {

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(InProcessGroup& group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return group_.world_size_; }

  void all_reduce_sum(std::span<float> data) override {
    post(data.data(), data.size());
    check_equal_sizes("all_reduce_sum");
    // Every rank forms the whole sum in rank order: the same bits everywhere, whatever the timing.
    const auto& slots = group_.slots_;
    sum_.assign(slots[0].data, slots[0].data + data.size());
    for (std::size_t r = 1; r < slots.size(); ++r) {
      const float* src = slots[r].data;
      for (std::size_t i = 0; i < data.size(); ++i) sum_[i] += src[i];
    }
    group_.arrive_and_wait();  // every rank has read every buffer: now each may overwrite its own
    std::copy(sum_.begin(), sum_.end(), data.begin());
  }

  void all_gather(std::span<const float> in, std::span<float> out) override {
    if (out.size() != in.size() * static_cast<std::size_t>(world_size())) {
      group_.abort();  // the other ranks must not wait for this one, nor read its buffer
      fail("all_gather: rank {} passed {} output elements; world size {} x {} input elements needs {}", rank_,
           out.size(), world_size(), in.size(), in.size() * static_cast<std::size_t>(world_size()));
    }
    post(in.data(), in.size());
    check_equal_sizes("all_gather");
    const auto& slots = group_.slots_;
    for (std::size_t r = 0; r < slots.size(); ++r)
      std::copy(slots[r].data, slots[r].data + in.size(), out.begin() + static_cast<std::ptrdiff_t>(r * in.size()));
    group_.arrive_and_wait();  // the other ranks have copied this rank's input: the caller may reuse it
  }

 private:
  // Publishes this rank's buffer and waits until every rank has published its own.
  void post(const float* data, std::size_t size) {
    group_.slots_[static_cast<std::size_t>(rank_)] = {data, size};
    group_.arrive_and_wait();
  }

  // Every rank sees the same slots, so every rank throws alike and none is left waiting.
  void check_equal_sizes(const char* op) const {
    const auto& slots = group_.slots_;
    for (std::size_t r = 1; r < slots.size(); ++r) {
      if (slots[r].size != slots[0].size)
        fail("{}: rank {} passed {} elements but rank 0 passed {} (every rank must pass the same count)", op, r,
             slots[r].size, slots[0].size);
    }
  }

  InProcessGroup& group_;
  int rank_;
  std::vector<float> sum_;
};

InProcessGroup::InProcessGroup(int world_size) : world_size_(world_size) {
  if (world_size < 1 || world_size > 1024)
    fail("in-process group: world_size must be in [1, 1024], found {}", world_size);
  slots_.resize(static_cast<std::size_t>(world_size));
  for (int r = 0; r < world_size; ++r) ranks_.push_back(std::make_unique<InProcessCommunicator>(*this, r));
}

InProcessGroup::~InProcessGroup() = default;

Communicator& InProcessGroup::communicator(int rank) {
  if (rank < 0 || rank >= world_size_)
    fail("in-process group: rank {} is outside [0, {})", rank, world_size_);
  return *ranks_[static_cast<std::size_t>(rank)];
}

void InProcessGroup::abort() {
  {
    std::lock_guard lock(mutex_);
    aborted_ = true;
  }
  arrived_.notify_all();
}

void InProcessGroup::arrive_and_wait() {
  std::unique_lock lock(mutex_);
  if (aborted_) throw GroupAborted();
  const std::uint64_t generation = generation_;
  if (++waiting_ == world_size_) {
    waiting_ = 0;
    ++generation_;
    lock.unlock();
    arrived_.notify_all();
    return;
  }
  arrived_.wait(lock, [&] { return generation_ != generation || aborted_; });
  if (generation_ == generation) throw GroupAborted();
}

void run_ranks(InProcessGroup& group, const std::function<void(Communicator&)>& body) {
  std::mutex error_mutex;
  std::exception_ptr first_error;
  bool first_is_abort = false;  // a woken rank's GroupAborted may be recorded before the failure that caused it
  auto run = [&](int rank) {
    try {
      body(group.communicator(rank));
    } catch (const GroupAborted&) {
      std::lock_guard lock(error_mutex);
      if (!first_error) {
        first_error = std::current_exception();
        first_is_abort = true;
      }
    } catch (...) {
      {
        std::lock_guard lock(error_mutex);
        if (!first_error || first_is_abort) {
          first_error = std::current_exception();
          first_is_abort = false;
        }
      }
      group.abort();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(group.world_size() - 1));
  for (int r = 1; r < group.world_size(); ++r) threads.emplace_back(run, r);
  run(0);
  for (auto& t : threads) t.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace atom::dist
