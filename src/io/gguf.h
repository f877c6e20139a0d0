#pragma once
// GGUF checkpoint reader (versions 2 and 3, little-endian). The file is memory-mapped once; metadata
// strings, array elements and tensor data are views into the mapping, never copied.
// Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "common/mapped_file.h"
#include "io/dtype.h"

namespace atom {

// Metadata value types (enum gguf_type).
// clang-format off
enum class GgufType : std::uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7, String = 8, Array = 9,
  U64 = 10, I64 = 11, F64 = 12,
};
// clang-format on
// "u8", "i32", "f32", "bool", "string", "array", ... or "type <id>" for an id outside the enum.
std::string gguf_type_name(GgufType t);

// The GgufType that holds a C++ scalar type (std::uint8_t ... double, bool).
// clang-format off
template <class T>
constexpr GgufType gguf_type_of() {
  if constexpr (std::is_same_v<T, bool>) return GgufType::Bool;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return GgufType::U8;
  else if constexpr (std::is_same_v<T, std::int8_t>) return GgufType::I8;
  else if constexpr (std::is_same_v<T, std::uint16_t>) return GgufType::U16;
  else if constexpr (std::is_same_v<T, std::int16_t>) return GgufType::I16;
  else if constexpr (std::is_same_v<T, std::uint32_t>) return GgufType::U32;
  else if constexpr (std::is_same_v<T, std::int32_t>) return GgufType::I32;
  else if constexpr (std::is_same_v<T, std::uint64_t>) return GgufType::U64;
  else if constexpr (std::is_same_v<T, std::int64_t>) return GgufType::I64;
  else if constexpr (std::is_same_v<T, float>) return GgufType::F32;
  else if constexpr (std::is_same_v<T, double>) return GgufType::F64;
  else static_assert(sizeof(T) == 0, "not a GGUF scalar type");
}
// clang-format on

// An array value. Elements of fixed-size types (numbers, bool) stay in the mapped file (little-endian,
// possibly unaligned); read them with values<T>().
struct GgufArray {
  GgufType type = GgufType::U8;           // element type
  std::size_t size = 0;                   // number of elements
  const std::uint8_t* data = nullptr;     // fixed-size element types: the elements in the mapped file
  std::vector<std::string_view> strings;  // type == String: the elements (views into the mapped file)
  std::vector<GgufArray> arrays;          // type == Array: the nested arrays

  // The elements as T, which must match the element type exactly; `what` names the value in the error
  // (e.g. "GGUF file 'x.gguf': key 'tokenizer.ggml.token_type'").
  template <class T>
  std::vector<T> values(std::string_view what) const;
};

struct GgufValue {
  GgufType type = GgufType::U8;
  std::uint64_t scalar_bits = 0;  // numbers and bool: the stored little-endian bytes, zero-extended
  std::string_view string;        // type == String (a view into the mapped file)
  GgufArray array;                // type == Array

  // The scalar as T, which must match type exactly; `what` names the value in the error.
  template <class T>
  T as(std::string_view what) const;
};

// A short human-readable rendering ("576", "\"llama\"", "[\"a\", \"b\", ... (49152 strings)]").
std::string gguf_value_to_string(const GgufValue& v, std::size_t max_elements = 8);

struct GgufKeyValue {
  std::string_view key;  // view into the mapped file
  GgufValue value;
};

struct GgufTensorInfo {
  std::string_view name;         // view into the mapped file
  std::vector<std::int64_t> ne;  // GGUF order: ne[0] is the innermost (contiguous) dimension; 1..4 dims
  std::uint32_t ggml_type = 0;   // enum ggml_type id as stored
  DType dtype = DType::F32;
  std::uint64_t offset = 0;  // from the start of the data section, a multiple of the alignment
  std::size_t nbytes = 0;
  const std::uint8_t* data = nullptr;  // in the mapped file
  std::int64_t numel() const;
};

class GgufFile {
 public:
  // Maps and validates the file; throws atom::Error naming the file and the field at fault.
  explicit GgufFile(const std::string& path);
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return file_.path(); }
  std::uint32_t version() const { return version_; }
  std::size_t alignment() const { return alignment_; }      // general.alignment, default 32
  std::size_t data_offset() const { return data_offset_; }  // file offset of the tensor data section
  const MappedFile& mapped_file() const { return file_; }

  // ---- metadata, in file order
  const std::vector<GgufKeyValue>& metadata() const { return metadata_; }
  const GgufValue* find(std::string_view key) const;  // nullptr when absent
  // Typed getters: throw atom::Error naming the file and key when the key is absent, and the expected
  // and found types when the type differs (no conversions between types).
  const GgufValue& get(std::string_view key) const;
  std::string_view get_string(std::string_view key) const;
  bool get_bool(std::string_view key) const { return get_scalar<bool>(key); }
  std::uint8_t get_u8(std::string_view key) const { return get_scalar<std::uint8_t>(key); }
  std::int8_t get_i8(std::string_view key) const { return get_scalar<std::int8_t>(key); }
  std::uint16_t get_u16(std::string_view key) const { return get_scalar<std::uint16_t>(key); }
  std::int16_t get_i16(std::string_view key) const { return get_scalar<std::int16_t>(key); }
  std::uint32_t get_u32(std::string_view key) const { return get_scalar<std::uint32_t>(key); }
  std::int32_t get_i32(std::string_view key) const { return get_scalar<std::int32_t>(key); }
  std::uint64_t get_u64(std::string_view key) const { return get_scalar<std::uint64_t>(key); }
  std::int64_t get_i64(std::string_view key) const { return get_scalar<std::int64_t>(key); }
  float get_f32(std::string_view key) const { return get_scalar<float>(key); }
  double get_f64(std::string_view key) const { return get_scalar<double>(key); }
  template <class T>
  T get_scalar(std::string_view key) const;
  const GgufArray& get_array(std::string_view key) const;
  std::span<const std::string_view> get_string_array(std::string_view key) const;
  template <class T>
  std::vector<T> get_array_values(std::string_view key) const {  // numbers / bool, exact element type
    return get_array(key).values<T>(describe_key(key));
  }
  std::string_view architecture() const { return get_string("general.architecture"); }

  // ---- tensors, in file order
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;  // nullptr when absent

 private:
  std::string describe_key(std::string_view key) const;
  MappedFile file_;
  std::uint32_t version_ = 0;
  std::size_t alignment_ = 32;
  std::size_t data_offset_ = 0;
  std::vector<GgufKeyValue> metadata_;
  std::unordered_map<std::string_view, std::size_t> key_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string_view, std::size_t> tensor_index_;
};

}  // namespace atom
