// GGUF reader, GGUF tensor store and ModelConfig from GGUF, on synthetic files written by a small
// GGUF builder below (v2 and v3, every metadata type, nested arrays, block-quantized tensors).
#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/error.h"
#include "common/half.h"
#include "io/ggml_quants.h"
#include "io/gguf.h"
#include "io/gguf_store.h"

namespace atom {
namespace {

#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "'" << (text) << "' lacks '" << (part) << "'"

// ---------------------------------------------------------------- a GGUF writer for tests

template <class T>
void put(std::vector<std::uint8_t>& out, T v) {
  const std::size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

void put_string(std::vector<std::uint8_t>& out, std::string_view s) {
  put<std::uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

// A metadata value: its type tag and its encoding after the tag.
struct Value {
  std::uint32_t type;
  std::vector<std::uint8_t> payload;
};

template <class T>
Value scalar(T v) {
  Value x{static_cast<std::uint32_t>(gguf_type_of<T>()), {}};
  if constexpr (std::is_same_v<T, bool>) {
    put<std::uint8_t>(x.payload, v ? 1 : 0);
  } else {
    put(x.payload, v);
  }
  return x;
}

Value str(std::string_view s) {
  Value x{static_cast<std::uint32_t>(GgufType::String), {}};
  put_string(x.payload, s);
  return x;
}

Value array(GgufType elem_type, const std::vector<Value>& elems) {
  Value x{static_cast<std::uint32_t>(GgufType::Array), {}};
  put<std::uint32_t>(x.payload, static_cast<std::uint32_t>(elem_type));
  put<std::uint64_t>(x.payload, elems.size());
  for (const auto& e : elems) {
    EXPECT_EQ(e.type, static_cast<std::uint32_t>(elem_type));
    x.payload.insert(x.payload.end(), e.payload.begin(), e.payload.end());
  }
  return x;
}

template <class T>
Value array_of(const std::vector<T>& values) {
  std::vector<Value> elems;
  for (const T& v : values) elems.push_back(scalar<T>(v));
  return array(gguf_type_of<T>(), elems);
}

Value string_array(const std::vector<std::string>& values) {
  std::vector<Value> elems;
  for (const auto& v : values) elems.push_back(str(v));
  return array(GgufType::String, elems);
}

template <class T>
std::vector<std::uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<std::uint8_t> out(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> ne;  // GGUF order
  std::uint32_t ggml_type;
  std::vector<std::uint8_t> data;
  std::optional<std::uint64_t> offset;  // default: packed after the previous tensor, aligned
  std::optional<std::uint32_t> n_dims;  // default: ne.size()
};

struct Built {
  std::vector<std::uint8_t> bytes;
  std::size_t infos_end = 0;    // end of the tensor-info table
  std::size_t data_offset = 0;  // start of the data section
};

class GgufBuilder {
 public:
  std::uint32_t version = 3;
  std::size_t alignment = 32;  // layout only; add general.alignment yourself to declare another one
  std::vector<std::pair<std::string, Value>> kvs;
  std::vector<TensorSpec> tensors;

  GgufBuilder& kv(std::string key, Value v) {
    kvs.emplace_back(std::move(key), std::move(v));
    return *this;
  }
  GgufBuilder& tensor(TensorSpec t) {
    tensors.push_back(std::move(t));
    return *this;
  }
  GgufBuilder& f32_tensor(std::string name, std::vector<std::int64_t> ne, const std::vector<float>& values) {
    return tensor({std::move(name), std::move(ne), 0, bytes_of(values), {}, {}});
  }

  Built build() const {
    Built b;
    auto& out = b.bytes;
    out = {'G', 'G', 'U', 'F'};
    put<std::uint32_t>(out, version);
    put<std::uint64_t>(out, tensors.size());
    put<std::uint64_t>(out, kvs.size());
    for (const auto& [key, value] : kvs) {
      put_string(out, key);
      put<std::uint32_t>(out, value.type);
      out.insert(out.end(), value.payload.begin(), value.payload.end());
    }
    std::vector<std::uint64_t> offsets;
    std::uint64_t next = 0;
    for (const auto& t : tensors) {
      const std::uint64_t off = t.offset ? *t.offset : next;
      offsets.push_back(off);
      next = (off + t.data.size() + alignment - 1) / alignment * alignment;
      put_string(out, t.name);
      put<std::uint32_t>(out, t.n_dims ? *t.n_dims : static_cast<std::uint32_t>(t.ne.size()));
      for (const auto d : t.ne) put<std::int64_t>(out, d);
      put<std::uint32_t>(out, t.ggml_type);
      put<std::uint64_t>(out, off);
    }
    b.infos_end = out.size();
    b.data_offset = (out.size() + alignment - 1) / alignment * alignment;
    out.resize(b.data_offset, 0);
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const auto& data = tensors[i].data;
      const std::size_t at = b.data_offset + offsets[i];
      if (data.empty()) continue;  // lets tests declare far-away offsets without writing them
      if (out.size() < at + data.size()) out.resize(at + data.size(), 0);
      std::copy(data.begin(), data.end(), out.begin() + static_cast<std::ptrdiff_t>(at));
    }
    return b;
  }
};

std::string temp_path(std::string_view name) {
  return (std::filesystem::path(::testing::TempDir()) / fmt::format("atom_test_{}.gguf", name)).string();
}

// Writes a fresh file (unlink, then create): a file still mapped by an earlier GgufFile keeps its old
// contents, and creating is much cheaper than truncating a file to zero on some file systems.
std::string write_temp(const std::vector<std::uint8_t>& bytes, std::string_view name = "file") {
  const std::string path = temp_path(name);
  std::filesystem::remove(path);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  EXPECT_TRUE(out.good()) << path;
  return path;
}

// The atom::Error message GgufFile gives for these bytes ("" and a test failure when it opens fine).
std::string open_error(const std::vector<std::uint8_t>& bytes, std::string_view name = "bad") {
  const std::string path = write_temp(bytes, name);
  try {
    GgufFile f(path);
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_CONTAINS(what, path);
    return what;
  }
  ADD_FAILURE() << "GgufFile opened a corrupt file without an error";
  return "";
}

std::string open_error(const GgufBuilder& b, std::string_view name = "bad") {
  return open_error(b.build().bytes, name);
}

template <class T>
void patch(std::vector<std::uint8_t>& bytes, std::size_t at, T v) {
  std::memcpy(bytes.data() + at, &v, sizeof(T));
}

std::vector<float> iota_floats(std::size_t n, float start = 0.5f) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = start + static_cast<float>(i);
  return v;
}

std::vector<std::uint8_t> random_q8_0(std::size_t n_blocks, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> data(n_blocks * sizeof(ggml::BlockQ8_0));
  for (auto& b : data) b = static_cast<std::uint8_t>(rng());
  for (std::size_t i = 0; i < n_blocks; ++i) {
    const std::uint16_t d = fp32_to_fp16(0.001f * static_cast<float>(i + 1));
    std::memcpy(&data[i * sizeof(ggml::BlockQ8_0)], &d, 2);
  }
  return data;
}

// A file with every metadata type, nested arrays and three tensors (F32, Q8_0, F16).
GgufBuilder sample_builder(std::uint32_t version = 3) {
  GgufBuilder b;
  b.version = version;
  b.kv("general.architecture", str("llama"))
      .kv("t.u8", scalar<std::uint8_t>(200))
      .kv("t.i8", scalar<std::int8_t>(-100))
      .kv("t.u16", scalar<std::uint16_t>(60000))
      .kv("t.i16", scalar<std::int16_t>(-30000))
      .kv("t.u32", scalar<std::uint32_t>(4000000000u))
      .kv("t.i32", scalar<std::int32_t>(-2000000000))
      .kv("t.f32", scalar<float>(1.5f))
      .kv("t.bool", scalar<bool>(true))
      .kv("t.false", scalar<bool>(false))
      .kv("t.string", str("h\xc3\xa9llo \"q\"\n"))
      .kv("t.empty_string", str(""))
      .kv("t.u64", scalar<std::uint64_t>((std::uint64_t{1} << 63) + 5))
      .kv("t.i64", scalar<std::int64_t>(-(std::int64_t{1} << 62)))
      .kv("t.f64", scalar<double>(-2.25e300))
      .kv("t.arr_u8", array_of<std::uint8_t>({1, 2, 255}))
      .kv("t.arr_i8", array_of<std::int8_t>({-1, 127}))
      .kv("t.arr_u16", array_of<std::uint16_t>({65535}))
      .kv("t.arr_i16", array_of<std::int16_t>({-2, 3}))
      .kv("t.arr_u32", array_of<std::uint32_t>({7, 8, 9}))
      .kv("t.arr_i32", array_of<std::int32_t>({-7, 0, 2147483647}))
      .kv("t.arr_f32", array_of<float>({0.25f, -1e30f}))
      .kv("t.arr_bool", array_of<bool>({true, false, true}))
      .kv("t.arr_u64", array_of<std::uint64_t>({~std::uint64_t{0}}))
      .kv("t.arr_i64", array_of<std::int64_t>({-5}))
      .kv("t.arr_f64", array_of<double>({3.5, 1e-300}))
      .kv("t.arr_string", string_array({"a", "", "tokens with spaces", "\xe2\x96\x81x"}))
      .kv("t.arr_empty", array_of<std::uint32_t>({}))
      .kv("t.nested", array(GgufType::Array, {array_of<std::int32_t>({1, 2}), array_of<std::int32_t>({}),
                                              array_of<std::int32_t>({3})}))
      .kv("t.nested_strings", array(GgufType::Array, {string_array({"x", "y"})}))
      .kv("t.deep", array(GgufType::Array, {array(GgufType::Array, {array_of<float>({9.0f})})}));
  b.f32_tensor("weights", {4, 3}, iota_floats(12));
  b.tensor({"quantized", {64, 2}, 8, random_q8_0(4, 1), {}, {}});
  std::vector<std::uint16_t> halves = {fp32_to_fp16(1.0f), fp32_to_fp16(-2.5f), 0x7C00, 0x0001};
  b.tensor({"halves", {4}, 1, bytes_of(halves), {}, {}});
  return b;
}

// ---------------------------------------------------------------- reading

void check_sample(const GgufFile& f, std::uint32_t version) {
  EXPECT_EQ(f.version(), version);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset() % 32, 0u);
  EXPECT_EQ(f.architecture(), "llama");
  EXPECT_EQ(f.get_u8("t.u8"), 200);
  EXPECT_EQ(f.get_i8("t.i8"), -100);
  EXPECT_EQ(f.get_u16("t.u16"), 60000);
  EXPECT_EQ(f.get_i16("t.i16"), -30000);
  EXPECT_EQ(f.get_u32("t.u32"), 4000000000u);
  EXPECT_EQ(f.get_i32("t.i32"), -2000000000);
  EXPECT_EQ(f.get_f32("t.f32"), 1.5f);
  EXPECT_TRUE(f.get_bool("t.bool"));
  EXPECT_FALSE(f.get_bool("t.false"));
  EXPECT_EQ(f.get_string("t.string"), "h\xc3\xa9llo \"q\"\n");
  EXPECT_EQ(f.get_string("t.empty_string"), "");
  EXPECT_EQ(f.get_u64("t.u64"), (std::uint64_t{1} << 63) + 5);
  EXPECT_EQ(f.get_i64("t.i64"), -(std::int64_t{1} << 62));
  EXPECT_EQ(f.get_f64("t.f64"), -2.25e300);
  EXPECT_EQ(f.get_array_values<std::uint8_t>("t.arr_u8"), (std::vector<std::uint8_t>{1, 2, 255}));
  EXPECT_EQ(f.get_array_values<std::int8_t>("t.arr_i8"), (std::vector<std::int8_t>{-1, 127}));
  EXPECT_EQ(f.get_array_values<std::uint16_t>("t.arr_u16"), (std::vector<std::uint16_t>{65535}));
  EXPECT_EQ(f.get_array_values<std::int16_t>("t.arr_i16"), (std::vector<std::int16_t>{-2, 3}));
  EXPECT_EQ(f.get_array_values<std::uint32_t>("t.arr_u32"), (std::vector<std::uint32_t>{7, 8, 9}));
  EXPECT_EQ(f.get_array_values<std::int32_t>("t.arr_i32"), (std::vector<std::int32_t>{-7, 0, 2147483647}));
  EXPECT_EQ(f.get_array_values<float>("t.arr_f32"), (std::vector<float>{0.25f, -1e30f}));
  EXPECT_EQ(f.get_array_values<bool>("t.arr_bool"), (std::vector<bool>{true, false, true}));
  EXPECT_EQ(f.get_array_values<std::uint64_t>("t.arr_u64"), (std::vector<std::uint64_t>{~std::uint64_t{0}}));
  EXPECT_EQ(f.get_array_values<std::int64_t>("t.arr_i64"), (std::vector<std::int64_t>{-5}));
  EXPECT_EQ(f.get_array_values<double>("t.arr_f64"), (std::vector<double>{3.5, 1e-300}));
  const auto strings = f.get_string_array("t.arr_string");
  ASSERT_EQ(strings.size(), 4u);
  EXPECT_EQ(strings[0], "a");
  EXPECT_EQ(strings[1], "");
  EXPECT_EQ(strings[2], "tokens with spaces");
  EXPECT_EQ(strings[3], "\xe2\x96\x81x");
  EXPECT_TRUE(f.get_array_values<std::uint32_t>("t.arr_empty").empty());
  const GgufArray& nested = f.get_array("t.nested");
  ASSERT_EQ(nested.type, GgufType::Array);
  ASSERT_EQ(nested.size, 3u);
  ASSERT_EQ(nested.arrays.size(), 3u);
  EXPECT_EQ(nested.arrays[0].values<std::int32_t>("nested[0]"), (std::vector<std::int32_t>{1, 2}));
  EXPECT_EQ(nested.arrays[1].size, 0u);
  EXPECT_EQ(nested.arrays[2].values<std::int32_t>("nested[2]"), (std::vector<std::int32_t>{3}));
  const GgufArray& nested_strings = f.get_array("t.nested_strings");
  ASSERT_EQ(nested_strings.arrays.size(), 1u);
  EXPECT_EQ(nested_strings.arrays[0].strings, (std::vector<std::string_view>{"x", "y"}));
  const GgufArray& deep = f.get_array("t.deep");
  EXPECT_EQ(deep.arrays.at(0).arrays.at(0).values<float>("deep"), (std::vector<float>{9.0f}));

