// safetensors reader and writer: round trips, the reference package's files, every malformed header.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "common/error.h"
#include "common/half.h"
#include "io/safetensors.h"

namespace atom {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "atom_safetensors_XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, std::span<const std::uint8_t> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// Replaces one byte of an existing file in place (rewriting whole files thousands of times is slow).
void poke_byte(const std::string& path, std::size_t offset, std::uint8_t value) {
  std::fstream io(path, std::ios::binary | std::ios::in | std::ios::out);
  io.seekp(static_cast<std::streamoff>(offset));
  io.put(static_cast<char>(value));
}

// A file with the given header text (no padding added) and data bytes; header_length overrides the length.
std::vector<std::uint8_t> raw_file(const std::string& header, std::size_t data_bytes,
                                   std::optional<std::uint64_t> header_length = std::nullopt) {
  const std::uint64_t n = header_length.value_or(header.size());
  std::vector<std::uint8_t> out(8 + header.size() + data_bytes);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, header.data(), header.size());
  for (std::size_t i = 0; i < data_bytes; ++i) out[8 + header.size() + i] = static_cast<std::uint8_t>(i * 7 + 1);
  return out;
}

// Runs fn, which must throw atom::Error whose message contains every one of `parts`.
template <class Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    return;
  }
  ADD_FAILURE() << "no atom::Error thrown";
}

// Opening the file must fail with a message naming it and each of `parts`.
void expect_open_error(const TempDir& dir, const std::string& header, std::size_t data_bytes,
                       std::initializer_list<std::string> parts) {
  const std::string path = dir.file("bad.safetensors");
  write_bytes(path, raw_file(header, data_bytes));
  SCOPED_TRACE(header);
  expect_error([&] { SafetensorsFile f(path); }, {path});
  expect_error([&] { SafetensorsFile f(path); }, parts);
}

template <class T>
std::vector<std::uint8_t> to_bytes(const std::vector<T>& values) {
  std::vector<std::uint8_t> out(values.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), values.data(), out.size());  // empty: data() may be null (UB)
  return out;
}

template <class T>
std::vector<T> from_bytes(const TensorView& t) {
  EXPECT_EQ(t.nbytes % sizeof(T), 0u);
  std::vector<T> out(t.nbytes / sizeof(T));
  std::memcpy(out.data(), t.data, t.nbytes);
  return out;
}

