#pragma once
// A checkpoint's tensors, addressed by Hugging Face names ("model.layers.0.self_attn.q_proj.weight"),
// whatever the file format. Data stays in the memory-mapped file; load_f32 converts on demand.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/dtype.h"

namespace atom {

struct TensorView {
  std::string name;             // HF name
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;  // HF/PyTorch order: outermost first, e.g. [out_features, in_features]
  const std::uint8_t* data = nullptr;  // points into the mapped file
  std::size_t nbytes = 0;
  std::string file;             // file it lives in, for messages
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

class TensorStore {
 public:
  virtual ~TensorStore() = default;
  virtual const TensorView* find(std::string_view name) const = 0;
  virtual std::vector<std::string> names() const = 0;

  // Throws atom::Error naming the tensor and the checkpoint when absent.
  const TensorView& get(std::string_view name) const;
  // Checks shape (throws naming tensor, expected and found shapes) and returns the tensor as fp32,
  // row-major in HF order. Format-specific fix-ups (e.g. GGUF's Q/K row order) are applied here.
  std::vector<float> load_f32(std::string_view name, const std::vector<std::int64_t>& expected_shape) const;
  std::vector<float> load_f32(std::string_view name) const;
  bool contains(std::string_view name) const { return find(name) != nullptr; }

 protected:
  // Hook for formats whose stored row order differs from HF (GGUF llama Q/K). Default: identity.
  virtual void fix_up_f32(const TensorView& t, std::vector<float>& data) const {}
  virtual std::string describe() const = 0;  // "GGUF file '...'" / "safetensors checkpoint '...'"
};

}  // namespace atom
