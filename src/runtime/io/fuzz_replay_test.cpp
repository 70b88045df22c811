// Every input kept under fuzz/ (the fuzzers' seeds and any input that once broke a parser, fuzz/regressions/) goes
// through the safetensors, GGUF and config.json parsers in the normal test run: each parses or is a clean genesis::Error.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "runtime/io/gguf.h"
#include "runtime/io/safetensors.h"
#include "runtime/model/config.h"

namespace genesis::runtime {
namespace {

namespace fs = std::filesystem;

std::vector<fs::path> inputs(const std::string& kind) {
  std::vector<fs::path> out;
  for (const char* d : {"seeds", "regressions"}) {
    const fs::path dir = fs::path(GENESIS_FUZZ_DIR) / d / kind;
    if (!fs::exists(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) out.push_back(e.path());
  }
  return out;
}

std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(FuzzReplay, SafetensorsInputs) {
  const auto files = inputs("safetensors");
  EXPECT_GE(files.size(), 2u);
  for (const auto& p : files) {
    const std::string b = read_all(p);
    try {
      for (const auto& v : parse_safetensors_buffer(reinterpret_cast<const uint8_t*>(b.data()), b.size(), p.string()))
        EXPECT_LE(static_cast<const char*>(v.data) + v.nbytes, b.data() + b.size()) << p;
    } catch (const Error&) {
    }
  }
}

TEST(FuzzReplay, GgufInputs) {
  const auto files = inputs("gguf");
  EXPECT_GE(files.size(), 1u);
  for (const auto& p : files) {
    const std::string b = read_all(p);
    try {
      auto f = GgufFile::parse(reinterpret_cast<const uint8_t*>(b.data()), b.size(), p.string());
      for (const auto& t : f->tensors()) (void)f->to_f32(t);
    } catch (const Error&) {
    }
  }
}

TEST(FuzzReplay, ConfigInputs) {
  const auto files = inputs("config");
  EXPECT_GE(files.size(), 4u);
  for (const auto& p : files) {
    const auto j = nlohmann::json::parse(read_all(p), nullptr, false);
    if (j.is_discarded()) continue;
    try {
      (void)parse_config(j, p.string()).summary();
    } catch (const Error&) {
    }
  }
}

}  // namespace
}  // namespace genesis::runtime
