// Model benchmark; see bench.h.
#include "runtime/model/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <random>

#include "common/error.h"
#include "common/timing.h"
#include "common/util.h"
#include "cpu/bandwidth.h"
#include "cpu/info.h"
#include "cpu/thread_pool.h"
#include "runtime/model/forward.h"
#include "runtime/model/load.h"

namespace genesis::runtime {

namespace {

// Steps paired with the bandwidth: `steps` calls of step(), each between two read passes of `probe` (the same pool's
// threads), and per step the fraction of its bound, bytes / its time against the mean of the passes on either side.
// A shared host's bandwidth drifts by tens of percent within a run (27-62% between the passes before the prefill and
// after the decode on the GPU host, stop 28); set against the moments around it, each step's fraction does not
// drift with it. The passes evict the caches, so each step reads its weights from memory, as the bound assumes.
template <class Step>
nlohmann::json paired_steps(cpu::ReadProbe& probe, int steps, double bytes_per_step, Step&& step) {
  std::vector<double> pass_gbps{probe.pass()}, step_ms, fractions;
  for (int i = 0; i < steps; ++i) {
    const double a = now_seconds();
    step();
    step_ms.push_back(1e3 * (now_seconds() - a));
    pass_gbps.push_back(probe.pass());
    const double around = 0.5 * (pass_gbps[size_t(i)] + pass_gbps[size_t(i) + 1]);
    fractions.push_back(bytes_per_step / (step_ms.back() * 1e6) / around);
  }
  return {{"steps", steps},
          {"step_ms_median", median(step_ms)},
          {"read_gbps_median", median(pass_gbps)},
          {"read_gbps_worst", *std::min_element(pass_gbps.begin(), pass_gbps.end())},
          {"read_gbps_best", *std::max_element(pass_gbps.begin(), pass_gbps.end())},
          {"probe_bytes", probe.bytes()},
          {"bound_fraction", median(fractions)},
          {"bound_fraction_q25", quantile(fractions, 0.25)},
          {"bound_fraction_q75", quantile(fractions, 0.75)}};
}

// Decode steps of `streams` sequences at once (one row each, as the server's continuous batching runs them): the
// step's time, the aggregate tokens/s against one stream, and the step's bound: the weights every row shares read
// once plus each distinct routed expert once (counted in the steps run), over the read bandwidth.
void batched_decode(const ModelBenchOptions& opt, const Model& model, int64_t context, cpu::ThreadPool& pool,
                    cpu::ReadProbe* probe, double bw, double single_tps, nlohmann::json& j) {
  const auto& c = model.config();
  const int64_t n = opt.streams;
  if (n > 256) fail("bench model: --streams {} exceeds the 256 rows of a step", n);
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> tok(0, int32_t(c.vocab_size - 1));
  Session s(model, context, &pool);
  std::vector<int32_t> seqs = {0};
  for (int64_t i = 1; i < n; ++i) seqs.push_back(s.add_sequence());
  std::vector<float> logits(size_t(n * c.vocab_size));
  for (int32_t q : seqs) {  // each sequence's own prompt
    std::vector<int32_t> prompt(size_t(opt.prompt_tokens));
    for (auto& t : prompt) t = tok(rng);
    const SequenceRows r{q, prompt, logits.data(), false};
    s.step({&r, 1});
  }
  std::vector<int32_t> next(static_cast<size_t>(n));
  std::vector<SequenceRows> rows(static_cast<size_t>(n));
  auto step = [&] {
    for (int64_t i = 0; i < n; ++i) {
      next[size_t(i)] = tok(rng);
      rows[size_t(i)] = {seqs[size_t(i)], std::span<const int32_t>(&next[size_t(i)], 1),
                         logits.data() + i * c.vocab_size, false};
    }
    s.step(rows);
  };
  step();  // warm-up
  const Profile before = s.profile();
  std::vector<double> step_ms;
  for (int i = 0; i + 1 < opt.decode_tokens; ++i) {
    const double a = now_seconds();
    step();
    step_ms.push_back(1e3 * (now_seconds() - a));
  }
  const Profile prof = s.profile() - before;
  const double med = median(step_ms);
  const double tps = double(n) * 1e3 / med;
  // Bytes of a step: one token's bytes less its top_k experts per MoE layer, plus the distinct experts read.
  double expert_bytes = 0;
  int64_t moe_layers = 0;
  for (const Layer& l : model.weights().layers)
    if (l.moe && !l.experts.empty()) {
      const Expert& e = l.experts[0];
      expert_bytes = double(e.gate_up.bytes() + e.down.bytes());
      ++moe_layers;
    }
  const double distinct = moe_layers > 0 && prof.steps > 0 ? double(prof.experts) / double(prof.steps * moe_layers) : 0;
  const double step_bytes =
      model.bytes_per_token() - double(moe_layers) * double(c.top_k) * expert_bytes + double(moe_layers) * distinct * expert_bytes;
  const double bound_tps = double(n) * bw * 1e9 / step_bytes;
  j["streams"] = n;
  j["batched_step_ms_median"] = med;
  j["batched_step_ms_iqr"] = quantile(step_ms, 0.75) - quantile(step_ms, 0.25);
  j["batched_decode_tps"] = tps;
  j["batched_vs_single"] = single_tps > 0 ? tps / single_tps : 0.0;
  j["batched_distinct_experts_per_layer"] = distinct;
  j["batched_step_bytes"] = step_bytes;
  j["batched_bound_tps"] = bound_tps;
  j["batched_bound_fraction"] = tps / bound_tps;
  j["profile"]["batched_decode"] = prof.to_json(false);
  // The same steps again, each between read passes (the context holds them: the caller sized it).
  if (probe != nullptr) {
    auto p = paired_steps(*probe, opt.decode_tokens - 1, step_bytes, step);
    // Against one stream's steps paired the same way: both read their weights from memory, where the plain ratio
    // above may set a step that streams against one whose weights stayed in a large last-level cache.
    if (j.contains("paired"))
      p["vs_single"] = double(n) * j["paired"]["step_ms_median"].get<double>() / p["step_ms_median"].get<double>();
    j["batched_paired"] = p;
  }
}

}  // namespace

nlohmann::json run_model_bench(const ModelBenchOptions& opt) {
  if (opt.prompt_tokens < 1 || opt.decode_tokens < 1) fail("bench model: --prompt-tokens and --tokens must be >= 1");
  LoadOptions lo = opt.load;
  lo.show_progress = opt.progress;
  double t0 = now_seconds();
  auto model = Model::load(opt.dir, lo);
  const double load_s = now_seconds() - t0;
  const uint64_t rss_load = peak_rss_bytes();
  const auto& c = model->config();
  if (opt.prompt_tokens + opt.decode_tokens + 1 > c.max_position_embeddings)
    fail("bench model: {} prompt + {} decode tokens exceed the model's {} positions", opt.prompt_tokens,
         opt.decode_tokens, c.max_position_embeddings);
  // Room for the steps paired with read passes too (after the plain ones), where the model's positions allow.
  const bool paired = !opt.cached_bandwidth && opt.prompt_tokens + 2 * opt.decode_tokens + 1 <= c.max_position_embeddings;
  const int64_t context = opt.prompt_tokens + (paired ? 2 : 1) * opt.decode_tokens + 1;

  cpu::ThreadPool pool(opt.threads);
  // The roofline, measured now (same threads) unless the cached figure is asked for: passes for about a second
  // before the prefill and again after the decode, and the median of all of them. A shared host's bandwidth moves
  // between passes (80-142 GB/s seen on one host within a call); the best pass of a short burst is its luckiest
  // moment, not what the decode can count on.
  double bw = 0;
  const size_t probe_bytes = opt.probe_bytes > 0 ? opt.probe_bytes : cpu::bandwidth_buffer_bytes();
  cpu::ReadSample bw_before, bw_after;
  std::unique_ptr<cpu::ReadProbe> probe;
  if (paired) probe = std::make_unique<cpu::ReadProbe>(probe_bytes, pool);
  auto measure = [&] { return cpu::measure_read_sample(probe_bytes, pool.size(), 1.0, 10); };
  if (opt.cached_bandwidth) {
    const auto b = cpu::read_bandwidth(false);
    bw = pool.size() == 1 ? b.one_thread_gbps : b.all_threads_gbps;
  } else {
    bw_before = measure();
  }

  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, int32_t(c.vocab_size - 1));
  std::vector<int32_t> prompt(size_t(opt.prompt_tokens));
  for (auto& t : prompt) t = tok(rng);
  std::vector<float> logits(size_t(c.vocab_size));
  Session s(*model, context, &pool);
  // Warm-up, as llama-bench's: the whole prompt and one decode token (page faults of the KV cache and scratch, JIT,
  // the GPU's lazily loaded kernels and recorded graphs, thread wake-up), then start over.
  s.forward(prompt, logits.data());
  s.forward(std::span<const int32_t>(prompt.data(), 1), logits.data());
  s.reset();
  const Profile before_prefill = s.profile();
  t0 = now_seconds();
  s.forward(prompt, logits.data());
  const double prefill_s = now_seconds() - t0;
  const Profile after_prefill = s.profile();
  const Profile prefill_prof = after_prefill - before_prefill;
  std::vector<double> step_ms;
  t0 = now_seconds();
  for (int i = 0; i < opt.decode_tokens; ++i) {
    const int32_t next[1] = {tok(rng)};
    const double a = now_seconds();
    s.forward(next, logits.data());
    step_ms.push_back(1e3 * (now_seconds() - a));
  }
  const double decode_s = now_seconds() - t0;
  const Profile decode_prof = s.profile() - after_prefill;
  // Hybrid mode: the bound is the CPU's, the routed experts' bytes per token (the GPU's part is far faster), for the
  // share of the pairs the CPU ran (the rest ran on experts resident on the GPU: --gpu-experts).
  const double gpu_pairs = decode_prof.expert_pairs > 0
                               ? double(decode_prof.gpu_expert_pairs) / double(decode_prof.expert_pairs)
                               : 0.0;
  const double bytes = model->gpu() ? model->expert_bytes_per_token() * (1.0 - gpu_pairs) : model->bytes_per_token();
  nlohmann::json paired_json;
  if (probe && bytes > 0)
    paired_json = paired_steps(*probe, opt.decode_tokens, bytes, [&] {
      const int32_t next[1] = {tok(rng)};
      s.forward(next, logits.data());
    });
  if (!opt.cached_bandwidth) {
    bw_after = measure();
    std::vector<double> all = bw_before.pass_gbps;
    all.insert(all.end(), bw_after.pass_gbps.begin(), bw_after.pass_gbps.end());
    bw = median(all);
  }
  const double med_ms = median(step_ms);
  const double decode_tps = 1e3 / med_ms;
  const double bound_tps = bytes > 0 ? bw * 1e9 / bytes : 0.0;  // 0: no CPU bound (every expert on the GPU)
  nlohmann::json j;
  j["model"] = opt.dir;
  j["config"] = c.summary();
  j["experts"] = model->expert_description();
  j["dense"] = model->dense_description();
  j["cpu_signature"] = cpu::cpu_info().signature;
  j["threads"] = pool.size();
  if (model->gpu()) {
    j["gpu"] = gpu_description(*model->gpu());
    j["vram_bytes"] = gpu_bytes_held();
    j["gpu_weight_bytes"] = gpu_weight_bytes(*model->gpu());
    j["bound_kind"] = "routed experts on the CPU";
    j["gpu_expert_pair_fraction"] = gpu_pairs;
  }
  j["load_s"] = load_s;
  j["peak_rss_bytes"] = rss_load;  // the process peak so far: loading is the largest part
  j["nf4_expert_bytes"] = model->weights().expert_bytes();
  j["dense_bytes"] = model->weights().dense_bytes();
  j["peak_rss_over_weights"] = double(rss_load) / double(model->weights().expert_bytes() + model->weights().dense_bytes());
  j["prompt_tokens"] = opt.prompt_tokens;
  j["prefill_s"] = prefill_s;
  j["prefill_tps"] = opt.prompt_tokens / prefill_s;
  j["decode_tokens"] = opt.decode_tokens;
  j["decode_s"] = decode_s;
  j["decode_ms_median"] = med_ms;
  j["decode_ms_iqr"] = quantile(step_ms, 0.75) - quantile(step_ms, 0.25);
  j["decode_tps"] = decode_tps;
  const double expert_s = decode_prof.seconds[size_t(Op::experts_gate_up)] + decode_prof.seconds[size_t(Op::experts_down)];
  j["decode_expert_fraction"] = decode_prof.total() > 0 ? expert_s / decode_prof.total() : 0.0;
  // Milliseconds per token by op class; each phase's parts add up to its measured time (the mean step, not the
  // median that decode_ms_median reports).
  j["profile"] = {{"decode", decode_prof.to_json(true)}, {"prefill", prefill_prof.to_json(true)}};
  j["prefill_chunk"] = s.chunk();
  j["kv_cache"] = model->gpu() ? "gpu" : kv_type_name(s.kv_type());  // the hybrid mode keeps its cache on the GPU
  j["bytes_per_token"] = bytes;
  j["read_bandwidth_gbps"] = bw;
  j["bandwidth_measured_now"] = !opt.cached_bandwidth;
  if (!opt.cached_bandwidth) {
    auto sample = [](const cpu::ReadSample& r) {
      return nlohmann::json{{"passes", r.passes}, {"best", r.best_gbps}, {"median", r.median_gbps}, {"worst", r.worst_gbps}};
    };
    // read_bandwidth_gbps is the median of both; the best pass too, for a bound in STREAM's convention.
    j["read_bandwidth_passes"] = {{"before_prefill", sample(bw_before)}, {"after_decode", sample(bw_after)}};
    const double best = std::max(bw_before.best_gbps, bw_after.best_gbps);
    j["read_bandwidth_best_gbps"] = best;
    j["bound_fraction_best"] = bytes > 0 ? decode_tps / (best * 1e9 / bytes) : 0.0;
  }
  j["bound_tps"] = bound_tps;
  j["bound_fraction"] = bound_tps > 0 ? decode_tps / bound_tps : 0.0;
  if (!paired_json.empty()) j["paired"] = paired_json;
  j["achieved_gbps"] = bytes * decode_tps / 1e9;
  if (opt.streams > 1) batched_decode(opt, *model, context, pool, probe.get(), bw, decode_tps, j);
  return j;
}

}  // namespace genesis::runtime
