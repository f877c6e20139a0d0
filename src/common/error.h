#pragma once
// One error type for everything a user can cause: bad files, bad arguments, bad requests.
// Messages name the file / tensor / field / value at fault.
#include <stdexcept>
#include <string>
#include <fmt/format.h>

namespace atom {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

template <class... Args>
[[noreturn]] inline void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

// Internal invariant (a bug in Atom, not in the input).
#define ATOM_CHECK(cond)                                                                       \
  do {                                                                                         \
    if (!(cond)) ::atom::fail("internal check failed: {} ({}:{})", #cond, __FILE__, __LINE__); \
  } while (0)

}  // namespace atom