  // Metadata in file order, keys as written.
  ASSERT_EQ(f.metadata().size(), 31u);
  EXPECT_EQ(f.metadata()[0].key, "general.architecture");
  EXPECT_EQ(f.metadata()[30].key, "t.deep");
  EXPECT_EQ(f.find("absent"), nullptr);

  // Tensors.
  ASSERT_EQ(f.tensors().size(), 3u);
  const GgufTensorInfo* w = f.find_tensor("weights");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->ne, (std::vector<std::int64_t>{4, 3}));
  EXPECT_EQ(w->dtype, DType::F32);
  EXPECT_EQ(w->ggml_type, 0u);
  EXPECT_EQ(w->offset, 0u);
  EXPECT_EQ(w->nbytes, 48u);
  EXPECT_EQ(w->numel(), 12);
  std::vector<float> values(12);
  std::memcpy(values.data(), w->data, 48);
  EXPECT_EQ(values, iota_floats(12));
  const GgufTensorInfo* q = f.find_tensor("quantized");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->dtype, DType::Q8_0);
  EXPECT_EQ(q->offset, 64u);  // 48 bytes rounded up to the alignment
  EXPECT_EQ(q->nbytes, 4 * sizeof(ggml::BlockQ8_0));
  EXPECT_EQ(std::memcmp(q->data, random_q8_0(4, 1).data(), q->nbytes), 0);
  const GgufTensorInfo* halves = f.find_tensor("halves");
  ASSERT_NE(halves, nullptr);
  EXPECT_EQ(halves->dtype, DType::F16);
  float hv[4];
  dequantize_to_f32(halves->dtype, halves->data, hv, 4);
  EXPECT_EQ(hv[0], 1.0f);
  EXPECT_EQ(hv[1], -2.5f);
  EXPECT_TRUE(std::isinf(hv[2]));
  EXPECT_EQ(hv[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(f.find_tensor("absent"), nullptr);
  // No copies: tensor data lies inside the mapping, at the data section plus the offset.
  for (const auto& t : f.tensors()) {
    EXPECT_EQ(t.data, f.mapped_file().data() + f.data_offset() + t.offset);
    EXPECT_LE(t.data + t.nbytes, f.mapped_file().data() + f.mapped_file().size());
  }
}

TEST(GgufFile, ReadsEveryValueTypeV3) {
  const std::string path = write_temp(sample_builder(3).build().bytes, "sample_v3");
  check_sample(GgufFile(path), 3);
}

TEST(GgufFile, ReadsEveryValueTypeV2) {
  const std::string path = write_temp(sample_builder(2).build().bytes, "sample_v2");
  check_sample(GgufFile(path), 2);
}

TEST(GgufFile, TypedGettersNameKeyAndTypes) {
  const std::string path = write_temp(sample_builder().build().bytes, "getters");
  GgufFile f(path);
  auto error = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "no atom::Error";
    return "";
  };
  std::string e = error([&] { f.get_u32("t.f32"); });
  EXPECT_CONTAINS(e, path);
  EXPECT_CONTAINS(e, "'t.f32'");
  EXPECT_CONTAINS(e, "has type f32, expected u32");
  e = error([&] { f.get_string("t.u8"); });
  EXPECT_CONTAINS(e, "'t.u8' has type u8, expected string");
  e = error([&] { f.get_f32("t.arr_f32"); });
  EXPECT_CONTAINS(e, "has type array of f32, expected f32");
  e = error([&] { f.get_array("t.i32"); });
  EXPECT_CONTAINS(e, "'t.i32' has type i32, expected array");
  e = error([&] { f.get_array_values<std::int32_t>("t.arr_u32"); });
  EXPECT_CONTAINS(e, "'t.arr_u32' is an array of u32, expected an array of i32");
  e = error([&] { f.get_string_array("t.arr_i32"); });
  EXPECT_CONTAINS(e, "is an array of i32, expected an array of string");
  e = error([&] { f.get_u64("missing.key"); });
  EXPECT_CONTAINS(e, "'missing.key' is missing");
  EXPECT_CONTAINS(e, path);
}

