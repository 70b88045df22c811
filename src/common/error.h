// The one error type Genesis throws for bad input (files, shapes, flags, unsupported requests).
// Messages name what was asked and what is possible. Programmer errors use assert(), not this.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace genesis {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace genesis
