#pragma once
// The collectives tensor parallelism needs, behind one interface: the in-process one of the CPU tests
// (in_process_communicator.h, one thread per rank) and a GPU one (NCCL, one device per rank) implement it.
// Every rank of a group calls the same collectives in the same order with the same element counts, as NCCL
// requires; a call returns once this rank's result is in place.
#include <span>

namespace atom::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // data <- sum over ranks of every rank's data, in place; every rank gets the same bits.
  virtual void all_reduce_sum(std::span<float> data) = 0;

  // out[r * in.size() .. (r + 1) * in.size()) <- rank r's `in`, for every rank r (equal sizes on every rank;
  // out has world_size() * in.size() elements and must not overlap in).
  virtual void all_gather(std::span<const float> in, std::span<float> out) = 0;
};

}  // namespace atom::dist