TEST(GgufFile, ValueToString) {
  GgufFile f(write_temp(sample_builder().build().bytes, "to_string"));
  EXPECT_EQ(gguf_value_to_string(f.get("t.i8")), "-100");
  EXPECT_EQ(gguf_value_to_string(f.get("t.f32")), "1.5");
  EXPECT_EQ(gguf_value_to_string(f.get("t.bool")), "true");
  EXPECT_EQ(gguf_value_to_string(f.get("t.string")), "\"h\xc3\xa9llo \\\"q\\\"\\x0a\"");
  EXPECT_EQ(gguf_value_to_string(f.get("t.arr_u32"), 2), "[7, 8, ... (3 u32 elements)]");
  EXPECT_EQ(gguf_value_to_string(f.get("t.nested")), "[[1, 2], [], [3]]");
  EXPECT_EQ(gguf_value_to_string(f.get("t.arr_string")),
            "[\"a\", \"\", \"tokens with spaces\", \"\xe2\x96\x81x\"]");
}

TEST(GgufFile, AlignmentFromMetadata) {
  for (const std::uint32_t alignment : {1u, 8u, 64u, 4096u}) {
    SCOPED_TRACE(alignment);
    GgufBuilder b = sample_builder();
    b.alignment = alignment;
    b.kv("general.alignment", scalar<std::uint32_t>(alignment));
    const Built built = b.build();
    GgufFile f(write_temp(built.bytes, "alignment"));
    EXPECT_EQ(f.alignment(), alignment);
    EXPECT_EQ(f.data_offset(), built.data_offset);
    EXPECT_EQ(f.data_offset() % alignment, 0u);
    std::vector<float> q(64 * 2), want(64 * 2);
    const auto* t = f.find_tensor("quantized");
    dequantize_to_f32(t->dtype, t->data, q.data(), q.size());
    const auto raw = random_q8_0(4, 1);
    ggml::dequantize_q8_0(raw.data(), want.data(), 4);
    EXPECT_EQ(q, want);
  }
}

