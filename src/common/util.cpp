// Implementation of the shared helpers in util.h.
#include "common/util.h"

#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>

namespace genesis {

std::string hex64(uint64_t v, int digits) {
  std::string s = fmt::format("{:016x}", v);
  return s.substr(16 - digits);
}

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

std::string cache_dir() {
  std::filesystem::path dir;
  if (auto d = env("GENESIS_CACHE_DIR")) {
    dir = *d;
  } else if (auto x = env("XDG_CACHE_HOME")) {
    dir = std::filesystem::path(*x) / "genesis";
  } else if (auto h = env("HOME")) {
    dir = std::filesystem::path(*h) / ".cache" / "genesis";
  } else {
    dir = std::filesystem::temp_directory_path() / "genesis-cache";
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  return dir.string();
}

std::string build_id() { return std::string(GENESIS_VERSION) + "+" + GENESIS_GIT_REV; }
std::string kernel_build_id() { return std::string("k") + GENESIS_KERNEL_ID; }

}  // namespace genesis
