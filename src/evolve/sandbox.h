// Sandboxed evaluation: the work on one candidate (build, correctness gate, timing) runs in a forked worker process,
// so that generated code that crashes, hangs or executes an illegal instruction kills the worker, never the search.
// The parent runs no generated code; it only reads the worker's report through a pipe.
#pragma once

#include <functional>
#include <string>
#include <string_view>

namespace genesis::evolve {

// What became of one candidate. "invalid": refused before any code ran (make_conf, legality).
enum class Verdict : uint8_t { ok, wrong_result, crash, timeout, invalid };
inline constexpr int kVerdictCount = 5;
const char* verdict_name(Verdict v);

// Thrown inside the worker to report a wrong result (with a diagnostic naming shape, index and values).
struct WrongResult {
  std::string what;
};

struct SandboxResult {
  Verdict verdict = Verdict::ok;
  std::string payload;      // what work() returned (ok only)
  std::string diagnostics;  // why, for every other verdict
  double wall_s = 0;        // fork to reap, as the parent saw it
};

// Runs work() in a forked child with a wall-clock limit. In the child: a genesis::Error -> invalid,
// WrongResult -> wrong_result, another exception -> crash; SIGSEGV/SIGBUS/SIGILL/SIGFPE/abort -> crash (the signal
// is named); no answer within timeout_s -> the child is killed, timeout. The child never returns into the caller.
SandboxResult run_sandboxed(const std::function<std::string()>& work, double timeout_s);

}  // namespace genesis::evolve
