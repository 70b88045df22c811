// GGUF reader and ggml dequantizers: against a golden file made by the `gguf` Python package
// (tools/make_gguf_golden.py): every metadata type, and every format's dequantization bit for bit; then files that
// lie about their sizes, offsets, types and counts are clean errors.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "quant/ggml.h"
#include "runtime/io/gguf.h"

namespace genesis::runtime {
namespace {

const std::string kGolden = std::string(GENESIS_QUANT_TESTDATA) + "/ggml_golden.gguf";

TEST(Gguf, MetadataOfEveryType) {
  auto f = GgufFile::open(kGolden);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->find_meta("general.architecture")->get<std::string>(), "llama");
  EXPECT_EQ(f->find_meta("test.u8")->get<int>(), 200);
  EXPECT_EQ(f->find_meta("test.i8")->get<int>(), -100);
  EXPECT_EQ(f->find_meta("test.u16")->get<int>(), 60000);
  EXPECT_EQ(f->find_meta("test.i16")->get<int>(), -30000);
  EXPECT_EQ(f->find_meta("test.u32")->get<uint64_t>(), 4000000000u);
  EXPECT_EQ(f->find_meta("test.i32")->get<int64_t>(), -2000000000);
  EXPECT_EQ(f->find_meta("test.f32")->get<double>(), 0.15625);
  EXPECT_EQ(f->find_meta("test.u64")->get<uint64_t>(), (uint64_t(1) << 60) + 3);
  EXPECT_EQ(f->find_meta("test.i64")->get<int64_t>(), -(int64_t(1) << 60) - 3);
  EXPECT_EQ(f->find_meta("test.f64")->get<double>(), 2.718281828459045);
  EXPECT_EQ(f->find_meta("test.bool")->get<bool>(), true);
  EXPECT_EQ(f->find_meta("test.str")->get<std::string>(), "h\xC3\xA9llo, GGUF");
  EXPECT_EQ(f->find_meta("test.arr_i32")->dump(), "[1,-2,3]");
  EXPECT_EQ(f->find_meta("test.arr_str")->dump(), R"(["a","bc",""])");
  EXPECT_EQ(f->find_meta("no.such.key"), nullptr);
}

TEST(Gguf, EveryFormatDequantizesBitExactlyAsTheGgufPackage) {
  auto f = GgufFile::open(kGolden);
  int checked = 0;
  for (const char* name : {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"}) {
    const GgufTensor* t = f->find(std::string("t.") + name);
    const GgufTensor* e = f->find(std::string("t.") + name + ".expected");
    ASSERT_TRUE(t && e) << name;
    EXPECT_EQ(t->ne, (std::vector<int64_t>{512, 3})) << name;
    const auto got = f->to_f32(*t), want = f->to_f32(*e);
    ASSERT_EQ(got.size(), want.size()) << name;
    size_t diff = 0;
    for (size_t i = 0; i < got.size(); ++i) diff += std::memcmp(&got[i], &want[i], 4) != 0;
    EXPECT_EQ(diff, 0u) << name << ": " << diff << " of " << got.size() << " values differ";
    ++checked;
  }
  EXPECT_EQ(checked, 11);
}

std::string golden_bytes() {
  std::ifstream f(kGolden, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void expect_error(const std::string& bytes, const std::string& needle) {
  try {
    GgufFile::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "bad.gguf");
    ADD_FAILURE() << "no error; expected one mentioning \"" << needle << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Gguf, MalformedFilesAreClearErrors) {
  const std::string g = golden_bytes();
  expect_error("", "magic");
  expect_error("GGML" + g.substr(4), "not a GGUF file");
  std::string v = g;
  v[4] = 9;
  expect_error(v, "version 9");
  for (size_t cut : {size_t(10), size_t(30), size_t(200), g.size() / 2, g.size() - 1})
    expect_error(g.substr(0, cut), "bad.gguf");  // truncated anywhere: header, metadata, infos or data
  std::string huge = g;
  const uint64_t n = uint64_t(1) << 40;
  std::memcpy(&huge[16], &n, 8);  // metadata count
  expect_error(huge, "cannot fit");
  std::memcpy(&huge[8], &n, 8);  // tensor count
  expect_error(huge, "cannot fit");
  // A string length pointing past the end.
  std::string s = g;
  const uint64_t len = uint64_t(1) << 50;
  std::memcpy(&s[24], &len, 8);  // the first key's length
  expect_error(s, "needs");
  // Unknown dequantizer.
  EXPECT_THROW(quant::ggml_dequantize(uint32_t(quant::GgmlType::q2_k), g.data(), nullptr, 256), Error);
  EXPECT_THROW(quant::ggml_dequantize(99, g.data(), nullptr, 256), Error);
}

TEST(Gguf, TensorTypeAndOffsetLiesAreCaught) {
  const std::string g = golden_bytes();
  auto f = GgufFile::parse(reinterpret_cast<const uint8_t*>(g.data()), g.size(), "g");
  // Find the first tensor info's type field: the bytes after its name and dims; patch type and offset in a copy.
  const GgufTensor& t0 = f->tensors().front();
  const std::string key = std::string(8, '\0');
  size_t at = g.find(t0.name + std::string(1, '\x02'));  // name followed by n_dims = 2 (little-endian u32)
  ASSERT_NE(at, std::string::npos);
  const size_t type_at = at + t0.name.size() + 4 + 16;
  std::string bad = g;
  const uint32_t unknown = 77;
  std::memcpy(&bad[type_at], &unknown, 4);
  expect_error(bad, "unknown ggml type 77");
  bad = g;
  const uint64_t off = 3;  // not aligned
  std::memcpy(&bad[type_at + 4], &off, 8);
  expect_error(bad, "alignment");
  bad = g;
  const uint64_t far = uint64_t(1) << 45;
  std::memcpy(&bad[type_at + 4], &far, 8);
  expect_error(bad, "past the end");
}

}  // namespace
}  // namespace genesis::runtime
