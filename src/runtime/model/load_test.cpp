// load_model on a model directory with a tokenizer, chat template and generation config, end to end: text ->
// tokenizer -> model -> greedy ids must equal transformers' greedy continuation of the golden model, through the
// library and through the `genesis run` command.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "runtime/model/generate.h"
#include "runtime/model/load.h"
#include "runtime/tokenizer/chat.h"

namespace genesis::runtime {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kGolden = GENESIS_GOLDEN_DIR;

// Token i is the one character U+0100 + i: no merges, so a string of such characters encodes to exactly those ids.
std::string tok(int i) {
  const uint32_t cp = 0x100 + uint32_t(i);
  std::string s;
  s += char(0xC0 | (cp >> 6));
  s += char(0x80 | (cp & 0x3F));
  return s;
}

class LoadModelDir : public ::testing::Test {
 protected:
  void SetUp() override {
    // One directory per test: ctest runs the tests of this fixture in parallel processes.
    dir_ = fs::path(::testing::TempDir()) /
           ("genesis_load_model_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const char* f : {"config.json", "model.safetensors"})
      fs::copy_file(fs::path(kGolden) / "qwen3_moe" / f, dir_ / f);
    json vocab = json::object();
    for (int i = 0; i < 127; ++i) vocab[tok(i)] = i;
    json t = {{"version", "1.0"},
              {"added_tokens", json::array({{{"id", 127}, {"content", "<|im_end|>"}, {"special", true},
                                             {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                                             {"single_word", false}}})},
              {"normalizer", nullptr},
              {"pre_tokenizer", nullptr},
              {"post_processor", nullptr},
              {"decoder", nullptr},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
    std::ofstream(dir_ / "tokenizer.json") << t.dump();
    std::ofstream(dir_ / "tokenizer_config.json")
        << json{{"eos_token", "<|im_end|>"},
                {"chat_template",
                 "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' "
                 "}}{% endif %}"}}
               .dump();
    std::ofstream(dir_ / "generation_config.json")
        << json{{"eos_token_id", {126}}, {"do_sample", true}, {"temperature", 0.7}, {"top_k", 20}}.dump();
    ref_ = json::parse(std::ifstream(fs::path(kGolden) / "qwen3_moe" / "reference.json"));
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
  json ref_;
};

TEST_F(LoadModelDir, TokenizerTemplateAndGenerationDefaults) {
  LoadOptions opt;
  opt.experts = ExpertMode::nf4_reference;
  LoadedModel lm = load_model(dir_.string(), opt);
  ASSERT_TRUE(lm.tokenizer.has_value());
  EXPECT_EQ(lm.eos_token, "<|im_end|>");
  EXPECT_EQ(detect_chat_template(lm.chat_template).name, "chatml");
  EXPECT_EQ(lm.stop_tokens, (std::vector<int32_t>{126, 127}));  // generation_config + tokenizer_config's eos
  EXPECT_TRUE(lm.sampling_from_config);
  EXPECT_FLOAT_EQ(lm.sampling.temperature, 0.7f);
  EXPECT_EQ(lm.sampling.top_k, 20);

  // Text -> ids -> greedy continuation: transformers' ids for the same model and prompt.
  const auto golden = ref_.at("tokens").get<std::vector<int32_t>>();
  std::string prompt;
  for (int32_t id : golden) prompt += tok(id);
  const auto ids = lm.tokenizer->encode(prompt, true, false);
  ASSERT_EQ(ids, golden);
  Session s(*lm.model, 64, nullptr);
  GenerateOptions go;
  go.max_new_tokens = ref_.at("new_tokens").get<int64_t>();
  std::vector<int32_t> out;
  generate(s, ids, go, nullptr, &out);
  EXPECT_EQ(out, ref_.at("greedy_nf4").get<std::vector<int32_t>>());
}

TEST_F(LoadModelDir, RunCommandStreamsTheGreedyContinuation) {
  const auto golden = ref_.at("tokens").get<std::vector<int32_t>>();
  std::string prompt, want;
  for (int32_t id : golden) prompt += tok(id);
  // With no decoder, `tokenizers` joins tokens with spaces; the stream starts right after the echoed prompt.
  for (int32_t id : ref_.at("greedy_nf4").get<std::vector<int32_t>>()) want += (want.empty() ? "" : " ") + tok(id);
  const fs::path out = dir_ / "out.txt", err = dir_ / "err.txt";
  const char* cli = std::getenv("GENESIS_CLI") ? std::getenv("GENESIS_CLI") : GENESIS_CLI;  // env: tests run elsewhere
  const std::string cmd = std::string(cli) + " run -q --experts nf4-reference --temp 0 -n " +
                          std::to_string(ref_.at("new_tokens").get<int>()) + " -m '" + dir_.string() + "' -p '" +
                          prompt + "' > '" + out.string() + "' 2> '" + err.string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::string text((std::istreambuf_iterator<char>(std::ifstream(out).rdbuf())), std::istreambuf_iterator<char>());
  std::string stats((std::istreambuf_iterator<char>(std::ifstream(err).rdbuf())), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, prompt + want + "\n");
  for (const char* s : {"prefill", "decode", "tokens/s", "peak memory", "experts:"})
    EXPECT_NE(stats.find(s), std::string::npos) << s << " missing from:\n" << stats;
}

TEST_F(LoadModelDir, BadInputIsAClearError) {
  LoadOptions opt;
  opt.experts = ExpertMode::nf4_reference;
  auto expect_error = [&](const std::string& needle) {
    try {
      load_model(dir_.string(), opt);
      ADD_FAILURE() << "no error, expected one naming " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  std::ofstream(dir_ / "generation_config.json") << "{\"eos_token_id\": ";
  expect_error("generation_config.json");
  fs::remove(dir_ / "generation_config.json");
  // A truncated weights file.
  fs::resize_file(dir_ / "model.safetensors", fs::file_size(dir_ / "model.safetensors") / 2);
  expect_error("model.safetensors");
  fs::remove(dir_ / "model.safetensors");
  expect_error(dir_.string());
  fs::remove(dir_ / "config.json");
  expect_error("config.json");
}

// A config.json claiming more than the checkpoint holds fails before the weights are read, naming the field:
// absurd sizes in parse_config, a layer count the tensors do not reach at the start of the load.
TEST_F(LoadModelDir, ConfigClaimingMoreThanTheCheckpointHoldsFailsAtOnce) {
  const json good = json::parse(std::ifstream(dir_ / "config.json"));
  LoadOptions opt;
  opt.experts = ExpertMode::f32;
  auto expect_error = [&](const char* key, int64_t value, const std::string& needle) {
    json c = good;
    c[key] = value;
    std::ofstream(dir_ / "config.json") << c.dump();
    const auto t0 = std::chrono::steady_clock::now();
    try {
      load_model(dir_.string(), opt);
      ADD_FAILURE() << key << " = " << value << ": no error, expected one naming " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0) << key;
  };
  const int64_t layers = good.at("num_hidden_layers").get<int64_t>();
  expect_error("num_hidden_layers", int64_t(1) << 30, "\"num_hidden_layers\" = 1073741824 is beyond");
  expect_error(
      "num_hidden_layers", layers + 1,
      fmt::format("num_hidden_layers = {}, but the checkpoint holds tensors for {} layers", layers + 1, layers));
  expect_error("num_experts", int64_t(1) << 30, "1073741824 experts");
  expect_error("num_experts", good.at("num_local_experts").get<int64_t>() + 1, "mlp.gate.weight");
  expect_error("intermediate_size", int64_t(1) << 40, "\"intermediate_size\" = 1099511627776 is beyond");
}

}  // namespace
}  // namespace genesis::runtime
