#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; Random123's
// constants), a counter-based generator: the output is a pure function of (key, counter). The samplers key
// it by the request's seed and count by the index of the generated token, so the n-th draw of a seed is
// the same whatever ran before it (preemption, batching) and on every backend. Host and device code share
// this header.
#include <cstdint>

#if defined(__CUDACC__)
#define ATOM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ATOM_HOST_DEVICE inline
#endif

namespace atom {

struct Philox4x32 {
  std::uint32_t v[4];
};

ATOM_HOST_DEVICE Philox4x32 philox4x32_10(Philox4x32 counter, std::uint32_t key0, std::uint32_t key1) {
  constexpr std::uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr std::uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  std::uint32_t* c = counter.v;
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(kM0) * c[0];
    const std::uint64_t p1 = static_cast<std::uint64_t>(kM1) * c[2];
    const std::uint32_t hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const std::uint32_t hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    const std::uint32_t next[4] = {hi1 ^ c[1] ^ key0, lo1, hi0 ^ c[3] ^ key1, lo0};
    c[0] = next[0];
    c[1] = next[1];
    c[2] = next[2];
    c[3] = next[3];
    key0 += kW0;
    key1 += kW1;
  }
  return counter;
}

// The uniform in [0, 1) (53 random bits, exact in a double) of draw `step` for `seed`.
ATOM_HOST_DEVICE double philox_uniform(std::uint64_t seed, std::uint64_t step) {
  const Philox4x32 counter{
      {static_cast<std::uint32_t>(step), static_cast<std::uint32_t>(step >> 32), 0u, 0u}};
  const Philox4x32 r =
      philox4x32_10(counter, static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
  const std::uint64_t bits = (static_cast<std::uint64_t>(r.v[0]) << 21) ^ (r.v[1] >> 11);
  return static_cast<double>(bits & ((std::uint64_t{1} << 53) - 1)) * 0x1.0p-53;
}

}  // namespace atom
