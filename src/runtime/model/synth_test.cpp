// genesis synth: a real-shaped random checkpoint (one OLMoE layer, ~0.65 GB) loads through Model::load with its
// experts read as bitsandbytes NF4, runs a finite forward pass, and refuses bad requests.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "common/error.h"
#include "runtime/io/bnb.h"
#include "runtime/io/safetensors.h"
#include "runtime/model/bench.h"
#include "runtime/model/forward.h"
#include "runtime/model/quantize.h"
#include "runtime/model/synth.h"

namespace genesis::runtime {
namespace {

namespace fs = std::filesystem;

TEST(Synth, OlmoeLayerLoadsAndRuns) {
  const fs::path dir = fs::path(::testing::TempDir()) / "genesis_synth_olmoe";
  fs::remove_all(dir);
  SynthOptions o;
  o.preset = "olmoe";
  o.layers = 1;
  o.out = dir.string();
  o.progress = false;
  o.shard_bytes = uint64_t(256) << 20;  // several shards and an index
  const SynthResult r = synth_model(o);
  EXPECT_GT(r.shards, 1);
  EXPECT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  {
    auto src = open_safetensors(dir.string());
    auto q = load_bnb_nf4(*src, "model.layers.0.mlp.experts.63.down_proj.weight");
    ASSERT_TRUE(q.has_value());
    EXPECT_EQ(q->rows, 2048);
    EXPECT_EQ(q->cols, 1024);
  }
  LoadOptions lo;
  lo.use_kb = false;
  auto m = Model::load(dir.string(), lo);
  EXPECT_EQ(m->config().num_layers, 1);
  Session s(*m, 8, nullptr);
  std::vector<float> logits(size_t(m->config().vocab_size));
  const int32_t ids[3] = {1, 500, 50000};
  s.forward(ids, logits.data());
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));

  ModelBenchOptions b;
  b.dir = dir.string();
  b.prompt_tokens = 4;
  b.decode_tokens = 4;
  b.cached_bandwidth = true;
  b.progress = false;
  b.load.use_kb = false;
  const auto j = run_model_bench(b);
  for (const char* k : {"prefill_tps", "decode_tps", "bound_tps", "bound_fraction", "bytes_per_token", "load_s",
                        "peak_rss_bytes", "read_bandwidth_gbps"})
    EXPECT_GT(j.at(k).get<double>(), 0) << k;
  EXPECT_EQ(j.at("kv_cache").get<std::string>(), "f16");  // the default KV cache, reported
  EXPECT_FALSE(j.contains("paired"));  // the cached figure: no read passes to pair with

  // Measured now: the decode steps again between read passes (a small buffer here), and with two streams the
  // batched steps too, set against one stream's paired steps.
  b.cached_bandwidth = false;
  b.probe_bytes = size_t(8) << 20;
  b.streams = 2;
  const auto m2 = run_model_bench(b);
  ASSERT_TRUE(m2.contains("paired"));
  const auto& p = m2.at("paired");
  EXPECT_EQ(p.at("steps").get<int>(), 4);
  for (const char* k : {"step_ms_median", "read_gbps_median", "bound_fraction", "bound_fraction_q25"}) {
    EXPECT_GT(p.at(k).get<double>(), 0) << k;
    EXPECT_TRUE(std::isfinite(p.at(k).get<double>())) << k;
  }
  EXPECT_LE(p.at("bound_fraction_q25").get<double>(), p.at("bound_fraction_q75").get<double>());
  EXPECT_LE(p.at("read_gbps_worst").get<double>(), p.at("read_gbps_best").get<double>());
  ASSERT_TRUE(m2.contains("batched_paired"));
  EXPECT_EQ(m2.at("batched_paired").at("steps").get<int>(), 3);
  EXPECT_GT(m2.at("batched_paired").at("vs_single").get<double>(), 0);
  EXPECT_GT(m2.at("batched_paired").at("bound_fraction").get<double>(), 0);
  fs::remove_all(dir);
}

TEST(Synth, BadRequestsAreClearErrors) {
  SynthOptions o;
  o.out = (fs::path(::testing::TempDir()) / "genesis_synth_bad").string();
  o.progress = false;
  o.preset = "gpt5";
  EXPECT_THROW(synth_model(o), Error);
  o.preset = "olmoe";
  o.layers = 17;
  EXPECT_THROW(synth_model(o), Error);
  o.layers = 1;
  o.out = fs::path(GENESIS_GOLDEN_DIR).string();  // exists and is not empty
  EXPECT_THROW(synth_model(o), Error);
}

}  // namespace
}  // namespace genesis::runtime

namespace genesis::runtime {
namespace {

// quantize: the golden models' experts become bitsandbytes NF4; loading the result gives exactly the logits of
// quantizing at load (the reference transformers NF4 logits of tests/golden), and the rest is copied unchanged.
TEST(Quantize, GoldenModelsRoundTrip) {
  for (const std::string arch : {"qwen3_moe", "mixtral"}) {
    const fs::path out = fs::path(::testing::TempDir()) / ("genesis_quantize_" + arch);
    fs::remove_all(out);
    QuantizeOptions q;
    q.in = std::string(GENESIS_GOLDEN_DIR) + "/" + arch;
    q.out = out.string();
    q.progress = false;
    const auto r = quantize_model(q);
    EXPECT_GT(r.quantized, 0);
    EXPECT_GT(r.copied, 0);
    LoadOptions lo;
    lo.experts = ExpertMode::nf4_reference;
    auto a = Model::load(out.string(), lo);
    auto b = Model::load(q.in, lo);
    const std::vector<int32_t> ids = {1, 17, 42, 99, 5};
    Session sa(*a, 16, nullptr), sb(*b, 16, nullptr);
    EXPECT_EQ(sa.forward_all(ids), sb.forward_all(ids)) << arch;
    EXPECT_THROW(quantize_model(q), Error);  // the output exists now
    QuantizeOptions again = q;
    again.in = out.string();
    again.out = out.string() + "_again";
    EXPECT_THROW(quantize_model(again), Error);  // already quantized
    fs::remove_all(out);
  }
}

}  // namespace
}  // namespace genesis::runtime