// A file written by an independent writer, gguf-py's GGUFWriter (scripts/dev/make_dequant_refs.py).
TEST(GgufFile, ReadsFileWrittenByGgufPy) {
  const std::string dir = std::string(ATOM_TEST_DATA_DIR) + "/io/gguf/";
  std::ifstream in(dir + "written_by_gguf_py.json");
  ASSERT_TRUE(in);
  const auto expected = nlohmann::json::parse(in);
  const GgufFile f(dir + "written_by_gguf_py.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.architecture(), "llama");
  EXPECT_EQ(f.alignment(), expected.at("alignment").get<std::size_t>());
  const auto& meta = expected.at("metadata");
  EXPECT_EQ(f.get_u8("t.u8"), meta.at("t.u8").get<std::uint8_t>());
  EXPECT_EQ(f.get_i8("t.i8"), meta.at("t.i8").get<std::int8_t>());
  EXPECT_EQ(f.get_u16("t.u16"), meta.at("t.u16").get<std::uint16_t>());
  EXPECT_EQ(f.get_i16("t.i16"), meta.at("t.i16").get<std::int16_t>());
  EXPECT_EQ(f.get_u32("t.u32"), meta.at("t.u32").get<std::uint32_t>());
  EXPECT_EQ(f.get_i32("t.i32"), meta.at("t.i32").get<std::int32_t>());
  EXPECT_EQ(f.get_f32("t.f32"), static_cast<float>(meta.at("t.f32").get<double>()));
  EXPECT_EQ(f.get_bool("t.bool"), meta.at("t.bool").get<bool>());
  EXPECT_EQ(f.get_string("t.string"), meta.at("t.string").get<std::string>());
  EXPECT_EQ(f.get_u64("t.u64"), meta.at("t.u64").get<std::uint64_t>());
  EXPECT_EQ(f.get_i64("t.i64"), meta.at("t.i64").get<std::int64_t>());
  EXPECT_EQ(f.get_f64("t.f64"), meta.at("t.f64").get<double>());
  EXPECT_EQ(f.get_array_values<std::int32_t>("t.arr_i32"), (std::vector<std::int32_t>{-7, 0, 2147483647}));
  EXPECT_EQ(f.get_array_values<float>("t.arr_f32"), (std::vector<float>{0.5f, -1.25f}));
  EXPECT_EQ(f.get_array_values<bool>("t.arr_bool"), (std::vector<bool>{true, false}));
  const auto strings = f.get_string_array("t.arr_string");
  EXPECT_EQ(std::vector<std::string_view>(strings.begin(), strings.end()),
            (std::vector<std::string_view>{"a", "", "\xe2\x96\x81x"}));
  EXPECT_EQ(gguf_value_to_string(f.get("t.nested")), "[[1, 2], [3]]");

  const auto store =
      make_gguf_tensor_store(std::make_shared<const GgufFile>(dir + "written_by_gguf_py.gguf"));
  const auto& tensors = expected.at("tensors");
  ASSERT_EQ(f.tensors().size(), tensors.size());
  for (const auto& t : tensors) {
    const std::string name = t.at("name");
    SCOPED_TRACE(name);
    const TensorView& view = store->get(name);
    EXPECT_EQ(dtype_name(view.dtype), t.at("dtype").get<std::string>());
    const auto shape = t.at("hf_shape").get<std::vector<std::int64_t>>();
    const auto values = store->load_f32(name, shape);
    const auto want = t.at("values").get<std::vector<float>>();
    ASSERT_EQ(values.size(), want.size());
    for (std::size_t i = 0; i < want.size(); ++i) ASSERT_EQ(values[i], want[i]) << i;
    EXPECT_EQ(f.find_tensor(name)->offset % 64, 0u);
  }
}

// ---------------------------------------------------------------- malformed files

TEST(GgufFile, EveryTruncationIsAnError) {
  for (const std::uint32_t version : {2u, 3u}) {
    const Built built = sample_builder(version).build();
    ASSERT_GT(built.data_offset, built.infos_end);  // the truncations cover padding too
    {
      const std::string path = write_temp(built.bytes, "whole");
      EXPECT_NO_THROW(GgufFile{path});
    }
    // Every byte count short of the whole file, through the header, both tables, padding and data.
    for (std::size_t cut = 0; cut < built.bytes.size(); ++cut) {
      const std::vector<std::uint8_t> prefix(built.bytes.begin(), built.bytes.begin() + cut);
      const std::string path = write_temp(prefix, "truncated");
      try {
        GgufFile f(path);
        ADD_FAILURE() << "v" << version << " truncated to " << cut << " of " << built.bytes.size()
                      << " bytes opened without an error";
      } catch (const Error& e) {
        EXPECT_CONTAINS(e.what(), path);
        const std::string what = e.what();
        EXPECT_TRUE(what.find("truncated") != std::string::npos ||
                    what.find("left in the file") != std::string::npos ||
                    what.find("past the end of the file") != std::string::npos)
            << what;
      }
    }
  }
}

TEST(GgufFile, TruncationMessagesNameTheField) {
  // No tensors and two entries, so that short files pass the count bounds and fail on the field itself:
  // header [0, 24), "k.arr" = u32 [1, 2, 3] [24, 65), "general.architecture" = "llama" [65, 110).
  GgufBuilder b;
  b.kv("k.arr", array_of<std::uint32_t>({1, 2, 3})).kv("general.architecture", str("llama"));
  const Built built = b.build();
  ASSERT_EQ(built.infos_end, 110u);
  auto cut_at = [&](std::size_t n) {
    return open_error(std::vector<std::uint8_t>(built.bytes.begin(), built.bytes.begin() + n));
  };
  EXPECT_CONTAINS(cut_at(2), "header: truncated: magic needs 4 bytes at offset 0 but the file ends at 2");
  EXPECT_CONTAINS(cut_at(6), "header: truncated: version");
  EXPECT_CONTAINS(cut_at(10), "header: truncated: tensor count");
  EXPECT_CONTAINS(cut_at(20), "header: truncated: metadata count");
  EXPECT_CONTAINS(cut_at(30), "header: metadata count 2 is impossible");
  EXPECT_CONTAINS(cut_at(52), "metadata key 'k.arr': truncated: array length");
  EXPECT_CONTAINS(cut_at(60), "metadata key 'k.arr': array length 3 is impossible");
  EXPECT_CONTAINS(cut_at(70), "metadata entry 1: truncated: key");
  EXPECT_CONTAINS(cut_at(80), "metadata entry 1: key has length 20 at offset 65 but only 7 bytes are left");
  EXPECT_CONTAINS(cut_at(95), "metadata key 'general.architecture': truncated: value type");
  EXPECT_CONTAINS(cut_at(107), "metadata key 'general.architecture': string value has length 5");

  const Built sample = sample_builder().build();
  const std::string e = open_error(
      std::vector<std::uint8_t>(sample.bytes.begin(), sample.bytes.begin() + sample.infos_end - 3));
  EXPECT_CONTAINS(e, "tensor 'halves': truncated: offset");
  const std::string past =
      open_error(std::vector<std::uint8_t>(sample.bytes.begin(), sample.bytes.end() - 1));
  EXPECT_CONTAINS(past, "tensor 'halves'");
  EXPECT_CONTAINS(past, "past the end of the file");
}

TEST(GgufFile, RandomCorruptionNeverCrashes) {
  const Built built = sample_builder().build();
  std::mt19937 rng(1234);
  int opened = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    auto bytes = built.bytes;
    const int n_changes = 1 + static_cast<int>(rng() % 4);
    for (int c = 0; c < n_changes; ++c) {
      const std::size_t at = rng() % built.infos_end;
      bytes[at] = (rng() % 2) ? static_cast<std::uint8_t>(rng())
                              : static_cast<std::uint8_t>(bytes[at] ^ (1u << (rng() % 8)));
    }
    const std::string path = write_temp(bytes, "fuzz");
    try {
      GgufFile f(path);
      ++opened;
      for (const auto& kv : f.metadata()) gguf_value_to_string(kv.value, 4);
      for (const auto& t : f.tensors()) {
        std::vector<float> out(static_cast<std::size_t>(t.numel()));
        dequantize_to_f32(t.dtype, t.data, out.data(), out.size());
      }
    } catch (const Error&) {
    }
  }
  EXPECT_GT(opened, 0);  // some corruptions only change values
}

