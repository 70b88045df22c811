// Every input kept under fuzz/ (the fuzzers' seeds and any input that once broke a parser, fuzz/regressions/) goes
// through the safetensors, GGUF and config.json parsers in the normal test run: each parses or is a clean
// genesis::Error, within the limits the fuzzers run under (fuzz/CMakeLists.txt: -timeout=10 -rss_limit_mb=2048), so
// that an input once slow or huge stays a failure here. Each input runs in a forked child: the parent measures its time
// and kills it past the limit; the child's address space is capped with RLIMIT_AS (not under AddressSanitizer, which
// reserves terabytes of it), so an allocation beyond the limit is a std::bad_alloc the child reports.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <new>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "runtime/io/gguf.h"
#include "runtime/io/safetensors.h"
#include "runtime/model/config.h"
#include "runtime/model/forward.h"
#include "runtime/model/gguf_model.h"
#include "runtime/tokenizer/gguf_vocab.h"

#if defined(__SANITIZE_ADDRESS__)
#define GENESIS_REPLAY_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GENESIS_REPLAY_ASAN 1
#endif
#endif

namespace genesis::runtime {
namespace {

namespace fs = std::filesystem;

constexpr double kSecondsPerInput = 10;          // libFuzzer -timeout=10
constexpr uint64_t kBytesPerInput = 2ull << 30;  // libFuzzer -rss_limit_mb=2048, as address space above the parent's

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

// Exit codes of a replay child: what `fn` returned (0..kFirstReserved-1; a genesis::Error is 0), or one of these.
constexpr int kFirstReserved = 100, kOutOfMemory = 100, kOtherException = 101;

uint64_t address_space_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmSize:", 0) == 0) return uint64_t(std::stoull(line.substr(7))) * 1024;  // "VmSize:  123 kB"
  return 0;
}

// Runs fn on input `p` in a child under the limits. Returns fn's result; a failure of the test (naming the input)
// when the child ran out of time or memory, crashed, or threw something other than genesis::Error.
int replay(const fs::path& p, const std::function<int()>& fn) {
  std::fflush(nullptr);  // nothing buffered is written twice
  const uint64_t limit = address_space_bytes() + kBytesPerInput;
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ADD_FAILURE() << "fork: " << std::strerror(errno);
    return -1;
  }
  if (pid == 0) {
#ifndef GENESIS_REPLAY_ASAN
    const rlimit r{limit, limit};
    ::setrlimit(RLIMIT_AS, &r);
#endif
    int code = 0;
    try {
      code = fn();
    } catch (const Error&) {
      code = 0;
    } catch (const std::bad_alloc&) {
      code = kOutOfMemory;
    } catch (...) {
      code = kOtherException;
    }
    ::_exit(code);
  }
  int status = 0;
  double seconds = 0;
  for (;;) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (done == pid) break;
    if (seconds > kSecondsPerInput) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ADD_FAILURE() << p << ": still running after " << kSecondsPerInput << " s (a slow input is a finding)";
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  if (WIFSIGNALED(status)) {
    ADD_FAILURE() << p << ": killed by signal " << WTERMSIG(status) << " (" << strsignal(WTERMSIG(status)) << ")";
    return -1;
  }
  const int code = WEXITSTATUS(status);
  if (code == kOutOfMemory)
    ADD_FAILURE() << p << ": an allocation beyond " << (kBytesPerInput >> 20) << " MiB (a huge input is a finding)";
  if (code == kOtherException) ADD_FAILURE() << p << ": an exception other than genesis::Error";
  return code >= kFirstReserved ? -1 : code;
}

TEST(FuzzReplay, SafetensorsInputs) {
  const auto files = inputs("safetensors");
  EXPECT_GE(files.size(), 2u);
  for (const auto& p : files) {
    const std::string b = read_all(p);
    const int outside = replay(p, [&] {
      for (const auto& v : parse_safetensors_buffer(reinterpret_cast<const uint8_t*>(b.data()), b.size(), p.string()))
        if (static_cast<const char*>(v.data) + v.nbytes > b.data() + b.size()) return 1;
      return 0;
    });
    EXPECT_NE(outside, 1) << p << ": a tensor view reaches past the buffer";
  }
}

TEST(FuzzReplay, GgufInputs) {
  const auto files = inputs("gguf");
  EXPECT_GE(files.size(), 1u);
  for (const auto& p : files) {
    const std::string b = read_all(p);
    replay(p, [&] {
      auto f = GgufFile::parse(reinterpret_cast<const uint8_t*>(b.data()), b.size(), p.string());
      for (const auto& t : f->tensors()) (void)f->to_f32(t);
      return 0;
    });
  }
}

// The same inputs as whole models (fuzz/gguf_model_fuzz.cpp): config, tensors, weights, one token, tokenizer.
TEST(FuzzReplay, GgufModelInputs) {
  const auto files = inputs("gguf");
  int loaded = 0;
  for (const auto& p : files) {
    const std::string b = read_all(p);
    auto run = [&] {
      std::shared_ptr<const GgufFile> f =
          GgufFile::parse(reinterpret_cast<const uint8_t*>(b.data()), b.size(), p.string());
      try {
        auto tok = Tokenizer::from_vocab(tokenizer_spec_from_gguf(f->metadata(), p.string()));
        (void)tok.decode(tok.encode("Hello 123 <|im_end|> world", true, true));
      } catch (const Error&) {
      }
      ModelConfig c = parse_config(gguf_config_json(*f), p.string());
      // The defaults (the blocks as stored on kq_gemv) first, errors allowed; then --keep-quant (read_ggml +
      // ggml_gemv on hostile blocks), whose load decides the result.
      try {
        LoadOptions stored;
        stored.use_kb = false;
        set_dense_mode("stored", stored);
        set_expert_mode("stored", stored);
        auto src = gguf_tensor_source(f, c, true);
        auto m = Model::from_source(c, *src, stored, p.string());
        Session s(*m, 4, nullptr);
        const int32_t t = 0;
        std::vector<float> logits(size_t(c.vocab_size));
        s.forward(std::span<const int32_t>(&t, 1), logits.data());
      } catch (const Error&) {
      }
      LoadOptions opt;
      opt.experts = ExpertMode::f32;
      opt.use_kb = false;
      opt.keep_quant = true;
      auto src = gguf_tensor_source(f, c, true);
      auto m = Model::from_source(c, *src, opt, p.string());
      Session s(*m, 4, nullptr);
      const int32_t t = 0;
      std::vector<float> logits(size_t(c.vocab_size));
      s.forward(std::span<const int32_t>(&t, 1), logits.data());
      return 1;  // loaded and ran
    };
    loaded += replay(p, run) == 1;
  }
  EXPECT_GE(loaded, 1) << "the seed model (fuzz/seeds/gguf/tiny_model.gguf) should load";
}

TEST(FuzzReplay, ConfigInputs) {
  const auto files = inputs("config");
  EXPECT_GE(files.size(), 4u);
  for (const auto& p : files) {
    const std::string b = read_all(p);
    replay(p, [&] {
      const auto j = nlohmann::json::parse(b, nullptr, false);
      if (!j.is_discarded()) (void)parse_config(j, p.string()).summary();
      return 0;
    });
  }
}

}  // namespace
}  // namespace genesis::runtime
