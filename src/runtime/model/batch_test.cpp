// Steps over several sequences (Session::step): rows of five sequences stepped together, prefill chunks and decode
// rows mixed in one step, then decode steps of one row per sequence (from 4 rows their attention's preparation runs in
// its region), give each sequence the logits it gets alone (decode layers as one region of stages or a region per
// product, the same bits), on the tiny golden models (safetensors
// directories and GGUF files); slots are reused after removal; bad batches are errors that change nothing.
#include <gtest/gtest.h>

#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "cpu/thread_pool.h"
#include "kernels/q8_gemv/q8_gemv.h"
#include "runtime/model/dense.h"
#include "runtime/model/forward.h"
#include "runtime/model/load.h"
#include "runtime/model/test_util.h"

namespace genesis::runtime {
namespace {

const std::string kGolden = GENESIS_GOLDEN_DIR;

std::vector<int32_t> tokens_for(int seed, int n, int64_t vocab) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(int32_t((int64_t(i) * 7919 + seed * 104729 + 13) % vocab));
  return t;
}

// A sequence's script: its prompt, then tokens fed one per decode step; the logits of every row it runs.
struct Script {
  std::vector<int32_t> prompt, decode;
};

// Alone: the prompt in one forward (every row's logits), then each decode token.
std::vector<float> run_alone(const Model& m, const Script& s, cpu::ThreadPool* pool, int staged = -1) {
  Session ses(m, 64, pool);
  if (staged >= 0) ses.set_staged(staged == 1);
  std::vector<float> out = ses.forward_all(s.prompt);
  const size_t V = size_t(m.config().vocab_size);
  for (int32_t t : s.decode) {
    out.resize(out.size() + V);
    ses.forward(std::span<const int32_t>(&t, 1), out.data() + out.size() - V);
  }
  return out;
}

// Together: sequence 0's prompt and the first 4 tokens of sequence 1's in step 1; the rest of sequence 1's prompt,
// all of sequences 2, 3 and 4's, and sequence 0's first decode token in step 2; then every sequence's decode tokens
// together (5 rows a step, then fewer as sequences finish).
constexpr int kSeqs = 5;
std::vector<std::vector<float>> run_together(const Model& m, const std::vector<Script>& sc, cpu::ThreadPool* pool,
                                             bool staged = true, int64_t* regions = nullptr,
                                             std::optional<KvType> kv = std::nullopt) {
  Session ses(m, 64, pool, kv);
  ses.set_staged(staged);
  int32_t ids[kSeqs] = {0};
  for (int i = 1; i < kSeqs; ++i) {
    ids[i] = ses.add_sequence();
    EXPECT_EQ(ids[i], i);
  }
  const size_t V = size_t(m.config().vocab_size);
  std::vector<std::vector<float>> out(kSeqs);
  for (int i = 0; i < kSeqs; ++i)
    out[size_t(i)].resize((sc[size_t(i)].prompt.size() + sc[size_t(i)].decode.size()) * V);
  std::vector<size_t> fed(kSeqs, 0);  // rows run per sequence
  std::vector<std::vector<int32_t>> keep(kSeqs);  // the tokens of each sequence's rows in the current step
  auto rows = [&](int i, size_t n) {
    const Script& s = sc[size_t(i)];
    std::vector<int32_t> all = s.prompt;
    all.insert(all.end(), s.decode.begin(), s.decode.end());
    keep[size_t(i)].assign(all.begin() + ptrdiff_t(fed[size_t(i)]), all.begin() + ptrdiff_t(fed[size_t(i)] + n));
    SequenceRows r{ids[i], keep[size_t(i)], out[size_t(i)].data() + fed[size_t(i)] * V, true};
    fed[size_t(i)] += n;
    return r;
  };
  {
    const SequenceRows b[] = {rows(0, sc[0].prompt.size()), rows(1, 4)};
    ses.step(b);
  }
  {
    const SequenceRows b[] = {rows(1, sc[1].prompt.size() - 4), rows(2, sc[2].prompt.size()),
                              rows(3, sc[3].prompt.size()), rows(4, sc[4].prompt.size()), rows(0, 1)};
    ses.step(b);
  }
  for (;;) {
    std::vector<SequenceRows> b;
    for (int i = 0; i < kSeqs; ++i)
      if (fed[size_t(i)] < sc[size_t(i)].prompt.size() + sc[size_t(i)].decode.size()) b.push_back(rows(i, 1));
    if (b.empty()) break;
    ses.step(b);
  }
  for (int i = 0; i < kSeqs; ++i) EXPECT_EQ(ses.position(ids[i]), int64_t(fed[size_t(i)]));
  if (regions) *regions = ses.profile().regions;
  return out;
}

void check(const Model& m, const std::string& what) {
  const int64_t V = m.config().vocab_size;
  // 20 and 33 prompt rows take attention's GEMM path (>= 16 rows of one sequence), 7 the decode path.
  const std::vector<Script> sc = {{tokens_for(1, 20, V), tokens_for(4, 5, V)},
                                  {tokens_for(2, 7, V), tokens_for(5, 6, V)},
                                  {tokens_for(3, 33, V), tokens_for(6, 4, V)},
                                  {tokens_for(7, 3, V), tokens_for(8, 7, V)},
                                  {tokens_for(9, 1, V), tokens_for(10, 6, V)}};
  cpu::ThreadPool pool(2);
  const auto together = run_together(m, sc, &pool);
  // Decode layers as one region of stages (the default) or a region per product and attention: the same bits. With
  // 3 threads too (other task splits, a thread short of the cpus here).
  EXPECT_EQ(together, run_together(m, sc, &pool, false)) << what << ": stages against regions";
  {
    cpu::ThreadPool three(3);
    int64_t staged = 0, regions = 0;
    EXPECT_EQ(run_together(m, sc, &three, true, &staged), run_together(m, sc, &three, false, &regions))
        << what << ": 3 threads";
    if (m.config().layers[0].mixer == MixerKind::attention) {
      EXPECT_LT(staged, regions) << what << ": no stages ran";
    }
    // The binary16 KV cache too (the goldens' sessions keep fp32)
    EXPECT_EQ(run_together(m, sc, &three, true, nullptr, KvType::f16),
              run_together(m, sc, &three, false, nullptr, KvType::f16))
        << what << ": 3 threads, f16 cache";
    // A prompt of 2-15 rows is one segment of several rows in a staged layer (its rows' keys written in one stage,
    // read in the next): sequences 1 and 3 (7 and 3 prompt rows) alone, both ways.
    for (int i : {1, 3})
      EXPECT_EQ(run_alone(m, sc[size_t(i)], &three, 1), run_alone(m, sc[size_t(i)], &three, 0))
          << what << " sequence " << i << " alone: stages against regions";
  }
  for (int i = 0; i < kSeqs; ++i) {
    const double d = test::max_rel_diff(together[size_t(i)], run_alone(m, sc[size_t(i)], &pool));
    std::printf("%s sequence %d: together vs alone max |logit diff| / max |logit| = %.3g\n", what.c_str(), i, d);
    EXPECT_LE(d, 1e-5) << what << " sequence " << i;
  }
}

TEST(MultiSequenceStep, SafetensorsGoldensEqualAlone) {
  // olmoe's golden has dynamic rope with max_position_embeddings 8: past it the scaling follows the longest sequence
  // of a step (documented in forward.h), so sequences of 20+ positions differ from alone by design.
  for (const char* arch : {"llama", "mixtral", "qwen2", "qwen3", "qwen3_moe", "qwen3_next"}) {
    for (ExpertMode mode : {ExpertMode::f32, ExpertMode::nf4_reference}) {
      LoadOptions opt;
      opt.kv_cache = KvType::f32;  // the exact comparisons below: no binary16 cache rounding
      opt.experts = mode;
      opt.use_kb = false;
      auto m = Model::load(kGolden + "/" + arch, opt);
      if (!m->config().is_moe() && mode != ExpertMode::f32) continue;
      check(*m, std::string(arch) + " " + expert_mode_name(mode));
    }
  }
}

TEST(MultiSequenceStep, GgufGoldensEqualAlone) {
  for (const char* name : {"tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_qwen3moe", "tiny_olmoe", "tiny_mixtral",
                           "tiny_qwen3next"}) {
    LoadOptions opt;
    opt.kv_cache = KvType::f32;  // the exact comparisons below: no binary16 cache rounding
    opt.experts = ExpertMode::nf4_reference;
    opt.use_kb = false;
    // bf16 non-expert matrices (the default). --dense q8 quantizes the activations of steps under kGemmRows rows
    // and not those of larger ones, alone as much as together: its results depend on a step's row count by design.
    LoadedModel lm = load_model(kGolden + "/gguf/" + name + ".gguf", opt);
    check(*lm.model, name);
  }
}

// Int8-block products of several rows (one per sequence in a decode step) run the weights block by block for all rows:
// each row's result is the one it gets alone, bit for bit, for shapes with a row tail and 1 or 2 threads.
TEST(MultiSequenceStep, Q8ProductOfRowsEqualsEachRowAlone) {
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  cpu::ThreadPool pool(2);
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{200, 64}, {1000, 1024}, {37, 4096}}) {
    std::vector<float> w(size_t(rows * cols));
    for (auto& v : w) v = g(rng);
    const Dense d(kernels::q8_gemv::make_linear(
        std::make_shared<const kernels::q8_gemv::Q8Matrix>(kernels::q8_gemv::quantize(w.data(), rows, cols))));
    for (int64_t n : {2, 7, 15}) {
      std::vector<float> x(size_t(n * cols)), all(size_t(n * rows)), one(size_t(n * rows));
      for (auto& v : x) v = g(rng);
      for (cpu::ThreadPool* p : {static_cast<cpu::ThreadPool*>(nullptr), &pool}) {
        dense_product(d, x.data(), all.data(), n, p);
        for (int64_t t = 0; t < n; ++t) dense_product(d, x.data() + t * cols, one.data() + t * rows, 1, p);
        EXPECT_EQ(all, one) << rows << "x" << cols << " n " << n;
      }
    }
  }
}