TEST(GgufFile, RejectsBadHeader) {
  auto bytes = sample_builder().build().bytes;
  bytes[0] = 'X';
  EXPECT_CONTAINS(open_error(bytes), "not a GGUF file");

  GgufBuilder b = sample_builder();
  b.version = 1;
  EXPECT_CONTAINS(open_error(b), "GGUF version 1 is not supported");
  b.version = 4;
  EXPECT_CONTAINS(open_error(b), "unsupported GGUF version 4");
  b.version = 0x03000000;  // version 3 written big-endian
  EXPECT_CONTAINS(open_error(b), "big-endian");

  bytes = sample_builder().build().bytes;
  patch<std::uint64_t>(bytes, 8, std::uint64_t{1} << 50);
  EXPECT_CONTAINS(open_error(bytes), "tensor count 1125899906842624 is impossible");
  bytes = sample_builder().build().bytes;
  patch<std::uint64_t>(bytes, 16, ~std::uint64_t{0});
  EXPECT_CONTAINS(open_error(bytes), "metadata count 18446744073709551615 is impossible");
  bytes = sample_builder().build().bytes;
  patch<std::uint64_t>(bytes, 24, std::uint64_t{1} << 60);  // length of the first key
  EXPECT_CONTAINS(open_error(bytes), "key has length 1152921504606846976");
}

TEST(GgufFile, RejectsBadMetadata) {
  GgufBuilder b;
  b.kv("k.bad_type", Value{13, {0, 0, 0, 0}});
  EXPECT_CONTAINS(open_error(b), "metadata key 'k.bad_type': unknown value type 13");

  b = {};
  b.kv("k.bad_elem", Value{9, {}});
  put<std::uint32_t>(b.kvs[0].second.payload, 77);
  put<std::uint64_t>(b.kvs[0].second.payload, 0);
  EXPECT_CONTAINS(open_error(b), "metadata key 'k.bad_elem': unknown array element type 77");

  b = {};
  b.kv("k.huge_array", Value{9, {}});
  put<std::uint32_t>(b.kvs[0].second.payload, static_cast<std::uint32_t>(GgufType::U32));
  put<std::uint64_t>(b.kvs[0].second.payload, std::uint64_t{1} << 61);
  EXPECT_CONTAINS(open_error(b), "'k.huge_array': array length 2305843009213693952 is impossible");

  b = {};
  b.kv("k.huge_strings", Value{9, {}});
  put<std::uint32_t>(b.kvs[0].second.payload, static_cast<std::uint32_t>(GgufType::String));
  put<std::uint64_t>(b.kvs[0].second.payload, std::uint64_t{1} << 40);
  EXPECT_CONTAINS(open_error(b), "'k.huge_strings': array length 1099511627776 is impossible");

  b = {};
  b.kv("k.huge_string", Value{8, {}});
  put<std::uint64_t>(b.kvs[0].second.payload, ~std::uint64_t{0} - 3);
  EXPECT_CONTAINS(open_error(b), "'k.huge_string': string value has length");

  Value deep = array_of<std::uint8_t>({1});
  for (int i = 0; i < 8; ++i) deep = array(GgufType::Array, {deep});
  b = {};
  b.kv("k.deep", deep);
  EXPECT_CONTAINS(open_error(b), "'k.deep': arrays nested deeper than 8 levels");

  b = {};
  b.kv("k.dup", scalar<std::uint32_t>(1)).kv("k.other", str("x")).kv("k.dup", scalar<std::uint32_t>(2));
  EXPECT_CONTAINS(open_error(b), "metadata key 'k.dup': duplicate key");

  b = {};
  b.kv("", scalar<std::uint32_t>(1));
  EXPECT_CONTAINS(open_error(b), "metadata entry 0: empty key");

  b = {};
  b.kv("k.bool", Value{7, {2}});
  EXPECT_CONTAINS(open_error(b), "'k.bool': bool value is 2, not 0 or 1");
  b = {};
  b.kv("k.bools", Value{9, {}});
  put<std::uint32_t>(b.kvs[0].second.payload, 7);
  put<std::uint64_t>(b.kvs[0].second.payload, 2);
  b.kvs[0].second.payload.insert(b.kvs[0].second.payload.end(), {1, 5});
  EXPECT_CONTAINS(open_error(b), "'k.bools': bool array element 1 is 5");
}

TEST(GgufFile, RejectsBadAlignment) {
  for (const std::uint32_t a : {0u, 3u, 48u}) {
    GgufBuilder b = sample_builder();
    b.kv("general.alignment", scalar<std::uint32_t>(a));
    const std::string e = open_error(b);
    EXPECT_CONTAINS(e, "'general.alignment'");
    EXPECT_CONTAINS(e, fmt::format("alignment {} is not a power of two", a));
  }
  GgufBuilder b = sample_builder();
  b.kv("general.alignment", scalar<std::uint64_t>(64));
  EXPECT_CONTAINS(open_error(b), "'general.alignment': has type u64, expected u32");
}

