#include "io/gguf.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <numeric>

#include "common/error.h"
#include "io/ggml_quants.h"

namespace atom {

static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes a little-endian host");

namespace {

constexpr std::uint32_t kMaxDims = 4;
constexpr int kMaxArrayDepth = 8;  // nested arrays; bounds recursion on hostile files
// Smallest possible encodings, used to bound counts by the bytes left before allocating anything.
constexpr std::size_t kMinKeyValueBytes = 8 + 1 + 4 + 1;            // key length, 1-byte key, type, u8 value
constexpr std::size_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;  // name, n_dims, one ne, type, offset
constexpr std::size_t kMinNestedArrayBytes = 4 + 8;                 // element type, length

// Counts are only bounded by the file size, and an entry in memory is larger than its smallest encoding:
// reserve at most this many up front, so that memory grows with what is actually parsed, not with claims.
std::size_t capped_reserve(std::uint64_t count) {
  return static_cast<std::size_t>(std::min<std::uint64_t>(count, 1 << 16));
}

bool is_valid_type(std::uint32_t t) { return t <= static_cast<std::uint32_t>(GgufType::F64); }

// Bytes of one element of a fixed-size type; 0 for String and Array.
std::size_t fixed_size(GgufType t) {
  switch (t) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::Bool: return 1;
    case GgufType::U16:
    case GgufType::I16: return 2;
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::F32: return 4;
    case GgufType::U64:
    case GgufType::I64:
    case GgufType::F64: return 8;
    case GgufType::String:
    case GgufType::Array: return 0;
  }
  return 0;
}

// Sequential little-endian reads from the mapped file; every read is bounds-checked and names the file,
// what is being read (context + field) and the offset when it does not fit.
class Reader {
 public:
  explicit Reader(const MappedFile& file) : file_(file) {}

  std::string context = "header";

  std::size_t pos() const { return pos_; }
  std::size_t left() const { return file_.size() - pos_; }

  [[noreturn]] void error(std::string_view message) const {
    fail("GGUF file '{}': {}: {}", file_.path(), context, message);
  }

  const std::uint8_t* take(std::size_t n, std::string_view field) {
    if (n > left()) {
      error(fmt::format("truncated: {} needs {} bytes at offset {} but the file ends at {}", field, n, pos_,
                        file_.size()));
    }
    const std::uint8_t* p = file_.data() + pos_;
    pos_ += n;
    return p;
  }

  template <class T>
  T read(std::string_view field) {
    T v;
    std::memcpy(&v, take(sizeof(T), field), sizeof(T));
    return v;
  }

  std::string_view read_string(std::string_view field) {
    const auto length = read<std::uint64_t>(field);
    if (length > left()) {
      error(fmt::format("{} has length {} at offset {} but only {} bytes are left in the file", field, length,
                        pos_ - 8, left()));
    }
    return {reinterpret_cast<const char*>(take(length, field)), static_cast<std::size_t>(length)};
  }

  // A count of items of at least min_item_bytes each: rejects counts the rest of the file cannot hold.
  std::uint64_t read_count(std::string_view field, std::size_t min_item_bytes) {
    const auto count = read<std::uint64_t>(field);
    if (count > left() / min_item_bytes) {
      error(fmt::format("{} {} is impossible: {} bytes are left in the file and each item takes at least {}",
                        field, count, left(), min_item_bytes));
    }
    return count;
  }

