#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>

#include <fmt/ranges.h>

#include "common/error.h"
#include "io/json_file.h"

namespace atom {
namespace {

struct SafetensorsDType {
  std::string_view name;
  DType dtype;
  // Position in the reference implementation's Dtype enum: its writer orders tensors by this, largest first.
  int reference_rank;
};

constexpr SafetensorsDType kSupportedDTypes[] = {
    {"U8", DType::U8, 4},     {"I8", DType::I8, 5},   {"I16", DType::I16, 9},
    {"F16", DType::F16, 11},  {"BF16", DType::BF16, 12}, {"I32", DType::I32, 13},
    {"F32", DType::F32, 15},  {"F64", DType::F64, 16}, {"I64", DType::I64, 17},
};

// Valid safetensors dtypes that Atom has no use for: named as such in errors, rather than "unknown".
constexpr std::string_view kUnsupportedDTypes[] = {"BOOL",    "U16",     "U32",     "U64",     "F8_E5M2",
                                                   "F8_E4M3", "F8_E8M0", "F4",      "F6_E2M3", "F6_E3M2"};

std::string supported_dtype_list() {
  std::vector<std::string_view> names;
  for (const auto& d : kSupportedDTypes) names.push_back(d.name);
  return fmt::format("{}", fmt::join(names, ", "));
}

const SafetensorsDType* find_dtype(DType dtype) {
  for (const auto& d : kSupportedDTypes)
    if (d.dtype == dtype) return &d;
  return nullptr;
}

std::size_t element_bytes(DType dtype) { return dtype_bytes(dtype, 1); }

// Product of the dims times the element size, or nullopt on overflow.
std::optional<std::uint64_t> byte_count(const std::vector<std::int64_t>& shape, std::size_t element_size) {
  std::uint64_t n = element_size;
  for (auto d : shape)
    if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n)) return std::nullopt;
  return n;
}

// ---- reading

class HeaderReader {
 public:
  HeaderReader(const std::string& path) : path_(path) {}

  [[noreturn]] void fail_file(std::string_view what) const {
    fail("safetensors file '{}': {}", path_, what);
  }
  [[noreturn]] void fail_tensor(const std::string& tensor, std::string_view what) const {
    fail("safetensors file '{}': tensor '{}': {}", path_, tensor, what);
  }

  // A non-negative JSON integer, for shape dims and data offsets.
  std::uint64_t non_negative(const nlohmann::json& v, const std::string& tensor, std::string_view field) const {
    if (v.is_number_unsigned()) return v.get<std::uint64_t>();
    if (v.is_number_integer())
      fail_tensor(tensor, fmt::format("field '{}' has negative value {}", field, v.get<std::int64_t>()));
    fail_tensor(tensor, fmt::format("field '{}' must hold non-negative integers, found {}", field, json_snippet(v)));
  }

  const nlohmann::json& field(const nlohmann::json& entry, const std::string& tensor, const char* name,
                              nlohmann::json::value_t type, std::string_view type_name) const {
    const auto it = entry.find(name);
    if (it == entry.end()) fail_tensor(tensor, fmt::format("missing field '{}'", name));
    if (it->type() != type)
      fail_tensor(tensor, fmt::format("field '{}' must be {}, found {}", name, type_name, json_snippet(*it)));
    return *it;
  }

 private:
  const std::string& path_;
};

struct ParsedTensor {
  TensorView view;
  std::uint64_t begin = 0, end = 0;
};

}  // namespace

std::optional<DType> safetensors_dtype(std::string_view name) {
  for (const auto& d : kSupportedDTypes)
    if (d.name == name) return d.dtype;
  return std::nullopt;
}

