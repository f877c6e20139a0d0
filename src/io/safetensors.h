#pragma once
// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}, then the tensor bytes (offsets relative to the end of the header).
// Reading maps the file and validates every entry; tensor data is never copied.
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/mapped_file.h"
#include "io/dtype.h"
#include "io/tensor_store.h"

namespace atom {

// The reference implementation refuses headers above 100 MB; so do we (a corrupt length would otherwise
// make us parse the whole file as JSON).
inline constexpr std::uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// safetensors dtype name <-> DType for the types Atom reads ("F32", "BF16", "I64", ...).
// Other names (BOOL, U16, F8_E4M3, ...) give std::nullopt.
std::optional<DType> safetensors_dtype(std::string_view name);
// Throws atom::Error for DTypes that safetensors cannot hold (GGML block types).
std::string_view safetensors_dtype_name(DType dtype);

class SafetensorsFile {
 public:
  // Maps and validates `path`; throws atom::Error naming the file and the tensor/field at fault.
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  // Tensors in the order of their data in the file. TensorView::data may be unaligned.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(std::string_view name) const;
  // The "__metadata__" map (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  MappedFile file_;
  std::vector<TensorView> tensors_;
  std::unordered_map<std::string, std::size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

struct SafetensorsWriteTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::span<const std::uint8_t> bytes;  // numel * element size bytes, row-major
};

// Writes a safetensors file laid out as the reference implementation does: tensors ordered by element
// size (largest first, so that every tensor is naturally aligned) then by name, header padded with spaces
// to a multiple of 8 bytes, "__metadata__" only when non-empty. Writes a temporary file next to `path` and
// renames it into place, so readers never see a partial file. Throws atom::Error naming the path when it
// exists and `overwrite` is false, and naming the tensor for a bad name, dtype, shape or byte count.
void write_safetensors(const std::string& path, std::span<const SafetensorsWriteTensor> tensors,
                       const std::map<std::string, std::string>& metadata = {}, bool overwrite = false);

}  // namespace atom