TEST(GgufFile, RejectsBadTensorInfos) {
  auto with_tensor = [](TensorSpec t) {
    GgufBuilder b = sample_builder();
    b.tensor(std::move(t));
    return b;
  };
  const auto f32x8 = bytes_of(iota_floats(8));

  EXPECT_CONTAINS(open_error(with_tensor({"t.misaligned", {8}, 0, f32x8, 1000, {}})),
                  "tensor 't.misaligned': data offset 1000 is not a multiple of the alignment 32");
  {
    GgufBuilder b = with_tensor({"t.far", {8}, 0, {}, std::uint64_t{1} << 40, {}});
    const std::string e = open_error(b);
    EXPECT_CONTAINS(e, "tensor 't.far'");
    EXPECT_CONTAINS(e, "extends past the end of the file");
  }
  {
    GgufBuilder b = sample_builder();  // the last tensor, "halves", is cut short
    auto bytes = b.build().bytes;
    bytes.pop_back();
    EXPECT_CONTAINS(open_error(bytes), "tensor 'halves': data [224, 232)");
  }
  {
    const std::string e = open_error(with_tensor({"t.overlap", {8}, 0, f32x8, 64, {}}));  // on "quantized"
    EXPECT_CONTAINS(e, "tensor 't.overlap': data [64, 96) overlaps tensor 'quantized' at [64, 200)");
  }
  {
    const std::string e = open_error(with_tensor({"t.overlap2", {32}, 0, bytes_of(iota_floats(32)), 32, {}}));
    EXPECT_CONTAINS(e, "overlaps");  // [32, 160) starts inside "weights" [0, 48)
    EXPECT_CONTAINS(e, "'weights'");
  }
  EXPECT_CONTAINS(open_error(with_tensor({"weights", {8}, 0, f32x8, {}, {}})),
                  "tensor 'weights': duplicate tensor name");
  EXPECT_CONTAINS(open_error(with_tensor({"t.unknown", {8}, 99, f32x8, {}, {}})),
                  "tensor 't.unknown': ggml type 99 (unknown type id) is not supported");
  EXPECT_CONTAINS(open_error(with_tensor({"t.iq2", {256}, 16, std::vector<std::uint8_t>(66), {}, {}})),
                  "tensor 't.iq2': ggml type 16 (IQ2_XXS) is not supported");
  EXPECT_CONTAINS(open_error(with_tensor({"t.partial", {48}, 2, std::vector<std::uint8_t>(36), {}, {}})),
                  "tensor 't.partial': ne[0] = 48 is not a multiple of the Q4_0 block size 32");
  EXPECT_CONTAINS(open_error(with_tensor({"t.zero", {8, 0}, 0, {}, {}, {}})),
                  "tensor 't.zero': dimension ne[1] is 0, must be positive");
  EXPECT_CONTAINS(open_error(with_tensor({"t.negative", {-8}, 0, {}, {}, {}})),
                  "tensor 't.negative': dimension ne[0] is -8, must be positive");
  EXPECT_CONTAINS(open_error(with_tensor({"t.0d", {}, 0, {}, {}, {}})), "tensor 't.0d': n_dims is 0");
  EXPECT_CONTAINS(open_error(with_tensor({"t.5d", {1, 1, 1, 1, 1}, 0, {}, {}, {}})),
                  "tensor 't.5d': n_dims is 5, must be 1 to 4");
  EXPECT_CONTAINS(open_error(with_tensor({"t.overflow", {1 << 30, 1 << 30, 1 << 30}, 0, {}, {}, {}})),
                  "tensor 't.overflow': element count overflows");
  EXPECT_CONTAINS(open_error(with_tensor({"t.huge", {1 << 30, 1 << 20}, 0, {}, {}, {}})),
                  "tensor 't.huge': 1125899906842624 elements of F32 take more bytes than the whole file");
  EXPECT_CONTAINS(open_error(with_tensor({"", {8}, 0, f32x8, {}, {}})), "tensor info 3: empty tensor name");
  {
    auto bytes = sample_builder().build().bytes;
    patch<std::uint64_t>(bytes, 8, 4);  // claims one tensor more than the table holds
    EXPECT_CONTAINS(open_error(bytes), "tensor info 3");
  }
}

// ---------------------------------------------------------------- tensor store

// convert_hf_to_gguf.py's permute, literally:
//   w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
std::vector<float> llama_cpp_permute(const std::vector<float>& w, std::int64_t rows, std::int64_t cols,
                                     int n_head) {
  const std::int64_t A = n_head, B = 2, C = rows / n_head / 2, D = cols;
  std::vector<float> out(w.size());
  for (std::int64_t a = 0; a < A; ++a)
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t d = 0; d < D; ++d)
          out[((a * C + c) * B + b) * D + d] = w[((a * B + b) * C + c) * D + d];
  return out;
}

std::vector<float> random_floats(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST(GgufStore, UnpermuteInvertsLlamaCppPermute) {
  const std::tuple<int, int, int> shapes[] = {{8, 5, 2}, {64, 3, 4}, {12, 1, 3}, {6, 7, 1}, {128, 16, 2}};
  for (const auto& [rows, cols, heads] : shapes) {
    SCOPED_TRACE(fmt::format("{}x{} heads {}", rows, cols, heads));
    const auto hf = random_floats(static_cast<std::size_t>(rows * cols), static_cast<std::uint32_t>(rows));
    auto data = llama_cpp_permute(hf, rows, cols, heads);
    EXPECT_NE(data, hf);  // the permutation is not the identity for these shapes
    unpermute_llama_qk_rows("t", data.data(), rows, cols, heads);
    EXPECT_EQ(data, hf);
  }
  std::vector<float> v(30);
  try {
    unpermute_llama_qk_rows("GGUF file 'x': tensor 'q'", v.data(), 10, 3, 3);
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "tensor 'q'");
    EXPECT_CONTAINS(e.what(), "10 rows do not split into 3 heads");
  }
}