std::int64_t numel(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

// The tensors of tests/data/io/hf/reference_numpy.safetensors, by the formulas of
// scripts/dev/make_safetensors_refs.py (i = flat index).
struct OwnedTensor {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;
};

std::vector<OwnedTensor> numpy_reference_tensors() {
  auto make = [](const std::string& name, DType dtype, std::vector<std::int64_t> shape, auto value_of) {
    using T = decltype(value_of(std::int64_t{0}));
    std::vector<T> values;
    for (std::int64_t i = 0; i < numel(shape); ++i) values.push_back(value_of(i));
    return OwnedTensor{name, dtype, std::move(shape), to_bytes(values)};
  };
  return {
      make("f64", DType::F64, {2, 3}, [](std::int64_t i) { return static_cast<double>(i) * 0.1 - 1.3; }),
      make("f32", DType::F32, {4, 5}, [](std::int64_t i) { return static_cast<float>(i * 0.25 - 3.0); }),
      make("f16", DType::F16, {3, 2, 2}, [](std::int64_t i) { return fp32_to_fp16((i - 5) * 0.5f); }),
      make("i64", DType::I64, {5}, [](std::int64_t i) { return i * 1'000'000'007 - 5'000'000'000; }),
      make("i32", DType::I32, {2, 2}, [](std::int64_t i) { return static_cast<std::int32_t>(i * 100'003 - (1 << 30)); }),
      make("i16", DType::I16, {7}, [](std::int64_t i) { return static_cast<std::int16_t>(i * 1031 - 30000); }),
      make("i8", DType::I8, {3, 3}, [](std::int64_t i) { return static_cast<std::int8_t>((i * 37) % 256 - 128); }),
      make("u8", DType::U8, {10}, [](std::int64_t i) { return static_cast<std::uint8_t>((i * 37) % 256); }),
      make("empty", DType::F32, {0, 4}, [](std::int64_t) { return 0.0f; }),
      make("scalar", DType::F32, {}, [](std::int64_t) { return 1.5f; }),
  };
}

std::vector<SafetensorsWriteTensor> as_write_list(const std::vector<OwnedTensor>& tensors) {
  std::vector<SafetensorsWriteTensor> out;
  for (const auto& t : tensors) out.push_back({t.name, t.dtype, t.shape, t.bytes});
  return out;
}

void expect_same_tensors(const SafetensorsFile& file, const std::vector<OwnedTensor>& expected) {
  EXPECT_EQ(file.tensors().size(), expected.size());
  for (const auto& want : expected) {
    SCOPED_TRACE(want.name);
    const TensorView* got = file.find(want.name);
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(got->dtype, want.dtype);
    EXPECT_EQ(got->shape, want.shape);
    EXPECT_EQ(got->file, file.path());
    ASSERT_EQ(got->nbytes, want.bytes.size());
    if (!want.bytes.empty()) EXPECT_EQ(std::memcmp(got->data, want.bytes.data(), want.bytes.size()), 0);
  }
}

const std::string kDataDir = std::string(ATOM_TEST_DATA_DIR) + "/io/hf";

// ---- round trips

TEST(Safetensors, DTypeNamesMapBothWays) {
  for (auto dtype : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I16,
                     DType::I8, DType::U8}) {
    EXPECT_EQ(safetensors_dtype(safetensors_dtype_name(dtype)), dtype);
  }
  EXPECT_EQ(safetensors_dtype("BOOL"), std::nullopt);
  EXPECT_EQ(safetensors_dtype("f32"), std::nullopt);  // names are case-sensitive
  expect_error([] { safetensors_dtype_name(DType::Q4_0); }, {"Q4_0", "safetensors"});
}

TEST(Safetensors, RoundTripsEveryDTypeWithRandomData) {
  TempDir dir;
  std::mt19937_64 rng(1234);
  const std::pair<DType, std::size_t> dtypes[] = {{DType::F64, 8}, {DType::F32, 4}, {DType::F16, 2},
                                                  {DType::BF16, 2}, {DType::I64, 8}, {DType::I32, 4},
                                                  {DType::I16, 2}, {DType::I8, 1},  {DType::U8, 1}};
  const std::vector<std::int64_t> shapes[] = {{3, 5}, {7}, {2, 3, 4}, {}, {0, 9}, {1, 1, 13}};
  std::vector<OwnedTensor> tensors;
  int k = 0;
  for (const auto& [dtype, size] : dtypes) {
    for (const auto& shape : shapes) {
      OwnedTensor t{fmt::format("layers.{}.{}.t{}", k % 5, dtype_name(dtype), k), dtype, shape, {}};
      ++k;
      t.bytes.resize(static_cast<std::size_t>(numel(shape)) * size);
      for (auto& b : t.bytes) b = static_cast<std::uint8_t>(rng());
      tensors.push_back(std::move(t));
    }
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "π ≈ 3.14, \"quoted\"\n"}};
  const std::string path = dir.file("round.safetensors");
  write_safetensors(path, as_write_list(tensors), metadata);

  const SafetensorsFile file(path);
  expect_same_tensors(file, tensors);
  EXPECT_EQ(file.metadata(), metadata);
  // Layout as the reference writer: header padded to 8, largest elements first so each tensor is aligned.
  const auto bytes = read_bytes(path);
  std::uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  EXPECT_EQ(header_length % 8, 0u);
  std::size_t previous_size = 8;
  for (const auto& t : file.tensors()) {
    const std::size_t size = dtype_bytes(t.dtype, 1);
    EXPECT_LE(size, previous_size) << t.name;
    previous_size = size;
    // The first tensor's data starts right after the header.
    const auto offset = static_cast<std::size_t>(t.data - file.tensors().front().data) + 8 + header_length;
    EXPECT_EQ(offset % dtype_bytes(t.dtype, 1), 0u) << t.name;
  }
}

TEST(Safetensors, ReadsTheReferencePackagesNumpyFile) {
  const SafetensorsFile file(kDataDir + "/reference_numpy.safetensors");
  expect_same_tensors(file, numpy_reference_tensors());
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "np"}}));
}

TEST(Safetensors, ReadsTheReferencePackagesTorchBF16File) {
  const SafetensorsFile file(kDataDir + "/reference_torch.safetensors");
  const TensorView* bf16 = file.find("bf16");
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->dtype, DType::BF16);
  EXPECT_EQ(bf16->shape, (std::vector<std::int64_t>{4, 4}));
  const auto raw = from_bytes<std::uint16_t>(*bf16);
  ASSERT_EQ(raw.size(), 16u);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(bf16_to_fp32(raw[i]), (i - 8) * 0.125f) << i;
  const TensorView* f32 = file.find("f32");
  ASSERT_NE(f32, nullptr);
  EXPECT_EQ(from_bytes<float>(*f32), (std::vector<float>{0.0f, -2.5f, -5.0f}));
  EXPECT_EQ(file.metadata().at("format"), "pt");
}

