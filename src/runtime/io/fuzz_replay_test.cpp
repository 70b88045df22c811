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
#include "runtime/model/forward.h"
#include "runtime/model/gguf_model.h"
#include "runtime/tokenizer/gguf_vocab.h"

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

// The same inputs as whole models (fuzz/gguf_model_fuzz.cpp): config, tensors, weights, one token, tokenizer.
TEST(FuzzReplay, GgufModelInputs) {
  const auto files = inputs("gguf");
  int loaded = 0;
  for (const auto& p : files) {
    const std::string b = read_all(p);
    std::shared_ptr<const GgufFile> f;
    try {
      f = GgufFile::parse(reinterpret_cast<const uint8_t*>(b.data()), b.size(), p.string());
    } catch (const Error&) {
      continue;
    }
    try {
      auto tok = Tokenizer::from_vocab(tokenizer_spec_from_gguf(f->metadata(), p.string()));
      (void)tok.decode(tok.encode("Hello 123 <|im_end|> world", true, true));
    } catch (const Error&) {
    }
    try {
      ModelConfig c = parse_config(gguf_config_json(*f), p.string());
      LoadOptions opt;
      opt.experts = ExpertMode::f32;
      opt.use_kb = false;
      opt.keep_quant = true;  // read_ggml + ggml_gemv on hostile blocks
      auto src = gguf_tensor_source(f, c, true);
      auto m = Model::from_source(c, *src, opt, p.string());
      Session s(*m, 4, nullptr);
      const int32_t t = 0;
      std::vector<float> logits(size_t(c.vocab_size));
      s.forward(std::span<const int32_t>(&t, 1), logits.data());
      ++loaded;
    } catch (const Error&) {
    }
  }
  EXPECT_GE(loaded, 1) << "the seed model (fuzz/seeds/gguf/tiny_model.gguf) should load";
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