TEST(GgufStore, HfNames) {
  EXPECT_EQ(hf_tensor_name("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(hf_tensor_name("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(hf_tensor_name("output.weight"), "lm_head.weight");
  EXPECT_EQ(hf_tensor_name("blk.0.attn_norm.weight"), "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(hf_tensor_name("blk.17.ffn_norm.weight"), "model.layers.17.post_attention_layernorm.weight");
  EXPECT_EQ(hf_tensor_name("blk.3.attn_q.weight"), "model.layers.3.self_attn.q_proj.weight");
  EXPECT_EQ(hf_tensor_name("blk.3.attn_q.bias"), "model.layers.3.self_attn.q_proj.bias");
  EXPECT_EQ(hf_tensor_name("blk.3.attn_k.weight"), "model.layers.3.self_attn.k_proj.weight");
  EXPECT_EQ(hf_tensor_name("blk.3.attn_k.bias"), "model.layers.3.self_attn.k_proj.bias");
  EXPECT_EQ(hf_tensor_name("blk.3.attn_v.bias"), "model.layers.3.self_attn.v_proj.bias");
  EXPECT_EQ(hf_tensor_name("blk.3.attn_output.weight"), "model.layers.3.self_attn.o_proj.weight");
  EXPECT_EQ(hf_tensor_name("blk.3.ffn_gate.weight"), "model.layers.3.mlp.gate_proj.weight");
  EXPECT_EQ(hf_tensor_name("blk.3.ffn_up.weight"), "model.layers.3.mlp.up_proj.weight");
  EXPECT_EQ(hf_tensor_name("blk.10.ffn_down.weight"), "model.layers.10.mlp.down_proj.weight");
  // Unknown names stay as they are.
  EXPECT_EQ(hf_tensor_name("rope_freqs.weight"), "rope_freqs.weight");
  EXPECT_EQ(hf_tensor_name("blk.3.attn_q_norm.weight"), "blk.3.attn_q_norm.weight");
  EXPECT_EQ(hf_tensor_name("blk.x.attn_q.weight"), "blk.x.attn_q.weight");
  EXPECT_EQ(hf_tensor_name("blk..attn_q.weight"), "blk..attn_q.weight");
  EXPECT_EQ(hf_tensor_name("blk.3.attn_q.scale"), "blk.3.attn_q.scale");
  EXPECT_EQ(hf_tensor_name("blk.3.attn_q"), "blk.3.attn_q");
}

// A one-layer model: hidden 32, 2 heads of 16, 1 KV head, FFN 12, vocab 16; HF tensors in HF order.
struct TinyModel {
  static constexpr int kHidden = 32, kHeads = 2, kKvHeads = 1, kHeadDim = 16, kFfn = 12, kVocab = 16;
  std::vector<float> q = random_floats(kHidden * kHidden, 1),
                     k = random_floats(kKvHeads * kHeadDim * kHidden, 2);
  std::vector<float> v = random_floats(kKvHeads * kHeadDim * kHidden, 3),
                     o = random_floats(kHidden * kHidden, 4);
  std::vector<float> q_bias = random_floats(kHidden, 5), k_bias = random_floats(kKvHeads * kHeadDim, 6);
  std::vector<float> embed = random_floats(kVocab * kHidden, 7);

  GgufBuilder builder(std::string_view arch, bool permute, bool with_bias, bool with_output) const {
    GgufBuilder b;
    const std::string a(arch);
    b.kv("general.architecture", str(arch))
        .kv(a + ".context_length", scalar<std::uint32_t>(128))
        .kv(a + ".embedding_length", scalar<std::uint32_t>(kHidden))
        .kv(a + ".block_count", scalar<std::uint32_t>(1))
        .kv(a + ".feed_forward_length", scalar<std::uint32_t>(kFfn))
        .kv(a + ".attention.head_count", scalar<std::uint32_t>(kHeads))
        .kv(a + ".attention.head_count_kv", scalar<std::uint32_t>(kKvHeads))
        .kv(a + ".attention.layer_norm_rms_epsilon", scalar<float>(1e-6f))
        .kv(a + ".rope.freq_base", scalar<float>(500000.0f))
        .kv(a + ".rope.dimension_count", scalar<std::uint32_t>(kHeadDim));
    const int kv_rows = kKvHeads * kHeadDim;
    b.f32_tensor("token_embd.weight", {kHidden, kVocab}, embed);
    b.f32_tensor("blk.0.attn_norm.weight", {kHidden}, iota_floats(kHidden, 1.0f));
    b.f32_tensor("blk.0.attn_q.weight", {kHidden, kHidden},
                 permute ? llama_cpp_permute(q, kHidden, kHidden, kHeads) : q);
    b.f32_tensor("blk.0.attn_k.weight", {kHidden, kv_rows},
                 permute ? llama_cpp_permute(k, kv_rows, kHidden, kKvHeads) : k);
    b.f32_tensor("blk.0.attn_v.weight", {kHidden, kv_rows}, v);
    if (with_bias) {
      b.f32_tensor("blk.0.attn_q.bias", {kHidden},
                   permute ? llama_cpp_permute(q_bias, kHidden, 1, kHeads) : q_bias);
      b.f32_tensor("blk.0.attn_k.bias", {kv_rows},
                   permute ? llama_cpp_permute(k_bias, kv_rows, 1, kKvHeads) : k_bias);
      b.f32_tensor("blk.0.attn_v.bias", {kv_rows}, iota_floats(kv_rows));
    }
    b.f32_tensor("blk.0.attn_output.weight", {kHidden, kHidden}, o);
    b.f32_tensor("blk.0.ffn_norm.weight", {kHidden}, iota_floats(kHidden, 2.0f));
    b.tensor({"blk.0.ffn_gate.weight", {kHidden, kFfn}, 8, random_q8_0(kFfn, 8), {}, {}});
    b.f32_tensor("blk.0.ffn_up.weight", {kHidden, kFfn}, random_floats(kFfn * kHidden, 9));
    b.f32_tensor("blk.0.ffn_down.weight", {kFfn, kHidden}, random_floats(kFfn * kHidden, 10));
    b.f32_tensor("blk.0.attn_q_norm.weight", {kHeadDim}, iota_floats(kHeadDim));  // a name without a mapping
    b.f32_tensor("output_norm.weight", {kHidden}, iota_floats(kHidden, 3.0f));
    if (with_output) b.f32_tensor("output.weight", {kHidden, kVocab}, random_floats(kVocab * kHidden, 11));
    return b;
  }

  std::shared_ptr<const GgufFile> open(std::string_view arch, bool permute, bool with_bias,
                                       bool with_output) const {
    return std::make_shared<const GgufFile>(write_temp(
        builder(arch, permute, with_bias, with_output).build().bytes, fmt::format("tiny_{}", arch)));
  }
};

TEST(GgufStore, LlamaNamesShapesAndUnpermutedQK) {
  const TinyModel m;
  const auto file = m.open("llama", /*permute=*/true, /*with_bias=*/true, /*with_output=*/true);
  const auto store = make_gguf_tensor_store(file);
  EXPECT_EQ(store->names().size(), file->tensors().size());
  EXPECT_EQ(store->names().front(), "model.embed_tokens.weight");

  const TensorView& q = store->get("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(q.shape, (std::vector<std::int64_t>{32, 32}));
  EXPECT_EQ(q.dtype, DType::F32);
  EXPECT_EQ(q.file, file->path());
  EXPECT_EQ(q.data, file->find_tensor("blk.0.attn_q.weight")->data);  // a view, not a copy
  EXPECT_EQ(store->get("model.layers.0.self_attn.k_proj.weight").shape, (std::vector<std::int64_t>{16, 32}));
  EXPECT_EQ(store->get("model.layers.0.mlp.down_proj.weight").shape, (std::vector<std::int64_t>{32, 12}));
  EXPECT_EQ(store->get("model.layers.0.mlp.gate_proj.weight").shape, (std::vector<std::int64_t>{12, 32}));
  EXPECT_EQ(store->get("model.embed_tokens.weight").shape, (std::vector<std::int64_t>{16, 32}));
  EXPECT_EQ(store->get("model.norm.weight").shape, (std::vector<std::int64_t>{32}));
  EXPECT_TRUE(store->contains("lm_head.weight"));
  EXPECT_TRUE(store->contains("model.layers.0.input_layernorm.weight"));
  EXPECT_TRUE(store->contains("model.layers.0.post_attention_layernorm.weight"));
  EXPECT_TRUE(store->contains("model.layers.0.self_attn.o_proj.weight"));
  EXPECT_TRUE(store->contains("model.layers.0.mlp.up_proj.weight"));
  EXPECT_TRUE(store->contains("blk.0.attn_q_norm.weight"));
  EXPECT_FALSE(store->contains("blk.0.attn_q.weight"));

  // Q and K (weights and biases) come back in HF order; everything else as stored.
  EXPECT_EQ(store->load_f32("model.layers.0.self_attn.q_proj.weight", {32, 32}), m.q);
  EXPECT_EQ(store->load_f32("model.layers.0.self_attn.k_proj.weight", {16, 32}), m.k);
  EXPECT_EQ(store->load_f32("model.layers.0.self_attn.q_proj.bias", {32}), m.q_bias);
  EXPECT_EQ(store->load_f32("model.layers.0.self_attn.k_proj.bias", {16}), m.k_bias);
  EXPECT_EQ(store->load_f32("model.layers.0.self_attn.v_proj.weight", {16, 32}), m.v);
  EXPECT_EQ(store->load_f32("model.layers.0.self_attn.o_proj.weight"), m.o);
  EXPECT_EQ(store->load_f32("model.embed_tokens.weight", {16, 32}), m.embed);
  // Quantized tensors dequantize on load.
  std::vector<float> gate(12 * 32);
  const auto raw = random_q8_0(12, 8);
  ggml::dequantize_q8_0(raw.data(), gate.data(), 12);
  EXPECT_EQ(store->load_f32("model.layers.0.mlp.gate_proj.weight", {12, 32}), gate);
}

TEST(GgufStore, Qwen2IsNotPermuted) {
  const TinyModel m;
  const auto store = make_gguf_tensor_store(m.open("qwen2", /*permute=*/false, true, true));
  EXPECT_EQ(store->load_f32("model.layers.0.self_attn.q_proj.weight", {32, 32}), m.q);
  EXPECT_EQ(store->load_f32("model.layers.0.self_attn.k_proj.weight", {16, 32}), m.k);
  EXPECT_EQ(store->load_f32("model.layers.0.self_attn.q_proj.bias", {32}), m.q_bias);
}

TEST(GgufStore, Errors) {
  const TinyModel m;
  const auto file = m.open("llama", true, false, true);
  const auto store = make_gguf_tensor_store(file);
  try {
    store->get("model.layers.5.self_attn.q_proj.weight");
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "tensor 'model.layers.5.self_attn.q_proj.weight' not found");
    EXPECT_CONTAINS(e.what(), fmt::format("GGUF file '{}'", file->path()));
  }
  try {
    store->load_f32("model.layers.0.self_attn.k_proj.weight", {8, 8});  // is [16, 32]
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(),
                    "tensor 'model.layers.0.self_attn.k_proj.weight' has shape [16, 32], expected [8, 8]");
  }

  // Unsupported architecture.
  GgufBuilder b = m.builder("llama", true, false, true);
  b.kvs[0].second = str("gpt2");
  const auto gpt2 = std::make_shared<const GgufFile>(write_temp(b.build().bytes, "gpt2"));
  try {
    make_gguf_tensor_store(gpt2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "general.architecture 'gpt2' is not supported");
  }
  EXPECT_THROW(model_config_from_gguf(*gpt2), Error);

  // Two GGUF names for one HF name.
  b = m.builder("llama", true, false, true);
  b.f32_tensor("model.norm.weight", {32}, iota_floats(32));
  try {
    make_gguf_tensor_store(std::make_shared<const GgufFile>(write_temp(b.build().bytes, "clash")));
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "both map to the name 'model.norm.weight'");
  }

  // A head count that does not divide the Q rows fails when Q is loaded.
  b = m.builder("llama", true, false, true);
  b.kvs[5].second = scalar<std::uint32_t>(3);  // llama.attention.head_count
  ASSERT_EQ(b.kvs[5].first, "llama.attention.head_count");
  const auto bad_heads =
      make_gguf_tensor_store(std::make_shared<const GgufFile>(write_temp(b.build().bytes, "heads")));
  try {
    bad_heads->load_f32("model.layers.0.self_attn.q_proj.weight");
    FAIL();
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "q_proj.weight");
    EXPECT_CONTAINS(e.what(), "32 rows do not split into 3 heads");
  }
}

