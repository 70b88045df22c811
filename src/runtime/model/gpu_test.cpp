// The hybrid mode (--gpu) against the CPU path: every tiny golden model (safetensors and GGUF), logits of a prompt and
// greedy continuations; several sequences in one step against each alone; and the clear error where there is no GPU
// or no CUDA component. The GPU cases skip, saying why, on machines without a CUDA device (scripts/gpu_tests.sh runs
// them on one).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "cpu/thread_pool.h"
#include "runtime/model/expert_usage.h"
#include "runtime/model/forward.h"
#include "runtime/model/test_util.h"

namespace genesis::runtime {
namespace {

// GENESIS_GOLDEN_DIR in the environment overrides the build tree's path (scripts/gpu_tests.sh on another machine).
const std::string kGolden = std::getenv("GENESIS_GOLDEN_DIR") ? std::getenv("GENESIS_GOLDEN_DIR") : GENESIS_GOLDEN_DIR;

bool no_gpu(std::string* why) { return gpu_device_count(why) == 0; }

// An environment variable set for a scope: the GPU state reads its switches (GENESIS_CUDA_*) when a Session makes it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) had_ = true, old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() { had_ ? setenv(name_, old_.c_str(), 1) : unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

// Steps of more than 16 rows run their products through cuBLAS (GpuState::gemm_rows), each fp32 value split into two
// bf16 parts (about 16 bits); "0" keeps the kernels (fp32 activations, decode's path) for comparison.
constexpr const char* kGemmRows = "GENESIS_CUDA_GEMM_ROWS";

// The GPU holds the CPU's fp32 matrices in fp32 and everything else in bf16; the CPU reference holds a GGUF's
// block-quantized matrices in bf16 too (--dense bf16), so the two differ by the order of float sums (and by routing
// where two experts' probabilities tie within that).
LoadOptions options(bool gpu) {
  LoadOptions o;
  set_dense_mode("bf16", o);
  o.gpu = gpu;
  o.kv_cache = KvType::f32;  // the CPU references: no binary16 cache rounding (the GPU keeps its own cache)
  return o;
}

std::vector<int32_t> prompt(int64_t vocab, int n) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(int32_t((i * 7919 + 13) % vocab));
  return t;
}

std::vector<int32_t> greedy(Session& s, std::vector<int32_t> toks, int steps) {
  std::vector<float> logits(size_t(s.vocab_size()));
  s.forward(toks, logits.data());
  std::vector<int32_t> out;
  for (int i = 0; i < steps; ++i) {
    const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    const int32_t one[] = {next};
    s.forward(one, logits.data());
  }
  return out;
}

// A model path as a test name ("gguf/tiny_llama.gguf" -> "gguf_tiny_llama_gguf").
std::string test_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& ch : s)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

class GpuGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuGolden, LogitsAndGreedyMatchTheCpuPath) {
  std::string why;
  if (no_gpu(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  const std::string path = kGolden + "/" + GetParam();
  auto cpu_model = Model::load(path, options(false));
  auto gpu_model = Model::load(path, options(true));
  ASSERT_NE(gpu_model->gpu(), nullptr);
  cpu::ThreadPool pool(2);
  // The 21-row prompt through the kernels (fp32 activations), then through cuBLAS (bf16 tensor cores, activations
  // split into hi and lo parts: 1e-5 of the largest logit on the dense models). A MoE's experts run on the CPU, which
  // quantizes their input rows to int8 blocks: rows that differ by 1e-5 can round an element to the neighbouring
  // int8 step, so there the cuBLAS step's bound is the looser 1e-2. Decode steps use the kernels either way.
  for (const bool gemm : {false, true}) {
    ScopedEnv env(kGemmRows, gemm ? "17" : "0");
    Session cs(*cpu_model, 128, &pool), gs(*gpu_model, 128, &pool);
    const auto toks = prompt(cpu_model->config().vocab_size, 21);
    const auto want = cs.forward_all(toks);
    const auto got = gs.forward_all(toks);
    const double d = test::max_rel_diff(got, want);
    std::printf("%s, %s: hybrid vs CPU max |logit diff| / max |logit| = %.3g\n", GetParam().c_str(),
                gemm ? "cuBLAS prefill" : "kernels", d);
    const double bound = gemm && cpu_model->config().is_moe() ? 1e-2 : 2e-3;
    EXPECT_LT(d, bound) << GetParam() << ": hybrid logits vs the CPU path" << (gemm ? " (cuBLAS)" : "");
    cs.reset();
    gs.reset();
    EXPECT_EQ(greedy(gs, toks, 8), greedy(cs, toks, 8)) << GetParam();
    RecordProperty(gemm ? "max_rel_diff_gemm" : "max_rel_diff", std::to_string(d));
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GpuGolden,
                         ::testing::Values("llama", "qwen2", "qwen3", "qwen3_moe", "olmoe", "mixtral", "qwen3_next",
                                           "gguf/tiny_llama.gguf", "gguf/tiny_qwen3moe.gguf",
                                           "gguf/tiny_qwen3next.gguf", "gguf/tiny_mixtral.gguf"),
                         test_name);

// The prefill's experts on the GPU (a GGUF's blocks dequantized there, bf16 products): a 21-row prompt against the
// CPU path with the same weights (the file's blocks dequantized exactly: --experts f32; the default would re-quantize
// Q5_0 / Q4_1 experts to NF4), then greedy decoding (the CPU's experts) from that state.
class GpuPrefill : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuPrefill, MatchesTheCpuPath) {
  std::string why;
  if (no_gpu(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  const std::string path = kGolden + "/" + GetParam();
  LoadOptions o = options(true), ref = options(false);
  o.experts = ref.experts = ExpertMode::f32;
  o.gpu_prefill_rows = 8;
  auto cpu_model = Model::load(path, ref);
  auto gpu_model = Model::load(path, o);
  const std::string desc = gpu_description(*gpu_model->gpu());
  ASSERT_NE(desc.find("prefill experts on the GPU"), std::string::npos) << desc;
  cpu::ThreadPool pool(2);
  Session cs(*cpu_model, 128, &pool), gs(*gpu_model, 128, &pool);
  const auto toks = prompt(cpu_model->config().vocab_size, 21);
  const auto want = cs.forward_all(toks);
  const double d = test::max_rel_diff(gs.forward_all(toks), want);
  std::printf("%s: GPU prefill experts vs CPU: max |logit diff| / max |logit| = %.3g\n", GetParam().c_str(), d);
  // The experts chosen by more than a unit's rows as bf16 GEMMs (blocks dequantized to bf16, 2^-9 per weight; the
  // activations split in two bf16 parts), the others in units: GpuResident's cuBLAS bound.
  EXPECT_LT(d, 1e-2) << GetParam();
  EXPECT_GT(gs.profile().gpu_expert_pairs, 0) << GetParam();
  cs.reset();
  gs.reset();
  EXPECT_EQ(greedy(gs, toks, 8), greedy(cs, toks, 8)) << GetParam();
  // Kernels only: the streamed blocks through the units (fp32 activations, weights dequantized in registers).
  ScopedEnv kernels(kGemmRows, "0");
  Session ks(*gpu_model, 128, &pool);
  const double dk = test::max_rel_diff(ks.forward_all(toks), want);
  std::printf("  kernels only: max |logit diff| / max |logit| = %.3g\n", dk);
  EXPECT_LT(dk, 1e-4) << GetParam();  // fp32 throughout: the order of sums only (as GpuResident)
}

// The direct prefill: the GGUF's experts on the CPU as stored (kq_gemv records in one arena per layer, pinned), each
// layer's records copied to the device and restored to the file's blocks there. The GPU then multiplies the very
// blocks the staged path copies from the file: the same logits as that path (GENESIS_CUDA_DIRECT_PREFILL=0), over two
// prefill steps in one session (the second step's copies wait for the first's restores). tiny_synth_moe has three MoE
// layers, so within a step the third layer's records reuse the first's buffer. Both files' experts are Q4_K (gate,
// up) and Q6_K (down); the other tiny GGUFs' experts are formats kq_gemv does not take (Q5_0) or gate and up differ,
// so the CPU does not keep them as stored (CudaKernels.RestoreRecordsGiveTheFileBlocks covers every format).
class GpuPrefillDirect : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuPrefillDirect, StraightFromTheCpuRecords) {
  std::string why;
  if (no_gpu(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  const std::string name = GetParam(), path = kGolden + "/" + name;
  LoadOptions o = options(true), ref = options(false);
  set_expert_mode("stored", o);
  ref.experts = ExpertMode::f32;
  o.gpu_prefill_rows = 8;
  auto cpu_model = Model::load(path, ref);
  auto direct = Model::load(path, o);
  const std::string desc = gpu_description(*direct->gpu());
  ASSERT_NE(desc.find("copied straight from the CPU's experts"), std::string::npos) << desc;
  std::unique_ptr<Model> staged;
  {
    ScopedEnv off("GENESIS_CUDA_DIRECT_PREFILL", "0");
    staged = Model::load(path, o);
  }
  ASSERT_NE(gpu_description(*staged->gpu()).find("staged through pinned buffers"), std::string::npos);
  cpu::ThreadPool pool(2);
  Session cs(*cpu_model, 128, &pool), ds(*direct, 128, &pool), ss(*staged, 128, &pool);
  const auto toks = prompt(cpu_model->config().vocab_size, 37);
  const std::vector<int32_t> first(toks.begin(), toks.begin() + 21), second(toks.begin() + 21, toks.end());
  for (const auto* part : {&first, &second}) {  // two prefill steps of >= 8 rows
    const auto want = cs.forward_all(*part);
    const auto got = ds.forward_all(*part);
    const double d = test::max_rel_diff(got, want), ds_ss = test::max_rel_diff(got, ss.forward_all(*part));
    std::printf("%s, %zu rows: direct prefill vs CPU f32 experts %.3g, vs the staged path %.3g\n", name.c_str(),
                part->size(), d, ds_ss);
    EXPECT_LT(d, 1e-2) << name;      // GpuPrefill's bound (bf16 GEMMs of the blocks)
    EXPECT_LT(ds_ss, 1e-6) << name;  // the same blocks, the same kernels
  }
  EXPECT_GT(ds.profile().gpu_expert_pairs, 0) << name;
}

INSTANTIATE_TEST_SUITE_P(Models, GpuPrefillDirect,
                         ::testing::Values("gguf/tiny_qwen3moe.gguf", "gguf/tiny_synth_moe.gguf"), test_name);

INSTANTIATE_TEST_SUITE_P(Models, GpuPrefill,
                         ::testing::Values("gguf/tiny_qwen3moe.gguf", "gguf/tiny_mixtral.gguf", "gguf/tiny_olmoe.gguf",
                                           "gguf/tiny_qwen3next.gguf"),
                         test_name);

// Routed experts resident on the GPU (--gpu-experts: the file's blocks, dequantized in the products' registers, fp32
// activations): all of them, and half the budget (pairs split between the GPU and the CPU in one step), against the
// CPU path with the same weights (--experts f32); several sequences and decode rows included.
class GpuResident : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuResident, MatchesTheCpuPath) {
  std::string why;
  if (no_gpu(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  const std::string path = kGolden + "/" + GetParam();
  ScopedEnv kernels(kGemmRows, "0");  // fp32 throughout, but for the cuBLAS check below
  LoadOptions ref = options(false);
  ref.experts = ExpertMode::f32;
  auto cpu_model = Model::load(path, ref);
  cpu::ThreadPool pool(2);
  const auto toks = prompt(cpu_model->config().vocab_size, 21);
  Session cs(*cpu_model, 128, &pool);
  const auto want = cs.forward_all(toks);
  cs.reset();
  const auto want_greedy = greedy(cs, toks, 8);
  int64_t previous = -1;
  for (const char* budget : {"all", "half"}) {
    LoadOptions o = options(true);
    o.experts = ExpertMode::f32;
    o.gpu_expert_budget = -1;
    if (std::string(budget) == "half") {
      const size_t all = gpu_weight_bytes(*Model::load(path, o)->gpu());
      o.gpu_expert_budget = 0;
      const size_t none = gpu_weight_bytes(*Model::load(path, o)->gpu());
      o.gpu_expert_budget = int64_t(all - none) / 2;
    }
    auto gpu_model = Model::load(path, o);
    const std::string desc = gpu_description(*gpu_model->gpu());
    ASSERT_NE(desc.find("routed experts on the GPU"), std::string::npos) << desc;
    Session gs(*gpu_model, 128, &pool);
    const auto got = gs.forward_all(toks);
    const double d = test::max_rel_diff(got, want);
    const Profile& p = gs.profile();
    std::printf("%s, --gpu-experts %s: %lld of %lld pairs on the GPU; vs CPU max |logit diff| / max |logit| = %.3g\n",
                GetParam().c_str(), budget, (long long)p.gpu_expert_pairs, (long long)p.expert_pairs, d);
    EXPECT_LT(d, 1e-4) << GetParam() << " " << budget;  // fp32 throughout: the order of sums only
    if (previous < 0) EXPECT_EQ(p.gpu_expert_pairs, p.expert_pairs) << "all experts resident, some pairs on the CPU";
    else EXPECT_LT(p.gpu_expert_pairs, previous) << "half the budget moved no pair back to the CPU";
    EXPECT_GT(p.gpu_expert_pairs, 0) << desc;
    previous = p.gpu_expert_pairs;
    gs.reset();
    EXPECT_EQ(greedy(gs, toks, 8), want_greedy) << GetParam() << " " << budget;
    {
      // The same prompt as a cuBLAS step: experts that more than 8 pairs chose (4 experts, 42 pairs) multiplied as
      // batched bf16 GEMMs of their blocks dequantized to bf16 (2^-9 per weight, as GpuPrefill's: its bound), the
      // others in units, the dense matrices through cuBLAS too.
      ScopedEnv gemm(kGemmRows, "17");
      Session gg(*gpu_model, 128, &pool);
      const double dg = test::max_rel_diff(gg.forward_all(toks), want);
      std::printf("  cuBLAS step: max |logit diff| / max |logit| = %.3g\n", dg);
      EXPECT_LT(dg, 1e-2) << GetParam() << " " << budget << " (cuBLAS)";
      EXPECT_EQ(gg.profile().gpu_expert_pairs, previous) << "the cuBLAS step ran other pairs on the GPU";
      gg.reset();
      EXPECT_EQ(greedy(gg, toks, 8), want_greedy) << GetParam() << " " << budget << " (cuBLAS)";
    }
    // Decode steps (one row): with every expert resident (and GENESIS_CUDA_DEVICE_ROUTE not 0) these layers route on the
    // device (top-k there, no hand-off to the host): the logits and the experts chosen (Session::expert_usage)
    // against the CPU path's. (The variable is read when a Session makes its device state.)
    std::optional<ScopedEnv> route(std::in_place, "GENESIS_CUDA_DEVICE_ROUTE", "1");
    Session c2(*cpu_model, 128, &pool), g2(*gpu_model, 128, &pool);
    route.reset();
    std::vector<float> lc(size_t(cpu_model->config().vocab_size)), lg(lc.size());
    c2.forward(toks, lc.data());
    g2.forward(toks, lg.data());
    double worst = 0;
    for (int i = 0; i < 6; ++i) {
      const int32_t one[] = {int32_t((i * 37 + 11) % cpu_model->config().vocab_size)};
      c2.forward(one, lc.data());
      g2.forward(one, lg.data());
      worst = std::max(worst, test::max_rel_diff(lg, lc));
    }
    ASSERT_EQ(g2.expert_usage().size(), c2.expert_usage().size()) << "the device-routed layers' choices went uncounted";
    uint64_t moved = 0;
    for (size_t i = 0; i < c2.expert_usage().size(); ++i)
      moved += uint64_t(std::llabs(int64_t(c2.expert_usage()[i]) - int64_t(g2.expert_usage()[i])));
    std::printf("  decode: max |logit diff| / max |logit| = %.3g; expert choices differing from the CPU's: %llu\n", worst,
                (unsigned long long)moved);
    EXPECT_LT(worst, 1e-4) << GetParam() << " " << budget;
    EXPECT_LE(moved, 2u) << GetParam() << " " << budget << ": the device's top-k chose other experts";
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GpuResident,
                         ::testing::Values("gguf/tiny_qwen3moe.gguf", "gguf/tiny_mixtral.gguf", "gguf/tiny_olmoe.gguf",
                                           "gguf/tiny_qwen3next.gguf"),
                         test_name);

// --expert-usage: the most used experts go to the GPU; a safetensors model's experts cannot (the GPU holds a GGUF's
// blocks), nor a dense model's.
TEST(Gpu, ResidentExpertsFollowTheUsageCounts) {
  std::string why;
  if (no_gpu(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  const std::string path = kGolden + "/gguf/tiny_qwen3moe.gguf";
  cpu::ThreadPool pool(2);
  const std::string usage = (std::filesystem::temp_directory_path() / "genesis_gpu_usage.json").string();
  std::filesystem::remove(usage);
  {
    auto m = Model::load(path, options(false));
    Session s(*m, 128, &pool);
    s.forward_all(prompt(m->config().vocab_size, 40));
    add_expert_usage(usage, m->config(), s.expert_usage());
  }
  LoadOptions o = options(true);
  o.expert_usage = usage;
  o.gpu_expert_budget = -1;
  auto all = Model::load(path, o);
  const size_t all_bytes = gpu_weight_bytes(*all->gpu());
  o.gpu_expert_budget = 0;
  const size_t none_bytes = gpu_weight_bytes(*Model::load(path, o)->gpu());
  o.gpu_expert_budget = int64_t(all_bytes - none_bytes) / 4;  // a quarter of the experts
  auto m = Model::load(path, o);
  const std::string desc = gpu_description(*m->gpu());
  EXPECT_NE(desc.find("the most used by"), std::string::npos) << desc;
  Session s(*m, 128, &pool);
  s.forward_all(prompt(m->config().vocab_size, 40));  // the same text the counts came from
  const Profile& p = s.profile();
  std::printf("usage-placed quarter of the experts: %lld of %lld pairs on the GPU (%s)\n",
              (long long)p.gpu_expert_pairs, (long long)p.expert_pairs, desc.c_str());
  EXPECT_GT(double(p.gpu_expert_pairs), 0.25 * double(p.expert_pairs)) << "the most used quarter took no more pairs";
  std::filesystem::remove(usage);

  o = options(true);
  o.gpu_expert_budget = -1;
  EXPECT_THROW(Model::load(kGolden + "/qwen3_moe", o), Error);  // safetensors
  EXPECT_THROW(Model::load(kGolden + "/gguf/tiny_llama.gguf", o), Error);  // dense
}

TEST(Gpu, SequencesStepTogetherAsAlone) {
  std::string why;
  if (no_gpu(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  // qwen3_next: the DeltaNet layers' conv and recurrent states per sequence on the device (two segments per step).
  for (const char* arch : {"qwen3_moe", "qwen3_next"}) {
    auto m = Model::load(kGolden + "/" + arch, options(true));
    cpu::ThreadPool pool(2);
    const int64_t V = m->config().vocab_size;
    const auto a = prompt(V, 9), b = prompt(V, 5);
    const int32_t ta[] = {a[0]}, tb[] = {b[1]};  // a decode step of both after their prompts
    std::vector<float> la(static_cast<size_t>(V)), lb(static_cast<size_t>(V)), la2(la), lb2(lb);
    {
      Session s(*m, 64, &pool);
      s.forward(a, la.data());
      s.forward(ta, la2.data());
      s.reset();
      s.forward(b, lb.data());
      s.forward(tb, lb2.data());
    }
    Session s(*m, 64, &pool);
    const int32_t second = s.add_sequence();
    std::vector<float> ga(static_cast<size_t>(V)), gb(static_cast<size_t>(V)), ga2(ga), gb2(gb);
    const SequenceRows rows[] = {{0, a, ga.data(), false}, {second, b, gb.data(), false}};
    s.step(rows);
    const SequenceRows next[] = {{0, ta, ga2.data(), false}, {second, tb, gb2.data(), false}};
    s.step(next);
    EXPECT_LT(test::max_rel_diff(ga, la), 1e-5) << arch;
    EXPECT_LT(test::max_rel_diff(gb, lb), 1e-5) << arch;
    EXPECT_LT(test::max_rel_diff(ga2, la2), 1e-5) << arch;
    EXPECT_LT(test::max_rel_diff(gb2, lb2), 1e-5) << arch;
  }
}

// A graph recorded for a row count replays steps of that many rows with other sequences: one sequence's 2 rows, then
// two sequences' single rows (one of them fresh), then the second's 2 rows; each equals the same rows run alone.
TEST(Gpu, GraphsReplayOtherSequenceCounts) {
  std::string why;
  if (no_gpu(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  for (const char* arch : {"qwen3_moe", "qwen3_next"}) {
    auto m = Model::load(kGolden + "/" + arch, options(true));
    cpu::ThreadPool pool(2);
    const size_t V = static_cast<size_t>(m->config().vocab_size);
    const auto a = prompt(int64_t(V), 3), b = prompt(int64_t(V), 3);
    const std::span<const int32_t> a01(a.data(), 2), a2(a.data() + 2, 1), b0(b.data(), 1), b12(b.data() + 1, 2);
    std::vector<float> ra(V), rb1(V), rb2(V), ga(V), gb1(V), gb2(V), scratch(V);
    {
      Session s(*m, 64, &pool);
      s.forward(a01, scratch.data());
      s.forward(a2, ra.data());
      s.reset();
      s.forward(b0, rb1.data());
      s.forward(b12, rb2.data());
    }
    Session s(*m, 64, &pool);
    const SequenceRows first[] = {{0, a01, scratch.data(), false}};
    s.step(first);
    const int32_t second = s.add_sequence();
    const SequenceRows both[] = {{0, a2, ga.data(), false}, {second, b0, gb1.data(), false}};
    s.step(both);
    const SequenceRows last[] = {{second, b12, gb2.data(), false}};
    s.step(last);
    EXPECT_LT(test::max_rel_diff(ga, ra), 1e-5) << arch;
    EXPECT_LT(test::max_rel_diff(gb1, rb1), 1e-5) << arch;
    EXPECT_LT(test::max_rel_diff(gb2, rb2), 1e-5) << arch;
  }
}

// GENESIS_CUDA_TIMES=graph: stamp kernels inside the decode step's graphs time its parts; the tokens are the same as
// without them, and the parts the graphs hold are there, each within the segments' whole.
TEST(Gpu, GraphStampsTimeThePartsAndChangeNothing) {
  std::string why;
  if (no_gpu(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  auto m = Model::load(kGolden + "/qwen3_moe", options(true));
  cpu::ThreadPool pool(2);
  const auto toks = prompt(m->config().vocab_size, 5);
  std::vector<int32_t> plain;
  {
    Session s(*m, 64, &pool);
    plain = greedy(s, toks, 6);
  }
  ScopedEnv env("GENESIS_CUDA_TIMES", "graph");
  Session s(*m, 64, &pool);
  EXPECT_EQ(greedy(s, toks, 6), plain);
  const auto& parts = s.profile().gpu_parts;
  for (const char* p : {"(segments, whole)", "(stamp pair, empty)", "attention q k v", "norms", "router"})
    EXPECT_TRUE(parts.count(p) && parts.at(p) > 0) << p;
  // Parts run outside the graphs (events) may add launch gaps; a part inside them is within the segments' whole.
  EXPECT_LT(parts.at("attention q k v"), parts.at("(segments, whole)"));
}

// GENESIS_CUDA_DELTANET=0: Qwen3-Next's DeltaNet layers stay on the CPU, the hidden rows copied across; the hybrid's
// logits still match the CPU path's (the GpuGolden bound of the kernels' path).
TEST(Gpu, DeltaNetOnTheCpuMatchesToo) {
  std::string why;
  if (no_gpu(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  for (const char* file : {"qwen3_next", "gguf/tiny_qwen3next.gguf"}) {
    auto cpu_model = Model::load(kGolden + "/" + file, options(false));
    std::unique_ptr<Model> gpu_model;
    {
      ScopedEnv env("GENESIS_CUDA_DELTANET", "0");
      gpu_model = Model::load(kGolden + "/" + file, options(true));
    }
    EXPECT_NE(gpu_description(*gpu_model->gpu()).find("Gated DeltaNet layers on the CPU"), std::string::npos) << file;
    cpu::ThreadPool pool(2);
    Session cs(*cpu_model, 128, &pool), gs(*gpu_model, 128, &pool);
    const auto toks = prompt(cpu_model->config().vocab_size, 21);
    const double d = test::max_rel_diff(gs.forward_all(toks), cs.forward_all(toks));
    std::printf("%s, DeltaNet on the CPU: hybrid vs CPU max |logit diff| / max |logit| = %.3g\n", file, d);
    EXPECT_LT(d, 1e-2) << file;
  }
}

// Expert deferral changes the function (the lowest-ranked experts join one layer late): measured, bounded, and
// refused for a dense model. (qwen3_moe's and qwen3_next's goldens end with a dense layer and have one in between.)
TEST(Gpu, ExpertDeferralIsMeasured) {
  std::string why;
  if (no_gpu(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  for (const char* arch : {"qwen3_moe", "mixtral", "olmoe", "qwen3_next"}) {
    LoadOptions o = options(true);
    auto exact = Model::load(kGolden + "/" + arch, o);
    o.gpu_defer = 1;
    auto deferred = Model::load(kGolden + "/" + arch, o);
    cpu::ThreadPool pool(2);
    Session a(*exact, 64, &pool), b(*deferred, 64, &pool);
    const auto toks = prompt(exact->config().vocab_size, 12);
    const double d = test::max_rel_diff(b.forward_all(toks), a.forward_all(toks));
    std::printf("%s: --gpu-defer 1 vs exact: max |logit diff| / max |logit| = %.3g\n", arch, d);
    // Tiny random models: a deferred expert is a large part of the residual, so the change is large (0.4-0.5 of the
    // largest logit); the real-shaped models' figures are in the README.
    EXPECT_GT(d, 1e-7) << arch << ": deferral changed nothing (not applied?)";
    EXPECT_TRUE(std::isfinite(d)) << arch;
  }
  LoadOptions o = options(true);
  o.gpu_defer = 1;
  EXPECT_THROW(Model::load(kGolden + "/llama", o), Error);
}

TEST(Gpu, HybridOptionsWithoutGpuAreRefused) {
  LoadOptions o = options(false);
  o.gpu_defer = 1;
  EXPECT_THROW(Model::load(kGolden + "/qwen3_moe", o), Error);
  o.gpu_defer = 0;
  o.gpu_prefill_rows = 8;
  EXPECT_THROW(Model::load(kGolden + "/qwen3_moe", o), Error);
  o.gpu_prefill_rows = 0;
  o.gpu_expert_budget = -1;
  EXPECT_THROW(Model::load(kGolden + "/gguf/tiny_qwen3moe.gguf", o), Error);
}

TEST(Gpu, WithoutADeviceTheErrorSaysWhy) {
  std::string why;
  if (!no_gpu(&why)) GTEST_SKIP() << "this machine has a CUDA device";
  try {
    Model::load(kGolden + "/qwen3", options(true));
    FAIL() << "--gpu without a device loaded";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(msg.find("CUDA") != std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace genesis::runtime
