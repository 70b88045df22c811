// --expert-usage and --gpu-experts' placement without a GPU: a Session counts every routed choice; the counts file
// round-trips, adds up and refuses another model's shape or malformed text; the placement takes the most used first
// within the budget and spreads evenly without counts; sizes parse with their units.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "common/error.h"
#include "cpu/thread_pool.h"
#include "runtime/model/expert_usage.h"
#include "runtime/model/forward.h"

namespace genesis::runtime {
namespace {

const std::string kGolden = GENESIS_GOLDEN_DIR;

std::string temp_path(const char* name) {
  return (std::filesystem::temp_directory_path() / (std::string("genesis_usage_") + name)).string();
}

TEST(ExpertUsage, SessionCountsEveryChoice) {
  for (const char* model : {"gguf/tiny_qwen3moe.gguf", "qwen3_next", "mixtral"}) {
    auto m = Model::load(kGolden + "/" + model, LoadOptions{});
    const ModelConfig& c = m->config();
    cpu::ThreadPool pool(2);
    Session s(*m, 64, &pool);
    std::vector<int32_t> toks;
    for (int i = 0; i < 11; ++i) toks.push_back(int32_t((i * 31 + 5) % c.vocab_size));
    s.forward_all(toks);
    const int32_t one[] = {3};
    std::vector<float> logits(size_t(c.vocab_size));
    s.forward(one, logits.data());
    const auto& u = s.expert_usage();
    ASSERT_EQ(u.size(), size_t(c.num_layers * c.num_experts)) << model;
    for (int64_t li = 0; li < c.num_layers; ++li) {
      const uint64_t sum = std::accumulate(u.begin() + li * c.num_experts, u.begin() + (li + 1) * c.num_experts,
                                           uint64_t(0));
      EXPECT_EQ(sum, c.layer_is_moe(li) ? uint64_t(12 * c.top_k) : 0u) << model << " layer " << li;
    }
  }
}

TEST(ExpertUsage, FileRoundTripsAddsAndRefusesOtherShapes) {
  auto m = Model::load(kGolden + "/gguf/tiny_qwen3moe.gguf", LoadOptions{});
  const ModelConfig& c = m->config();
  const std::string path = temp_path("roundtrip.json");
  std::filesystem::remove(path);
  std::vector<uint64_t> counts(size_t(c.num_layers * c.num_experts));
  for (size_t i = 0; i < counts.size(); ++i) counts[i] = i % 5;
  add_expert_usage(path, c, counts);
  add_expert_usage(path, c, counts);
  const ExpertUsage u = read_expert_usage(path, c);
  ASSERT_EQ(u.counts.size(), counts.size());
  for (size_t i = 0; i < counts.size(); ++i) EXPECT_EQ(u.counts[i], 2 * counts[i]);
  EXPECT_EQ(u.total(), 2 * std::accumulate(counts.begin(), counts.end(), uint64_t(0)));

  ModelConfig other = c;
  other.num_experts = c.num_experts * 2;
  EXPECT_THROW(read_expert_usage(path, other), Error);
  EXPECT_THROW(add_expert_usage(path, c, std::vector<uint64_t>(3)), Error);
  for (const char* bad : {"", "{", "[]", R"({"format":"other"})",
                          R"({"format":"genesis-expert-usage-1","experts":2,"counts":[[1,2],[3]]})",
                          R"({"format":"genesis-expert-usage-1","experts":2,"counts":[[1,-2]]})",
                          R"({"format":"genesis-expert-usage-1","experts":0,"counts":[]})"}) {
    std::ofstream(path) << bad;
    EXPECT_THROW(read_expert_usage(path, c), Error) << bad;
  }
  // Adding to a file that holds no counts of this model replaces it, saying so; counts saturate, never wrap.
  std::ofstream(path) << "{";
  EXPECT_NE(add_expert_usage(path, c, counts), "");
  EXPECT_EQ(read_expert_usage(path, c).counts, counts);
  std::vector<uint64_t> huge(counts.size(), UINT64_MAX - 1);
  EXPECT_EQ(add_expert_usage(path, c, huge), "");
  EXPECT_EQ(read_expert_usage(path, c).counts[1], UINT64_MAX);
  EXPECT_EQ(read_expert_usage(path, c).total(), UINT64_MAX);
  // A small file claiming a huge shape is refused without allocating for it.
  std::string big = R"({"format":"genesis-expert-usage-1","experts":1048576,"counts":[)";
  for (int i = 0; i < 20000; ++i) big += i ? ",[]" : "[]";
  std::ofstream(path) << big << "]}";
  EXPECT_THROW(read_expert_usage(path, c), Error);
  std::filesystem::remove(path);
  EXPECT_THROW(read_expert_usage(path, c), Error);  // missing
}

TEST(ExpertUsage, PlacementTakesTheMostUsedWithinTheBudget) {
  ModelConfig c;
  c.num_layers = 3;
  c.num_experts = 4;
  const std::vector<int64_t> bytes = {100, 0, 150};  // layer 1 dense
  ExpertUsage u{3, 4, {5, 1, 9, 0, 0, 0, 0, 0, 7, 8, 2, 3}};
  auto slots = place_experts(c, &u, bytes, 400);
  // By count: (layer 0, expert 2) = 9 costs 100, (2, 1) = 8 and (2, 0) = 7 cost 150 each: 400, the budget.
  EXPECT_EQ(slots[0], (std::vector<int32_t>{-1, -1, 0, -1}));
  EXPECT_TRUE(slots[1].empty());
  EXPECT_EQ(slots[2], (std::vector<int32_t>{1, 0, -1, -1}));
  // A smaller expert still fits where a larger one does not: 9 (100) + 8 (150) = 250, 7 (150) no, 5 (100) yes.
  slots = place_experts(c, &u, bytes, 350);
  EXPECT_EQ(slots[0], (std::vector<int32_t>{1, -1, 0, -1}));
  EXPECT_EQ(slots[2], (std::vector<int32_t>{-1, 0, -1, -1}));
  // All, and none.
  slots = place_experts(c, &u, bytes, -1);
  EXPECT_EQ(slots[0], (std::vector<int32_t>{1, 2, 0, 3}));
  slots = place_experts(c, &u, bytes, 0);
  EXPECT_EQ(slots[2], (std::vector<int32_t>{-1, -1, -1, -1}));
  // Without counts: expert 0 of every MoE layer, then expert 1, ...
  slots = place_experts(c, nullptr, bytes, 500);
  EXPECT_EQ(slots[0], (std::vector<int32_t>{0, 1, -1, -1}));
  EXPECT_EQ(slots[2], (std::vector<int32_t>{0, 1, -1, -1}));
}

TEST(ExpertUsage, BudgetsParseWithUnits) {
  EXPECT_EQ(parse_byte_budget("all"), -1);
  EXPECT_EQ(parse_byte_budget("ALL"), -1);
  EXPECT_EQ(parse_byte_budget("0"), 0);
  EXPECT_EQ(parse_byte_budget("12G"), int64_t(12) << 30);
  EXPECT_EQ(parse_byte_budget("12GiB"), int64_t(12) << 30);
  EXPECT_EQ(parse_byte_budget("12gb"), int64_t(12) << 30);
  EXPECT_EQ(parse_byte_budget("1.5g"), int64_t(3) << 29);
  EXPECT_EQ(parse_byte_budget("500M"), int64_t(500) << 20);
  EXPECT_EQ(parse_byte_budget("64K"), int64_t(64) << 10);
  for (const char* bad : {"", "x", "12", "-1G", "12Q", "nanG", "1e30G"}) EXPECT_THROW(parse_byte_budget(bad), Error) << bad;
}

}  // namespace
}  // namespace genesis::runtime