// ---------------------------------------------------------------- ModelConfig

TEST(GgufConfig, FromMetadataAndShapes) {
  const TinyModel m;
  const ModelConfig c = model_config_from_gguf(*m.open("llama", true, false, true));
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.vocab_size, 16);
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.intermediate_size, 12);
  EXPECT_EQ(c.num_layers, 1);
  EXPECT_EQ(c.num_heads, 2);
  EXPECT_EQ(c.num_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 128);
  EXPECT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.rope_theta, 500000.0f);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.rope_scaling.type, "");

  const ModelConfig tied = model_config_from_gguf(*m.open("qwen2", false, true, /*with_output=*/false));
  EXPECT_EQ(tied.architecture, "qwen2");
  EXPECT_TRUE(tied.tie_word_embeddings);
  EXPECT_TRUE(tied.attention_bias);
}

TEST(GgufConfig, Defaults) {
  const TinyModel m;
  GgufBuilder b = m.builder("llama", true, false, true);
  std::erase_if(b.kvs, [](const auto& kv) {
    return kv.first == "llama.attention.head_count_kv" || kv.first == "llama.rope.freq_base" ||
           kv.first == "llama.rope.dimension_count";
  });
  const ModelConfig c = model_config_from_gguf(GgufFile(write_temp(b.build().bytes, "defaults")));
  EXPECT_EQ(c.num_kv_heads, 2);  // = head_count
  EXPECT_EQ(c.rope_theta, 10000.0f);
  EXPECT_EQ(c.head_dim, 16);  // hidden / heads

  b.kv("llama.attention.key_length", scalar<std::uint32_t>(6));  // head_dim need not be hidden / heads
  b.kv("llama.attention.value_length", scalar<std::uint32_t>(6));
  EXPECT_EQ(model_config_from_gguf(GgufFile(write_temp(b.build().bytes, "key_length"))).head_dim, 6);
}

TEST(GgufConfig, Errors) {
  const TinyModel m;
  auto config_error = [&](const std::function<void(GgufBuilder&)>& edit) -> std::string {
    GgufBuilder b = m.builder("llama", true, false, true);
    edit(b);
    const GgufFile f(write_temp(b.build().bytes, "config_error"));
    try {
      model_config_from_gguf(f);
    } catch (const Error& e) {
      EXPECT_CONTAINS(e.what(), f.path());
      return e.what();
    }
    ADD_FAILURE() << "no atom::Error";
    return "";
  };
  auto drop = [](std::string key) {
    return [key](GgufBuilder& b) { std::erase_if(b.kvs, [&](const auto& kv) { return kv.first == key; }); };
  };
  EXPECT_CONTAINS(config_error(drop("llama.block_count")), "'llama.block_count' is missing");
  EXPECT_CONTAINS(config_error(drop("llama.attention.layer_norm_rms_epsilon")),
                  "'llama.attention.layer_norm_rms_epsilon' is missing");
  EXPECT_CONTAINS(config_error(drop("general.architecture")), "'general.architecture' is missing");
  EXPECT_CONTAINS(config_error([](GgufBuilder& b) { b.kvs[2].second = scalar<float>(32.0f); }),
                  "'llama.embedding_length' has type f32, expected u32");
  EXPECT_CONTAINS(config_error([](GgufBuilder& b) { b.kvs[0].second = str("falcon"); }),
                  "general.architecture 'falcon' is not supported");
  EXPECT_CONTAINS(config_error([](GgufBuilder& b) { b.kvs[9].second = scalar<std::uint32_t>(2); }),
                  "partial rotary embeddings are not supported");
  // A hidden size the heads do not divide is named as such (not as "head dimension is 0").
  EXPECT_CONTAINS(config_error([](GgufBuilder& b) { b.kvs[2].second = scalar<std::uint32_t>(9); }),
                  "llama.embedding_length 9 is not divisible by llama.attention.head_count 2");
  EXPECT_CONTAINS(config_error([](GgufBuilder& b) { b.kv("llama.rope.scaling.type", str("yarn")); }),
                  "'yarn' is not supported");
  EXPECT_CONTAINS(config_error([](GgufBuilder& b) {
                    b.f32_tensor("rope_freqs.weight", {2}, {1.0f, 1.0f});
                  }),
                  "rope_freqs.weight");
  EXPECT_CONTAINS(config_error([](GgufBuilder& b) { b.kv("llama.vocab_size", scalar<std::uint32_t>(17)); }),
                  "'token_embd.weight' has 16 rows");
  EXPECT_CONTAINS(config_error([](GgufBuilder& b) { b.kvs[6].second = scalar<std::uint32_t>(3); }),
                  "num_kv_heads 3 does not divide num_heads 2");  // from ModelConfig::validate
  EXPECT_CONTAINS(config_error([](GgufBuilder& b) {
                    std::erase_if(b.tensors, [](const auto& t) { return t.name == "token_embd.weight"; });
                  }),
                  "'token_embd.weight' is missing");
}

}  // namespace
}  // namespace atom
