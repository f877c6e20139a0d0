#include "io/tensor_store.h"

#include <fmt/ranges.h>

#include "common/error.h"

namespace atom {

const TensorView& TensorStore::get(std::string_view name) const {
  const TensorView* t = find(name);
  if (!t) fail("{}: tensor '{}' not found", describe(), name);
  return *t;
}

std::vector<float> TensorStore::load_f32(std::string_view name,
                                         const std::vector<std::int64_t>& expected_shape) const {
  const TensorView& t = get(name);
  if (t.shape != expected_shape) {
    fail("{}: tensor '{}' has shape [{}], expected [{}]", describe(), name, fmt::join(t.shape, ", "),
         fmt::join(expected_shape, ", "));
  }
  return load_f32(name);
}

std::vector<float> TensorStore::load_f32(std::string_view name) const {
  const TensorView& t = get(name);
  const auto& traits = dtype_traits(t.dtype);
  const std::int64_t numel = t.numel();
  if (numel < 0 || static_cast<std::size_t>(numel) % traits.block_elems != 0) {
    fail("{}: tensor '{}' has {} elements, not a multiple of the {} block size {}", describe(), name, numel,
         traits.name, traits.block_elems);
  }
  const auto n = static_cast<std::size_t>(numel);
  if (t.nbytes != dtype_bytes(t.dtype, n)) {
    fail("{}: tensor '{}' holds {} bytes, but {} elements of {} take {}", describe(), name, t.nbytes, n,
         traits.name, dtype_bytes(t.dtype, n));
  }
  std::vector<float> out(n);
  dequantize_to_f32(t.dtype, t.data, out.data(), n);
  fix_up_f32(t, out);
  return out;
}

}  // namespace atom
