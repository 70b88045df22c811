// Safetensors reader/writer: round trips (single file, sharded), every corrupt-header case, fp16/bf16 conversion.
#include "runtime/io/safetensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "common/error.h"
#include "quant/half.h"

namespace genesis::runtime {
using quant::bf16_to_f32;
using quant::f32_to_bf16;
using quant::f16_to_f32;
using quant::f32_to_f16;
namespace {

namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("genesis_io_test_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// A raw file: 8-byte length, the header text as given, then `data_len` bytes of data.
std::string raw_file(const std::string& header, size_t data_len, uint64_t claimed_len = UINT64_MAX) {
  const uint64_t len = claimed_len == UINT64_MAX ? header.size() : claimed_len;
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char(uint8_t(len >> (8 * i)));
  return s + header + std::string(data_len, '\x01');
}

// Expects open_safetensors(path) to throw a genesis::Error whose message contains every string in `parts`.
void expect_error(const fs::path& path, std::initializer_list<std::string> parts) {
  try {
    open_safetensors(path.string());
    FAIL() << "no error for " << path;
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

TEST(Safetensors, WriteThenReadSingleFile) {
  const fs::path dir = temp_dir("single");
  const fs::path file = dir / "a.safetensors";
  std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -8.5f};
  std::vector<uint16_t> b(12);
  for (size_t i = 0; i < b.size(); ++i) b[i] = f32_to_bf16(float(i) * 0.5f - 2.0f);
  std::vector<uint8_t> c = {1, 2, 3};
  {
    SafetensorsWriter w(file.string(),
                        {{"a", Dtype::f32, {2, 3}}, {"b", Dtype::bf16, {3, 4}}, {"empty", Dtype::f32, {0, 5}},
                         {"c", Dtype::u8, {3}}},
                        {{"format", "pt"}});
    w.write("a", a.data(), 8);  // in pieces
    w.write("a", reinterpret_cast<const uint8_t*>(a.data()) + 8, 16);
    w.write("b", b.data(), b.size() * 2);
    w.write("c", c.data(), 3);
    w.finish();
    EXPECT_EQ(w.bytes_written(), w.total_bytes());
    EXPECT_EQ(fs::file_size(file), w.total_bytes());
  }
  auto src = open_safetensors(file.string());
  ASSERT_NE(src->find("a"), nullptr);
  EXPECT_EQ(src->find("a")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(to_f32(*src->find("a")), a);
  const auto bf = to_f32(*src->find("b"));
  for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(bf[i], float(i) * 0.5f - 2.0f);
  const auto rows = to_f32_rows(*src->find("b"), 1, 2);
  ASSERT_EQ(rows.size(), 8u);
  EXPECT_EQ(rows[0], bf[4]);
  EXPECT_EQ(src->find("empty")->numel(), 0);
  EXPECT_EQ(src->find("c")->nbytes, 3u);
  EXPECT_EQ(src->find("missing"), nullptr);
  EXPECT_EQ(safetensors_metadata(*src, "a").at("format"), "pt");
  EXPECT_THROW(to_f32(*src->find("c")), Error);
  EXPECT_THROW(to_f32_rows(*src->find("b"), 2, 2), Error);
  // A directory holding one model.safetensors opens too.
  fs::rename(file, dir / "model.safetensors");
  EXPECT_NE(open_safetensors(dir.string())->find("b"), nullptr);
  fs::remove_all(dir);
}

TEST(Safetensors, WriterChecksOrderAndCompleteness) {
  const fs::path dir = temp_dir("writer");
  const std::string path = (dir / "x.safetensors").string();
  float v[4] = {1, 2, 3, 4};
  {
    SafetensorsWriter w(path, {{"a", Dtype::f32, {2}}, {"b", Dtype::f32, {2}}});
    EXPECT_THROW(w.write("b", v, 8), Error);   // out of order
    EXPECT_THROW(w.write("a", v, 12), Error);  // too many bytes
    w.write("a", v, 8);
    EXPECT_THROW(w.finish(), Error);  // b incomplete
  }
  EXPECT_FALSE(fs::exists(path));  // a failed writer leaves no partial file
  EXPECT_THROW(SafetensorsWriter(path, {{"a", Dtype::f32, {1}}, {"a", Dtype::f32, {1}}}), Error);
  fs::remove_all(dir);
}

TEST(Safetensors, ShardedRoundTrip) {
  const fs::path dir = temp_dir("sharded");
  std::vector<TensorSpec> specs;
  std::vector<std::vector<float>> data;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (int i = 0; i < 7; ++i) {
    specs.push_back({"t" + std::to_string(i), Dtype::f32, {int64_t(10 + i), 4}});
    data.emplace_back(size_t((10 + i) * 4));
    for (auto& x : data.back()) x = nd(rng);
  }
  ShardedSafetensorsWriter w(dir.string(), specs, 400);
  for (int i = 0; i < 7; ++i) w.write(specs[size_t(i)].name, data[size_t(i)].data(), data[size_t(i)].size() * 4);
  w.finish();
  EXPECT_GT(w.num_shards(), 2);
  EXPECT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  auto src = open_safetensors(dir.string());
  EXPECT_EQ(src->names().size(), 7u);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(to_f32(*src->find("t" + std::to_string(i))), data[size_t(i)]);
  EXPECT_NE(src->describe("t6").find("shard"), std::string::npos);

  // A shard that disappears, and an index naming a tensor its shard lacks, are errors naming both.
  const fs::path second = dir / fmt::format("model-00002-of-{:05d}.safetensors", w.num_shards());
  const fs::path moved = dir / "moved.bin";
  fs::rename(second, moved);
  expect_error(dir, {"model-00002-of", "does not exist", "model.safetensors.index.json"});
  fs::rename(moved, second);
  std::ifstream in(dir / "model.safetensors.index.json");
  std::string idx((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  const std::string entry = "\"t0\": \"model-00001";
  const size_t pos = idx.find(entry);
  ASSERT_NE(pos, std::string::npos);
  idx.insert(pos, "\"ghost\": \"model-00001-of-0000" + std::to_string(w.num_shards()) + ".safetensors\",\n");
  write_bytes(dir / "model.safetensors.index.json", idx);
  expect_error(dir, {"ghost", "does not contain it"});
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map": {"t0": "../etc/passwd"}})");
  expect_error(dir, {"t0", "not a plain file name"});
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map": {"t0": "nothere.safetensors"}})");
  expect_error(dir, {"t0", "nothere.safetensors", "does not exist"});
  write_bytes(dir / "model.safetensors.index.json", "{\"weight_map\": ");
  expect_error(dir, {"model.safetensors.index.json", "JSON"});
  fs::remove_all(dir);
}

TEST(Safetensors, CorruptHeaders) {
  const fs::path dir = temp_dir("corrupt");
  const fs::path f = dir / "bad.safetensors";
  const std::string good = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  write_bytes(f, raw_file(good, 16));
  EXPECT_NO_THROW(open_safetensors(f.string()));

  write_bytes(f, "");
  expect_error(f, {"bad.safetensors", "truncated"});
  write_bytes(f, "abc");
  expect_error(f, {"bad.safetensors", "truncated"});
  write_bytes(f, raw_file(good, 16, 1ull << 40));
  expect_error(f, {"bad.safetensors", "past the end"});
  write_bytes(f, raw_file(good, 16, UINT64_MAX - 3));
  expect_error(f, {"bad.safetensors", "past the end"});
  write_bytes(f, raw_file(good, 10));  // data truncated
  expect_error(f, {"bad.safetensors", "'w'", "past the data area"});
  write_bytes(f, raw_file("{\"w\": [", 16));
  expect_error(f, {"bad.safetensors", "not valid JSON"});
  write_bytes(f, raw_file("[1,2]", 0));
  expect_error(f, {"bad.safetensors", "not a JSON object"});
  write_bytes(f, raw_file(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2));
  expect_error(f, {"bad.safetensors", "'w'", "unsupported dtype", "F8_E4M3"});
  write_bytes(f, raw_file(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", 16));
  expect_error(f, {"bad.safetensors", "'w'", "[2, 3]", "needs 24 bytes"});
  write_bytes(f, raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 16));
  expect_error(f, {"'w'", "backwards"});
  write_bytes(f, raw_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 16));
  expect_error(f, {"'w'", "non-negative"});
  write_bytes(f, raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 16));
  expect_error(f, {"'w'", "overflow"});
  write_bytes(f, raw_file(R"({"w":{"dtype":"F32","shape":[2]}})", 16));
  expect_error(f, {"'w'", "data_offsets"});
  write_bytes(f, raw_file(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 16));
  expect_error(f, {"'w'", "dtype"});
  write_bytes(f, raw_file(
                     R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                     16));
  expect_error(f, {"overlaps"});
  write_bytes(f, raw_file(R"({"__metadata__":{"k":1},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4));
  expect_error(f, {"__metadata__"});
  write_bytes(f, raw_file(R"({"__metadata__":{"k":"v"},"w":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})", 4));
  EXPECT_EQ(open_safetensors(f.string())->find("w")->numel(), 1);
  expect_error(dir / "nope.safetensors", {"nope.safetensors", "no such file"});
  fs::remove(f);
  expect_error(dir, {"expected model.safetensors"});
  fs::remove_all(dir);
}

TEST(Half, F16RoundTripIsExactForEveryValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), uint16_t(h)) << h;
  }
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);           // rounds to inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0);    // tie to even (zero)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 1);    // above the tie
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie to even
}

TEST(Half, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);  // tie to even
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
}

}  // namespace
}  // namespace genesis::runtime
