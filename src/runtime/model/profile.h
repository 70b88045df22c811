// Where a forward step's time goes, by op class. One clock is read at each boundary between ops (a lap), so the
// classes add up to the step's time exactly; the time the caller waited for the pool's other threads inside a lap is
// moved to `barrier`. Costs two clock reads per lap (tens of nanoseconds), so it is always on.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

namespace genesis::cpu {
class ThreadPool;
}

namespace genesis::runtime {

enum class Op : int {
  attention,        // scores, softmax, weighted sum over the KV cache
  delta_rule,       // Gated DeltaNet: conv1d, q/k norms, the delta rule over the recurrent state, gated norm
  dense,            // products with the non-expert matrices (q, k, v, o, dense MLP)
  router,           // router product and top-k
  experts_gate_up,  // routed experts' gate+up products (with SwiGLU and the down input's conversion fused in)
  experts_down,     // routed experts' down products
  elementwise,      // norms, rope, residual adds, KV append, embedding lookup, combining the experts' outputs
  logits,           // final norm and the output layer
  barrier,          // the caller waiting for the other threads at the end of parallel regions
  gpu,              // hybrid mode: the CPU waiting for the GPU's part of the step (its kernels and the copies)
  kCount
};
inline constexpr int kOpCount = int(Op::kCount);
const char* op_name(Op op);

struct Profile {
  std::array<double, kOpCount> seconds{};
  // Per op class: the laps' wall time with the barrier waits inside them (seconds + their share of `barrier`), and the
  // pool threads' time inside regions during them (ThreadPool::busy_ns, all threads summed); utilization =
  // busy / (wall x threads): near 1 when the threads spent the op's regions working, low when they waited (wake-ups,
  // claims, imbalance, or the caller's serial work between regions).
  std::array<double, kOpCount> wall{}, busy{};
  int threads = 1;
  int64_t tokens = 0;   // rows run through the model
  int64_t steps = 0;    // forward() calls
  int64_t regions = 0;  // parallel regions started
  int64_t experts = 0;  // distinct routed experts whose weights steps read, summed over MoE layers
  int64_t expert_pairs = 0;      // (row, routed expert) pairs run
  int64_t gpu_expert_pairs = 0;  // of those, the ones the GPU ran (experts resident there: --gpu-experts)
  // Hybrid mode with GENESIS_CUDA_TIMES=1: the GPU's time by part of the step (seconds; CUDA events around each part,
  // no CUDA graphs). The device side's own profile, beside `seconds`' host view ("gpu": the host waiting).
  std::map<std::string, double> gpu_parts;

  double total() const;
  Profile operator-(const Profile& o) const;
  // {op: milliseconds per token} (per_token) or per step, plus "total", "regions_per_step" and, with
  // GENESIS_PROFILE_UTILIZATION=1 and a pool of more than one thread, "utilization" {op: busy / (wall x threads)}.
  nlohmann::json to_json(bool per_token) const;
};

// The lap clock of one Session: start() at the beginning of a step, lap(op) at the end of each op.
class ProfileClock {
 public:
  ProfileClock(Profile& p, const cpu::ThreadPool* pool) : p_(p), pool_(pool) {}
  void start();
  void lap(Op op);
  // The laps of one region of stages (stages.h): stage i ran from the end of stage i - 1 (the last lap for the first)
  // to ends[i] (stamped by a pool thread on the same clock) and is its op's; the rest, up to now, is the region's
  // closing wait (barrier; in the last op's wall time). The pool's wait inside the region is not subtracted from the
  // stages (the caller's wait may begin while other threads still run an earlier stage); its busy time is split over
  // the stages in proportion to their times.
  void lap_region(std::span<const std::pair<Op, int64_t>> ends);

 private:
  Profile& p_;
  const cpu::ThreadPool* pool_;
  int64_t last_ns_ = 0, last_wait_ns_ = 0, last_runs_ = 0, last_busy_ns_ = 0;
  bool utilization_ = false;
};

}  // namespace genesis::runtime
