// Machine code from IR through Xbyak, in memory that is never writable and executable at once: pages are mapped
// RW, the code is written, then the pages become RX. GENESIS_JIT_DUMP=dir writes each kernel's bytes as
// dir/<kernel id>.bin (objdump -D -b binary -mi386:x86-64 dir/<id>.bin).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "jit/ir.h"

namespace genesis::jit {

// Finished machine code. Owns its pages (read + execute only).
class ExecutableCode {
 public:
  virtual ~ExecutableCode() = default;
  virtual const void* entry() const = 0;
  virtual size_t size() const = 0;
  template <typename Fn>
  Fn as() const {
    return reinterpret_cast<Fn>(const_cast<void*>(entry()));
  }
};

// Assembles `program` (a function taking one pointer argument in rdi, the System V ABI) and seals it RX.
// Throws genesis::Error if the program is malformed (unbalanced loops, bad registers).
std::unique_ptr<ExecutableCode> assemble(const Program& program);

// Writes the code's bytes to $GENESIS_JIT_DUMP/<name>.bin (and the IR text to <name>.ir) when that is set.
void maybe_dump(const Program& program, const ExecutableCode& code);

// Process-wide cache of finished kernels keyed by identity string. Thread-safe; code lives until exit.
class CodeCache {
 public:
  static CodeCache& instance();
  // Returns the cached code for key, or builds it with make() (which returns the Program to assemble).
  std::shared_ptr<const ExecutableCode> get_or_build(const std::string& key, const std::function<Program()>& make);
  size_t size() const;

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<const ExecutableCode>> map_;
};

}  // namespace genesis::jit