TEST(Safetensors, WriterOutputIsByteIdenticalToTheReferencePackage) {
  // With one metadata entry (the reference orders several by hash), the layouts must agree byte for byte.
  TempDir dir;
  const std::string path = dir.file("ours.safetensors");
  const auto tensors = numpy_reference_tensors();
  write_safetensors(path, as_write_list(tensors), {{"format", "np"}});
  EXPECT_EQ(read_bytes(path), read_bytes(kDataDir + "/reference_numpy.safetensors"));

  // For scripts/dev/make_safetensors_refs.py --check: the reference package must read what we wrote.
  if (const char* export_dir = std::getenv("ATOM_HF_EXPORT_DIR")) {
    fs::create_directories(export_dir);
    write_safetensors(std::string(export_dir) + "/atom_written.safetensors", as_write_list(tensors),
                      {{"format", "np"}}, /*overwrite=*/true);
  }
}

TEST(Safetensors, EmptyFileOfNoTensorsRoundTrips) {
  TempDir dir;
  const std::string path = dir.file("none.safetensors");
  write_safetensors(path, {});
  const SafetensorsFile file(path);
  EXPECT_TRUE(file.tensors().empty());
  EXPECT_TRUE(file.metadata().empty());
  EXPECT_EQ(read_bytes(path).size(), 16u);  // length + "{}" padded to 8
}

// ---- writer refusals

TEST(Safetensors, WriterRefusesToOverwriteUnlessAsked) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  const std::vector<float> first = {1, 2, 3}, second = {4, 5};
  const std::vector<std::uint8_t> first_bytes = to_bytes(first);  // the tensor only views its bytes
  const SafetensorsWriteTensor a{"a", DType::F32, {3}, first_bytes};
  write_safetensors(path, std::span(&a, 1));
  const auto before = read_bytes(path);

  const std::vector<std::uint8_t> second_bytes = to_bytes(second);
  const SafetensorsWriteTensor b{"b", DType::F32, {2}, second_bytes};
  expect_error([&] { write_safetensors(path, std::span(&b, 1)); }, {path, "already exists"});
  EXPECT_EQ(read_bytes(path), before);

  write_safetensors(path, std::span(&b, 1), {}, /*overwrite=*/true);
  const SafetensorsFile file(path);
  EXPECT_EQ(file.find("a"), nullptr);
  ASSERT_NE(file.find("b"), nullptr);
  EXPECT_EQ(from_bytes<float>(*file.find("b")), second);
  // No temporary files are left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);
}

TEST(Safetensors, WriterRejectsBadTensorsAndLeavesNoFile) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  const std::vector<std::uint8_t> six(6), four(4);
  auto refuse = [&](std::vector<SafetensorsWriteTensor> tensors, std::initializer_list<std::string> parts) {
    expect_error([&] { write_safetensors(path, tensors); }, parts);
    EXPECT_TRUE(fs::is_empty(dir.path()));
  };
  refuse({{"w", DType::F32, {2}, six}}, {path, "'w'", "needs 8 bytes, given 6"});
  refuse({{"w", DType::F32, {-1}, four}}, {path, "'w'", "negative dimension -1"});
  refuse({{"w", DType::Q4_0, {32}, six}}, {path, "'w'", "Q4_0"});
  refuse({{"w", DType::F32, {1}, four}, {"w", DType::F32, {1}, four}}, {path, "'w'", "twice"});
  refuse({{"__metadata__", DType::F32, {1}, four}}, {path, "__metadata__", "reserved"});
  refuse({{"w", DType::U8, {std::int64_t{1} << 62, 8}, four}}, {path, "'w'", "too many"});
  refuse({{"bad\xff", DType::U8, {4}, four}}, {path, "UTF-8"});
  expect_error([&] { write_safetensors(dir.file("missing/dir/x.safetensors"), {}); },
               {dir.file("missing/dir/x.safetensors"), "cannot create"});
}

// ---- malformed files

TEST(Safetensors, RejectsFilesShorterThanTheLengthField) {
  TempDir dir;
  for (std::size_t n = 0; n < 8; ++n) {
    const std::string path = dir.file("short.safetensors");
    write_bytes(path, std::vector<std::uint8_t>(n, 0));
    expect_error([&] { SafetensorsFile f(path); }, {path, "shorter than the 8-byte header length"});
  }
}