 private:
  const MappedFile& file_;
  std::size_t pos_ = 0;
};

GgufArray read_array(Reader& r, int depth) {
  GgufArray a;
  const auto elem_type = r.read<std::uint32_t>("array element type");
  if (!is_valid_type(elem_type)) r.error(fmt::format("unknown array element type {}", elem_type));
  a.type = static_cast<GgufType>(elem_type);
  if (const std::size_t elem_bytes = fixed_size(a.type)) {
    a.size = r.read_count("array length", elem_bytes);
    a.data = r.take(a.size * elem_bytes, "array elements");
    if (a.type == GgufType::Bool) {
      for (std::size_t i = 0; i < a.size; ++i) {
        if (a.data[i] > 1) r.error(fmt::format("bool array element {} is {}, not 0 or 1", i, a.data[i]));
      }
    }
  } else if (a.type == GgufType::String) {
    a.size = r.read_count("array length", 8);
    a.strings.reserve(capped_reserve(a.size));
    for (std::size_t i = 0; i < a.size; ++i) a.strings.push_back(r.read_string("string array element"));
  } else {
    if (depth >= kMaxArrayDepth) r.error(fmt::format("arrays nested deeper than {} levels", kMaxArrayDepth));
    a.size = r.read_count("array length", kMinNestedArrayBytes);
    a.arrays.reserve(capped_reserve(a.size));
    for (std::size_t i = 0; i < a.size; ++i) a.arrays.push_back(read_array(r, depth + 1));
  }
  return a;
}

GgufValue read_value(Reader& r) {
  GgufValue v;
  const auto type = r.read<std::uint32_t>("value type");
  if (!is_valid_type(type)) r.error(fmt::format("unknown value type {}", type));
  v.type = static_cast<GgufType>(type);
  if (const std::size_t bytes = fixed_size(v.type)) {
    std::memcpy(&v.scalar_bits, r.take(bytes, "value"), bytes);
    if (v.type == GgufType::Bool && v.scalar_bits > 1) {
      r.error(fmt::format("bool value is {}, not 0 or 1", v.scalar_bits));
    }
  } else if (v.type == GgufType::String) {
    v.string = r.read_string("string value");
  } else {
    v.array = read_array(r, 1);
  }
  return v;
}

std::string quoted(std::string_view s, std::size_t max_chars = 64) {
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size() && i < max_chars; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > max_chars) out += "...";
  return out + "\"";
}

std::string scalar_to_string(GgufType type, std::uint64_t bits) {
  switch (type) {
    case GgufType::U8:
    case GgufType::U16:
    case GgufType::U32:
    case GgufType::U64: return fmt::format("{}", bits);
    case GgufType::I8: return fmt::format("{}", static_cast<std::int8_t>(bits));
    case GgufType::I16: return fmt::format("{}", static_cast<std::int16_t>(bits));
    case GgufType::I32: return fmt::format("{}", static_cast<std::int32_t>(bits));
    case GgufType::I64: return fmt::format("{}", static_cast<std::int64_t>(bits));
    case GgufType::F32: return fmt::format("{}", std::bit_cast<float>(static_cast<std::uint32_t>(bits)));
    case GgufType::F64: return fmt::format("{}", std::bit_cast<double>(bits));
    case GgufType::Bool: return bits ? "true" : "false";
    case GgufType::String:
    case GgufType::Array: break;
  }
  return "?";
}

std::string array_to_string(const GgufArray& a, std::size_t max_elements) {
  std::string out = "[";
  const std::size_t shown = std::min(a.size, max_elements);
  const std::size_t elem_bytes = fixed_size(a.type);
  for (std::size_t i = 0; i < shown; ++i) {
    if (i) out += ", ";
    if (a.type == GgufType::String) {
      out += quoted(a.strings[i]);
    } else if (a.type == GgufType::Array) {
      out += array_to_string(a.arrays[i], max_elements);
    } else {
      std::uint64_t bits = 0;
      std::memcpy(&bits, a.data + i * elem_bytes, elem_bytes);
      out += scalar_to_string(a.type, bits);
    }
  }
  if (shown < a.size) out += fmt::format(", ... ({} {} elements)", a.size, gguf_type_name(a.type));
  return out + "]";
}

}  // namespace

std::string gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::Bool: return "bool";
    case GgufType::String: return "string";
    case GgufType::Array: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return fmt::format("type {}", static_cast<std::uint32_t>(t));
}

std::string gguf_value_to_string(const GgufValue& v, std::size_t max_elements) {
  if (v.type == GgufType::String) return quoted(v.string);
  if (v.type == GgufType::Array) return array_to_string(v.array, max_elements);
  return scalar_to_string(v.type, v.scalar_bits);
}

template <class T>
T GgufValue::as(std::string_view what) const {
  constexpr GgufType expected = gguf_type_of<T>();
  if (type != expected) {
    fail("{} has type {}, expected {}", what,
         type == GgufType::Array ? "array of " + gguf_type_name(array.type) : gguf_type_name(type),
         gguf_type_name(expected));
  }
  if constexpr (std::is_same_v<T, bool>) {
    return scalar_bits != 0;
  } else {
    T v;
    std::memcpy(&v, &scalar_bits, sizeof(T));
    return v;
  }
}