TEST(MultiSequenceStep, SlotsAreReusedAndBadBatchesChangeNothing) {
  LoadOptions opt;
  opt.kv_cache = KvType::f32;  // the exact comparisons below: no binary16 cache rounding
  opt.experts = ExpertMode::f32;
  auto m = Model::load(kGolden + "/qwen3", opt);
  Session s(*m, 16, nullptr);
  EXPECT_EQ(s.sequences_in_use(), 1);
  const int32_t a = s.add_sequence(), b = s.add_sequence();
  EXPECT_EQ(s.sequences_in_use(), 3);
  const std::vector<int32_t> t = {1, 2, 3};
  const SequenceRows both[] = {{a, t}, {b, t}};
  s.step(both);
  EXPECT_EQ(s.position(a), 3);
  s.remove_sequence(a);
  EXPECT_THROW(s.position(a), Error);
  EXPECT_EQ(s.add_sequence(), a);  // the freed slot, at position 0
  EXPECT_EQ(s.position(a), 0);
  // A repeated sequence, a removed one, a bad token, an overflow: errors, and no position moves.
  const std::vector<int32_t> bad = {1, int32_t(m->config().vocab_size)};
  const std::vector<int32_t> long_rows(14, 1);
  const SequenceRows twice[] = {{a, t}, {a, t}};
  const SequenceRows bad_tok[] = {{a, t}, {b, bad}};
  const SequenceRows overflow[] = {{a, t}, {b, long_rows}};
  const SequenceRows missing[] = {{a, t}, {7, t}};
  for (auto batch : {std::span<const SequenceRows>(twice), std::span<const SequenceRows>(bad_tok),
                     std::span<const SequenceRows>(overflow), std::span<const SequenceRows>(missing)})
    EXPECT_THROW(s.step(batch), Error);
  EXPECT_EQ(s.position(a), 0);
  EXPECT_EQ(s.position(b), 3);
  std::vector<int32_t> too_many(size_t(s.chunk() + 1), 1);
  Session big(*m, s.chunk() + 8, nullptr);
  const SequenceRows over_chunk[] = {{0, too_many}};
  EXPECT_THROW(big.step(over_chunk), Error);
}

}  // namespace
}  // namespace genesis::runtime