TEST(Safetensors, RejectsBadHeaderLengths) {
  TempDir dir;
  const std::string path = dir.file("len.safetensors");
  write_bytes(path, raw_file("{}", 0, /*header_length=*/3));
  expect_error([&] { SafetensorsFile f(path); }, {path, "header length 3 runs past the end"});
  write_bytes(path, raw_file("{}", 0, /*header_length=*/~std::uint64_t{0}));
  expect_error([&] { SafetensorsFile f(path); }, {path, "header length 18446744073709551615 exceeds"});
  write_bytes(path, raw_file("{}", 0, /*header_length=*/kSafetensorsMaxHeaderBytes + 1));
  expect_error([&] { SafetensorsFile f(path); }, {path, "exceeds the 100000000-byte limit"});
}

TEST(Safetensors, RejectsMalformedJson) {
  TempDir dir;
  expect_open_error(dir, R"({"a": {"dtype": "F32",)", 0, {"header", "invalid JSON at byte"});
  expect_open_error(dir, "", 0, {"header", "invalid JSON at byte"});
  expect_open_error(dir, "{\"a\xff\": 1}", 0, {"invalid JSON at byte"});
  expect_open_error(dir, R"([1, 2])", 0, {"header must be a JSON object", "[1,2]"});
  expect_open_error(dir, R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                             "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                    8, {"duplicate JSON key \"a\""});
  expect_open_error(dir, R"({"a": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}})", 4,
                    {"duplicate JSON key \"dtype\""});
}

TEST(Safetensors, RejectsMissingAndIllTypedFields) {
  TempDir dir;
  expect_open_error(dir, R"({"w": 5})", 0, {"tensor 'w'", "entry must be an object, found 5"});
  expect_open_error(dir, R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", 4, {"tensor 'w'", "missing field 'dtype'"});
  expect_open_error(dir, R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", 4, {"tensor 'w'", "missing field 'shape'"});
  expect_open_error(dir, R"({"w": {"dtype": "F32", "shape": [1]}})", 4, {"tensor 'w'", "missing field 'data_offsets'"});
  expect_open_error(dir, R"({"w": {"dtype": 32, "shape": [1], "data_offsets": [0, 4]}})", 4,
                    {"tensor 'w'", "field 'dtype' must be a string, found 32"});
  expect_open_error(dir, R"({"w": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}})", 4,
                    {"tensor 'w'", "field 'shape' must be an array, found \"1\""});
  expect_open_error(dir, R"({"w": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}})", 4,
                    {"tensor 'w'", "field 'shape' must hold non-negative integers, found 1.0"});
  expect_open_error(dir, R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": {"begin": 0}}})", 4,
                    {"tensor 'w'", "field 'data_offsets' must be an array"});
  expect_open_error(dir, R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}})", 4,
                    {"tensor 'w'", "field 'data_offsets' must hold non-negative integers, found \"4\""});
  expect_open_error(dir, R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 8,
                    {"tensor 'w'", "must be [begin, end]"});
  expect_open_error(dir, R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e30]}})", 4,
                    {"tensor 'w'", "field 'data_offsets' must hold non-negative integers"});
  expect_open_error(dir, R"({"w": {"dtype": "F32", "shape": [99999999999999999999], "data_offsets": [0, 4]}})", 4,
                    {"tensor 'w'", "field 'shape'"});
  expect_open_error(dir, R"({"__metadata__": ["format"]})", 0, {"'__metadata__' must be an object"});
  expect_open_error(dir, R"({"__metadata__": {"format": 1}})", 0, {"'__metadata__' entry 'format' must be a string, found 1"});
}

TEST(Safetensors, RejectsUnknownAndUnsupportedDTypes) {
  TempDir dir;
  expect_open_error(dir, R"({"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}})", 4,
                    {"tensor 'w'", "unknown dtype 'F33'", "BF16"});
  expect_open_error(dir, R"({"mask": {"dtype": "BOOL", "shape": [4], "data_offsets": [0, 4]}})", 4,
                    {"tensor 'mask'", "unsupported dtype 'BOOL'"});
  expect_open_error(dir, R"({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}})", 4,
                    {"tensor 'w'", "unsupported dtype 'F8_E4M3'"});
}

TEST(Safetensors, RejectsBadShapesAndOffsets) {
  TempDir dir;
  expect_open_error(dir, R"({"w": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]}})", 24,
                    {"tensor 'w'", "field 'shape' has negative value -3"});
  expect_open_error(dir, R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 4,
                    {"tensor 'w'", "field 'data_offsets' has negative value -4"});
  expect_open_error(dir, R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8,
                    {"tensor 'w'", "[8, 4] ends before it begins"});
  expect_open_error(dir, R"({"w": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 10]}})", 16,
                    {"tensor 'w'", "spans 10 bytes but F16 of shape [2, 3] needs 12"});
  expect_open_error(dir, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 8,
                    {"tensor 'w'", "[4, 12] runs past the end of the data (8 bytes"});
  expect_open_error(dir, R"({"w": {"dtype": "U8", "shape": [4611686018427387904, 8], "data_offsets": [0, 8]}})", 8,
                    {"tensor 'w'", "too large"});
  expect_open_error(dir, R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                    12, {"tensor 'b'", "[4, 12] overlaps tensor 'a' [0, 8]"});
  // Tensors starting at the same offset.
  expect_open_error(dir, R"({"long": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]},
                             "short": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                             "inner": {"dtype": "U8", "shape": [2], "data_offsets": [8, 10]}})",
                    16, {"tensor 'long'", "overlaps tensor 'short' [0, 2]"});
}