template <class T>
std::vector<T> GgufArray::values(std::string_view what) const {
  constexpr GgufType expected = gguf_type_of<T>();
  if (type != expected) {
    fail("{} is an array of {}, expected an array of {}", what, gguf_type_name(type),
         gguf_type_name(expected));
  }
  std::vector<T> out(size);
  if constexpr (std::is_same_v<T, bool>) {
    for (std::size_t i = 0; i < size; ++i) out[i] = data[i] != 0;
  } else if (size > 0) {
    std::memcpy(out.data(), data, size * sizeof(T));
  }
  return out;
}

std::int64_t GgufTensorInfo::numel() const {
  return std::accumulate(ne.begin(), ne.end(), std::int64_t{1}, std::multiplies<>());
}

GgufFile::GgufFile(const std::string& path) : file_(path) {
  Reader r(file_);

  // ---- header
  const auto* magic = r.take(4, "magic");
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    r.error(fmt::format("not a GGUF file (magic bytes {:02x} {:02x} {:02x} {:02x}, expected \"GGUF\")",
                        magic[0], magic[1], magic[2], magic[3]));
  }
  version_ = r.read<std::uint32_t>("version");
  if (version_ == 1)
    r.error("GGUF version 1 is not supported (only versions 2 and 3 are); re-convert the model");
  if (version_ != 0 && (version_ & 0xFFFFu) == 0) {
    r.error(fmt::format("version field {:#010x} looks byte-swapped: big-endian GGUF files are not supported",
                        version_));
  }
  if (version_ != 2 && version_ != 3)
    r.error(fmt::format("unsupported GGUF version {} (2 and 3 are)", version_));
  const auto n_tensors = r.read_count("tensor count", kMinTensorInfoBytes);
  const auto n_kv = r.read_count("metadata count", kMinKeyValueBytes);

  // ---- metadata
  metadata_.reserve(capped_reserve(n_kv));
  for (std::uint64_t i = 0; i < n_kv; ++i) {
    r.context = fmt::format("metadata entry {}", i);
    const std::string_view key = r.read_string("key");
    if (key.empty()) r.error("empty key");
    r.context = fmt::format("metadata key '{}'", key);
    GgufValue value = read_value(r);
    if (!key_index_.emplace(key, metadata_.size()).second) r.error("duplicate key");
    metadata_.push_back({key, std::move(value)});
  }
  r.context = "metadata key 'general.alignment'";
  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufType::U32) r.error(fmt::format("has type {}, expected u32", gguf_type_name(a->type)));
    alignment_ = a->as<std::uint32_t>("general.alignment");
    if (alignment_ == 0 || !std::has_single_bit(alignment_)) {
      r.error(fmt::format("alignment {} is not a power of two", alignment_));
    }
  }

  // ---- tensor infos
  tensors_.reserve(capped_reserve(n_tensors));
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    r.context = fmt::format("tensor info {}", i);
    GgufTensorInfo t;
    t.name = r.read_string("name");
    if (t.name.empty()) r.error("empty tensor name");
    r.context = fmt::format("tensor '{}'", t.name);
    const auto n_dims = r.read<std::uint32_t>("n_dims");
    if (n_dims == 0 || n_dims > kMaxDims)
      r.error(fmt::format("n_dims is {}, must be 1 to {}", n_dims, kMaxDims));
    t.ne.resize(n_dims);
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      const auto dim = static_cast<std::int64_t>(r.read<std::uint64_t>(fmt::format("ne[{}]", d)));
      if (dim <= 0) r.error(fmt::format("dimension ne[{}] is {}, must be positive", d, dim));
      t.ne[d] = dim;
    }
    t.ggml_type = r.read<std::uint32_t>("type");
    t.offset = r.read<std::uint64_t>("offset");

    const auto dtype = ggml::dtype_from_ggml_type(t.ggml_type);
    if (!dtype) {
      const std::string_view name = ggml::ggml_type_name(t.ggml_type);
      r.error(fmt::format("ggml type {} ({}) is not supported", t.ggml_type,
                          name.empty() ? "unknown type id" : name));
    }
    t.dtype = *dtype;
    const auto& traits = dtype_traits(t.dtype);
    if (t.ne[0] % static_cast<std::int64_t>(traits.block_elems) != 0) {
      r.error(fmt::format("ne[0] = {} is not a multiple of the {} block size {}", t.ne[0], traits.name,
                          traits.block_elems));
    }
    std::int64_t numel = 1;
    for (const auto dim : t.ne) {
      if (__builtin_mul_overflow(numel, dim, &numel)) r.error("element count overflows 64 bits");
    }
    const auto blocks = static_cast<std::uint64_t>(numel) / traits.block_elems;
    if (blocks > file_.size() / traits.block_bytes) {
      r.error(fmt::format("{} elements of {} take more bytes than the whole file ({})", numel, traits.name,
                          file_.size()));
    }
    t.nbytes = blocks * traits.block_bytes;
    if (!tensor_index_.emplace(t.name, tensors_.size()).second) r.error("duplicate tensor name");
    tensors_.push_back(std::move(t));
  }

  // ---- data section: starts at the next multiple of the alignment
  data_offset_ = (r.pos() + alignment_ - 1) / alignment_ * alignment_;
  const std::size_t data_bytes = file_.size() >= data_offset_ ? file_.size() - data_offset_ : 0;
  for (auto& t : tensors_) {
    r.context = fmt::format("tensor '{}'", t.name);
    if (t.offset % alignment_ != 0) {
      r.error(fmt::format("data offset {} is not a multiple of the alignment {}", t.offset, alignment_));
    }
    if (data_offset_ > file_.size() || t.offset > data_bytes || t.nbytes > data_bytes - t.offset) {
      r.error(
          fmt::format("data [{}, {}) (+ data section start {}) extends past the end of the file ({} bytes)",
                      t.offset, t.offset + t.nbytes, data_offset_, file_.size()));
    }
    t.data = file_.data() + data_offset_ + t.offset;
  }
  std::vector<const GgufTensorInfo*> by_offset;
  by_offset.reserve(tensors_.size());
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::stable_sort(by_offset.begin(), by_offset.end(),  // stable: messages name the later tensor
                   [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const auto& prev = *by_offset[i - 1];
    const auto& cur = *by_offset[i];
    if (prev.offset + prev.nbytes > cur.offset) {
      r.context = fmt::format("tensor '{}'", cur.name);
      r.error(fmt::format("data [{}, {}) overlaps tensor '{}' at [{}, {})", cur.offset,
                          cur.offset + cur.nbytes, prev.name, prev.offset, prev.offset + prev.nbytes));
    }
  }
}

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = key_index_.find(key);
  return it == key_index_.end() ? nullptr : &metadata_[it->second].value;
}