std::string_view safetensors_dtype_name(DType dtype) {
  const auto* d = find_dtype(dtype);
  if (!d) fail("dtype {} cannot be stored in safetensors (supported: {})", dtype_name(dtype), supported_dtype_list());
  return d->name;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  const HeaderReader reader(path);
  const std::size_t file_size = file_.size();
  if (file_size < 8)
    reader.fail_file(fmt::format("{} bytes long, shorter than the 8-byte header length field", file_size));
  std::uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | file_.data()[i];  // little-endian
  if (header_bytes > kSafetensorsMaxHeaderBytes)
    reader.fail_file(fmt::format("header length {} exceeds the {}-byte limit (corrupt file?)", header_bytes,
                                 kSafetensorsMaxHeaderBytes));
  if (header_bytes > file_size - 8)
    reader.fail_file(fmt::format("header length {} runs past the end of the file ({} bytes): truncated?",
                                 header_bytes, file_size));
  const std::string_view header_text(reinterpret_cast<const char*>(file_.data()) + 8, header_bytes);
  const nlohmann::json header = parse_json(header_text, fmt::format("safetensors file '{}': header", path));
  if (!header.is_object())
    reader.fail_file(fmt::format("header must be a JSON object, found {}", json_snippet(header)));

  const std::size_t data_start = 8 + header_bytes;
  const std::uint64_t data_size = file_size - data_start;
  std::vector<ParsedTensor> parsed;
  parsed.reserve(header.size());
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        reader.fail_file(fmt::format("'__metadata__' must be an object of strings, found {}", json_snippet(entry)));
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          reader.fail_file(fmt::format("'__metadata__' entry '{}' must be a string, found {}", key,
                                       json_snippet(value)));
        metadata_.emplace(key, value.get<std::string>());
      }
      continue;
    }
    if (!entry.is_object())
      reader.fail_tensor(name, fmt::format("entry must be an object, found {}", json_snippet(entry)));

    ParsedTensor t;
    t.view.name = name;
    t.view.file = path;
    const auto& dtype_json = reader.field(entry, name, "dtype", nlohmann::json::value_t::string, "a string");
    const auto& dtype_text = dtype_json.get_ref<const std::string&>();
    const auto dtype = safetensors_dtype(dtype_text);
    if (!dtype) {
      const bool known = std::find(std::begin(kUnsupportedDTypes), std::end(kUnsupportedDTypes), dtype_text) !=
                         std::end(kUnsupportedDTypes);
      reader.fail_tensor(name, fmt::format("{} dtype '{}' (Atom reads {})",
                                           known ? "unsupported" : "unknown", dtype_text, supported_dtype_list()));
    }
    t.view.dtype = *dtype;

    const auto& shape = reader.field(entry, name, "shape", nlohmann::json::value_t::array, "an array");
    for (const auto& d : shape) {
      const std::uint64_t dim = reader.non_negative(d, name, "shape");
      if (dim > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        reader.fail_tensor(name, fmt::format("field 'shape' has dimension {} out of range", dim));
      t.view.shape.push_back(static_cast<std::int64_t>(dim));
    }

    const auto& offsets = reader.field(entry, name, "data_offsets", nlohmann::json::value_t::array, "an array");
    if (offsets.size() != 2)
      reader.fail_tensor(name, fmt::format("field 'data_offsets' must be [begin, end], found {}",
                                           json_snippet(offsets)));
    t.begin = reader.non_negative(offsets[0], name, "data_offsets");
    t.end = reader.non_negative(offsets[1], name, "data_offsets");
    if (t.end < t.begin)
      reader.fail_tensor(name, fmt::format("field 'data_offsets' [{}, {}] ends before it begins", t.begin, t.end));
    const auto expected = byte_count(t.view.shape, element_bytes(t.view.dtype));
    if (!expected)
      reader.fail_tensor(name, fmt::format("shape {} is too large", fmt::join(t.view.shape, "x")));
    if (t.end - t.begin != *expected)
      reader.fail_tensor(name, fmt::format("field 'data_offsets' [{}, {}] spans {} bytes but {} of shape [{}] "
                                           "needs {}", t.begin, t.end, t.end - t.begin, dtype_text,
                                           fmt::join(t.view.shape, ", "), *expected));
    if (t.end > data_size)
      reader.fail_tensor(name, fmt::format("field 'data_offsets' [{}, {}] runs past the end of the data "
                                           "({} bytes after the header): truncated?", t.begin, t.end, data_size));
    t.view.data = file_.data() + data_start + t.begin;
    t.view.nbytes = static_cast<std::size_t>(*expected);
    parsed.push_back(std::move(t));
  }

  // Gaps between tensors are tolerated; shared bytes are not (writing one tensor would change another).
  std::sort(parsed.begin(), parsed.end(), [](const ParsedTensor& a, const ParsedTensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const ParsedTensor* previous = nullptr;  // the last non-empty tensor
  for (const auto& t : parsed) {
    if (t.begin == t.end) continue;
    if (previous && t.begin < previous->end)
      reader.fail_tensor(t.view.name, fmt::format("field 'data_offsets' [{}, {}] overlaps tensor '{}' [{}, {}]",
                                                  t.begin, t.end, previous->view.name, previous->begin,
                                                  previous->end));
    previous = &t;
  }

  tensors_.reserve(parsed.size());
  for (auto& t : parsed) {
    index_.emplace(t.view.name, tensors_.size());
    tensors_.push_back(std::move(t.view));
  }
}

const TensorView* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// ---- writing

namespace {

class TempFile {
 public:
  explicit TempFile(const std::string& target) : target_(target) {
    static std::atomic<unsigned> counter{0};
    path_ = fmt::format("{}.tmp.{}.{}", target, ::getpid(), counter++);
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create '{}' (temporary file '{}'): {}", target, path_, std::strerror(errno));
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write(const void* data, std::size_t n) {
    const auto* p = static_cast<const std::uint8_t*>(data);
    while (n > 0) {
      const ssize_t written = ::write(fd_, p, n);
      if (written < 0) {
        if (errno == EINTR) continue;
        fail("cannot write '{}' (temporary file '{}'): {}", target_, path_, std::strerror(errno));
      }
      p += written;
      n -= static_cast<std::size_t>(written);
    }
  }

  // Flushes to disk and renames over the target (refusing an existing target unless overwrite).
  void commit(bool overwrite) {
    if (::fsync(fd_) != 0) fail("cannot sync '{}' (temporary file '{}'): {}", target_, path_, std::strerror(errno));
    const int closed = ::close(fd_);
    fd_ = -1;
    if (closed != 0) fail("cannot close '{}' (temporary file '{}'): {}", target_, path_, std::strerror(errno));
    if (!overwrite) {
      // Atomic "rename unless it exists"; filesystems without it fall back to check-then-rename.
      if (::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, target_.c_str(), RENAME_NOREPLACE) == 0) {
        committed_ = true;
        return;
      }
      if (errno == EEXIST) refuse_existing(target_);
      if (errno != EINVAL && errno != ENOSYS)
        fail("cannot rename '{}' to '{}': {}", path_, target_, std::strerror(errno));
      struct stat st {};
      if (::stat(target_.c_str(), &st) == 0) refuse_existing(target_);
    }
    if (::rename(path_.c_str(), target_.c_str()) != 0)
      fail("cannot rename '{}' to '{}': {}", path_, target_, std::strerror(errno));
    committed_ = true;
  }

  [[noreturn]] static void refuse_existing(const std::string& path) {
    fail("'{}' already exists; refusing to overwrite it", path);
  }

 private:
  std::string target_;
  std::string path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

void write_safetensors(const std::string& path, std::span<const SafetensorsWriteTensor> tensors,
                       const std::map<std::string, std::string>& metadata, bool overwrite) {
  struct stat st {};
  if (!overwrite && ::stat(path.c_str(), &st) == 0) TempFile::refuse_existing(path);

  std::vector<const SafetensorsWriteTensor*> order;
  std::set<std::string_view> names;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__") fail("cannot write '{}': '__metadata__' is reserved, not a tensor name", path);
    if (!names.insert(t.name).second) fail("cannot write '{}': tensor '{}' given twice", path, t.name);
    if (!find_dtype(t.dtype))
      fail("cannot write '{}': tensor '{}' has dtype {}, which safetensors cannot hold (supported: {})", path,
           t.name, dtype_name(t.dtype), supported_dtype_list());
    for (auto d : t.shape)
      if (d < 0) fail("cannot write '{}': tensor '{}' has negative dimension {}", path, t.name, d);
    const auto expected = byte_count(t.shape, element_bytes(t.dtype));
    if (!expected || *expected != t.bytes.size())
      fail("cannot write '{}': tensor '{}' of dtype {} and shape [{}] needs {} bytes, given {}", path, t.name,
           dtype_name(t.dtype), fmt::join(t.shape, ", "), expected ? fmt::format("{}", *expected) : "too many",
           t.bytes.size());
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](const SafetensorsWriteTensor* a, const SafetensorsWriteTensor* b) {
    const int rank_a = find_dtype(a->dtype)->reference_rank, rank_b = find_dtype(b->dtype)->reference_rank;
    return rank_a != rank_b ? rank_a > rank_b : a->name < b->name;
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto* t : order) {
    nlohmann::ordered_json entry;
    entry["dtype"] = safetensors_dtype_name(t->dtype);
    entry["shape"] = t->shape;
    entry["data_offsets"] = {offset, offset + t->bytes.size()};
    header[t->name] = std::move(entry);
    offset += t->bytes.size();
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::type_error&) {
    fail("cannot write '{}': a tensor name or metadata string is not valid UTF-8", path);
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  TempFile out(path);
  std::uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<std::uint8_t>(header_text.size() >> (8 * i));
  out.write(length, sizeof length);
  out.write(header_text.data(), header_text.size());
  for (const auto* t : order) out.write(t->bytes.data(), t->bytes.size());
  out.commit(overwrite);
}

}  // namespace atom