TEST(Safetensors, AllowsGapsTrailingBytesAndEmptyTensorsAnywhere) {
  TempDir dir;
  const std::string path = dir.file("gaps.safetensors");
  write_bytes(path, raw_file(R"({"b": {"dtype": "U8", "shape": [2], "data_offsets": [10, 12]},
                                 "a": {"dtype": "U8", "shape": [3], "data_offsets": [1, 4]},
                                 "z": {"dtype": "F32", "shape": [0, 5], "data_offsets": [2, 2]}})",
                             20));
  const SafetensorsFile file(path);
  ASSERT_EQ(file.tensors().size(), 3u);
  // Data bytes are i * 7 + 1 (see raw_file); tensors come in file order.
  EXPECT_EQ(file.tensors()[0].name, "a");
  EXPECT_EQ(from_bytes<std::uint8_t>(*file.find("a")), (std::vector<std::uint8_t>{8, 15, 22}));
  EXPECT_EQ(from_bytes<std::uint8_t>(*file.find("b")), (std::vector<std::uint8_t>{71, 78}));
  EXPECT_EQ(file.find("z")->nbytes, 0u);
  EXPECT_EQ(file.find("zz"), nullptr);
}

TEST(Safetensors, EveryTruncationIsAnErrorNamingTheFile) {
  TempDir dir;
  const std::string good = dir.file("good.safetensors");
  const auto tensors = numpy_reference_tensors();
  write_safetensors(good, as_write_list(tensors), {{"format", "np"}});
  const auto bytes = read_bytes(good);
  std::uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  const std::string cut = dir.file("cut.safetensors");
  // Every byte of the length field and the header, and every byte of the data (cut from the end down).
  write_bytes(cut, bytes);
  for (std::size_t n = bytes.size(); n-- > 0;) {
    SCOPED_TRACE(n);
    fs::resize_file(cut, n);
    if (n < 8) {
      expect_error([&] { SafetensorsFile f(cut); }, {cut, "shorter than the 8-byte"});
    } else if (n < 8 + header_length) {
      expect_error([&] { SafetensorsFile f(cut); }, {cut, "runs past the end of the file"});
    } else {
      expect_error([&] { SafetensorsFile f(cut); }, {cut, "tensor '", "runs past the end of the data"});
    }
  }
  expect_same_tensors(SafetensorsFile(good), tensors);
}

TEST(Safetensors, CorruptedHeaderBytesNeverCrash) {
  // Every header byte replaced by bytes that matter to JSON: each file either opens with all tensors inside
  // the file, or fails with atom::Error.
  TempDir dir;
  const std::string good = dir.file("good.safetensors");
  write_safetensors(good, as_write_list(numpy_reference_tensors()), {{"format", "np"}});
  const auto bytes = read_bytes(good);
  std::uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  const std::string bad = dir.file("bad.safetensors");
  write_bytes(bad, bytes);
  int opened = 0, rejected = 0;
  for (std::size_t pos = 0; pos < 8 + header_length; ++pos) {
    for (std::uint8_t replacement : {'0', '9', '-', '"', '}', ']', ',', ' ', '\0', '\xff'}) {
      SCOPED_TRACE(fmt::format("byte {} set to {:#x}", pos, replacement));
      poke_byte(bad, pos, replacement);
      try {
        const SafetensorsFile file(bad);
        std::size_t data_bytes = 0;
        for (const auto& t : file.tensors()) {
          ASSERT_EQ(t.nbytes, static_cast<std::size_t>(t.numel()) * dtype_bytes(t.dtype, 1)) << t.name;
          for (std::size_t i = 0; i < t.nbytes; ++i) data_bytes += t.data[i] != 0xAB;  // touches every byte
        }
        EXPECT_LE(data_bytes, bytes.size());
        ++opened;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
        ++rejected;
      }
    }
    poke_byte(bad, pos, bytes[pos]);
  }
  EXPECT_GT(opened, 0);
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace atom
