#include "backend/cpu/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace atom::cpu {

namespace {

bool enabled_by_default() {
  const char* isa = std::getenv("ATOM_CPU_ISA");
  return cpu_has_avx512_vnni() && !(isa != nullptr && std::strcmp(isa, "avx2") == 0);
}

std::atomic<bool>& enabled() {
  static std::atomic<bool> on{enabled_by_default()};
  return on;
}

}  // namespace

bool cpu_has_avx512_vnni() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return has;
}

bool avx512_vnni_enabled() { return enabled().load(std::memory_order_relaxed); }

void set_avx512_vnni_enabled(bool on) { enabled().store(on && cpu_has_avx512_vnni()); }

}  // namespace atom::cpu
