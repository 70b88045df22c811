// The step profile; see profile.h.
#include "runtime/model/profile.h"

#include <algorithm>

#include "common/timing.h"
#include "cpu/thread_pool.h"

namespace genesis::runtime {

const char* op_name(Op op) {
  switch (op) {
    case Op::attention: return "attention";
    case Op::delta_rule: return "delta_rule";
    case Op::dense: return "dense";
    case Op::router: return "router";
    case Op::experts_gate_up: return "experts_gate_up";
    case Op::experts_down: return "experts_down";
    case Op::elementwise: return "elementwise";
    case Op::logits: return "logits";
    case Op::barrier: return "barrier";
    case Op::gpu: return "gpu";
    case Op::kCount: break;
  }
  return "?";
}

double Profile::total() const {
  double s = 0;
  for (double v : seconds) s += v;
  return s;
}

Profile Profile::operator-(const Profile& o) const {
  Profile d;
  for (int i = 0; i < kOpCount; ++i) {
    d.seconds[size_t(i)] = seconds[size_t(i)] - o.seconds[size_t(i)];
    d.wall[size_t(i)] = wall[size_t(i)] - o.wall[size_t(i)];
    d.busy[size_t(i)] = busy[size_t(i)] - o.busy[size_t(i)];
  }
  d.threads = threads;
  d.tokens = tokens - o.tokens;
  d.steps = steps - o.steps;
  d.regions = regions - o.regions;
  d.experts = experts - o.experts;
  d.expert_pairs = expert_pairs - o.expert_pairs;
  d.gpu_expert_pairs = gpu_expert_pairs - o.gpu_expert_pairs;
  d.gpu_parts = gpu_parts;
  for (const auto& [k, v] : o.gpu_parts) d.gpu_parts[k] -= v;
  return d;
}

nlohmann::json Profile::to_json(bool per_token) const {
  nlohmann::json j = nlohmann::json::object();
  const double div = double(per_token ? tokens : steps);
  const double scale = div > 0 ? 1e3 / div : 0.0;
  for (int i = 0; i < kOpCount; ++i) j[op_name(Op(i))] = seconds[size_t(i)] * scale;
  j["total"] = total() * scale;
  j["regions_per_step"] = steps > 0 ? double(regions) / double(steps) : 0.0;
  if (threads > 1) {
    nlohmann::json u = nlohmann::json::object();
    for (int i = 0; i < kOpCount; ++i)
      if (wall[size_t(i)] > 0 && Op(i) != Op::barrier)
        u[op_name(Op(i))] = std::max(0.0, busy[size_t(i)] / (wall[size_t(i)] * double(threads)));
    j["utilization"] = u;
  }
  if (!gpu_parts.empty()) {
    nlohmann::json g = nlohmann::json::object();
    for (const auto& [k, v] : gpu_parts) g[k] = v * scale;
    j["gpu_parts"] = g;
  }
  return j;
}

void ProfileClock::start() {
  last_ns_ = steady_ns();
  last_wait_ns_ = pool_ ? pool_->wait_ns() : 0;
  last_runs_ = pool_ ? pool_->runs() : 0;
  // GENESIS_PROFILE_UTILIZATION=1 (the pool counts its busy time): utilization per op class; the read sums every
  // worker's slot, lines the workers are writing, at each of a step's hundreds of laps, hence off by default.
  utilization_ = pool_ && pool_->times_busy();
  last_busy_ns_ = utilization_ ? pool_->busy_ns() : 0;
  p_.threads = utilization_ ? pool_->size() : 1;  // 1: no utilization reported
}

void ProfileClock::lap(Op op) {
  const int64_t t = steady_ns();
  int64_t wait = 0;
  if (pool_) {
    const int64_t w = pool_->wait_ns(), r = pool_->runs();
    wait = w - last_wait_ns_;
    p_.regions += r - last_runs_;
    if (utilization_) {
      const int64_t b = pool_->busy_ns();
      p_.busy[size_t(op)] += double(b - last_busy_ns_) * 1e-9;
      last_busy_ns_ = b;
    }
    last_wait_ns_ = w;
    last_runs_ = r;
  }
  p_.wall[size_t(op)] += double(t - last_ns_) * 1e-9;
  p_.seconds[size_t(op)] += double(t - last_ns_ - wait) * 1e-9;
  p_.seconds[size_t(Op::barrier)] += double(wait) * 1e-9;
  last_ns_ = t;
}

void ProfileClock::lap_region(std::span<const std::pair<Op, int64_t>> ends) {
  const int64_t t = steady_ns();
  int64_t busy = 0;
  if (pool_) {
    const int64_t r = pool_->runs();
    p_.regions += r - last_runs_;
    last_runs_ = r;
    last_wait_ns_ = pool_->wait_ns();  // inside the stages' times and the closing wait below
    if (utilization_) {
      const int64_t b = pool_->busy_ns();
      busy = b - last_busy_ns_;
      last_busy_ns_ = b;
    }
  }
  const double span = double(std::max<int64_t>(1, t - last_ns_));
  int64_t prev = last_ns_;
  for (const auto& [op, end] : ends) {
    const int64_t e = std::clamp(end, prev, t);
    p_.wall[size_t(op)] += double(e - prev) * 1e-9;
    p_.seconds[size_t(op)] += double(e - prev) * 1e-9;
    p_.busy[size_t(op)] += double(busy) * double(e - prev) / span * 1e-9;
    prev = e;
  }
  if (!ends.empty()) p_.wall[size_t(ends.back().first)] += double(t - prev) * 1e-9;
  p_.seconds[size_t(Op::barrier)] += double(t - prev) * 1e-9;
  last_ns_ = t;
}

}  // namespace genesis::runtime