std::string GgufFile::describe_key(std::string_view key) const {
  return fmt::format("GGUF file '{}': metadata key '{}'", path(), key);
}

const GgufValue& GgufFile::get(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) fail("{} is missing", describe_key(key));
  return *v;
}

template <class T>
T GgufFile::get_scalar(std::string_view key) const {
  return get(key).as<T>(describe_key(key));
}

std::string_view GgufFile::get_string(std::string_view key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::String)
    fail("{} has type {}, expected string", describe_key(key), gguf_type_name(v.type));
  return v.string;
}

const GgufArray& GgufFile::get_array(std::string_view key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::Array)
    fail("{} has type {}, expected array", describe_key(key), gguf_type_name(v.type));
  return v.array;
}

std::span<const std::string_view> GgufFile::get_string_array(std::string_view key) const {
  const GgufArray& a = get_array(key);
  if (a.type != GgufType::String) {
    fail("{} is an array of {}, expected an array of string", describe_key(key), gguf_type_name(a.type));
  }
  return a.strings;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

// Every scalar type GGUF stores.
#define ATOM_GGUF_INSTANTIATE(T)                                        \
  template T GgufValue::as<T>(std::string_view) const;                  \
  template std::vector<T> GgufArray::values<T>(std::string_view) const; \
  template T GgufFile::get_scalar<T>(std::string_view) const;
ATOM_GGUF_INSTANTIATE(bool)
ATOM_GGUF_INSTANTIATE(std::uint8_t)
ATOM_GGUF_INSTANTIATE(std::int8_t)
ATOM_GGUF_INSTANTIATE(std::uint16_t)
ATOM_GGUF_INSTANTIATE(std::int16_t)
ATOM_GGUF_INSTANTIATE(std::uint32_t)
ATOM_GGUF_INSTANTIATE(std::int32_t)
ATOM_GGUF_INSTANTIATE(std::uint64_t)
ATOM_GGUF_INSTANTIATE(std::int64_t)
ATOM_GGUF_INSTANTIATE(float)
ATOM_GGUF_INSTANTIATE(double)
#undef ATOM_GGUF_INSTANTIATE

}  // namespace atom
