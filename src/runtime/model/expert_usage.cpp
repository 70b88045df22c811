#include "runtime/model/expert_usage.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "runtime/model/config.h"

namespace genesis::runtime {

uint64_t ExpertUsage::total() const {
  uint64_t t = 0;
  for (uint64_t v : counts) t = v > UINT64_MAX - t ? UINT64_MAX : t + v;
  return t;
}

namespace {

constexpr const char* kFormat = "genesis-expert-usage-1";

ExpertUsage parse(const std::string& path, const nlohmann::json& j) {
  if (!j.is_object() || j.value("format", "") != kFormat)
    fail("{}: not an expert-usage file (its \"format\" is not \"{}\")", path, kFormat);
  ExpertUsage u;
  const auto& layers = j.at("counts");
  if (!layers.is_array()) fail("{}: \"counts\" is not an array of layers", path);
  u.layers = int64_t(layers.size());
  u.experts = j.at("experts").get<int64_t>();
  if (u.experts <= 0 || u.experts > (1 << 20)) fail("{}: \"experts\" = {} is out of range", path, u.experts);
  for (size_t li = 0; li < layers.size(); ++li) {
    const auto& row = layers[li];
    if (!row.is_array() || int64_t(row.size()) != u.experts)
      fail("{}: layer {} has {} counts, expected {} (one per expert)", path, li, row.is_array() ? row.size() : 0,
           u.experts);
    for (const auto& v : row) {
      if (!v.is_number_unsigned()) fail("{}: layer {}: a count is not a non-negative integer", path, li);
      u.counts.push_back(v.get<uint64_t>());
    }
  }
  return u;
}

}  // namespace

ExpertUsage read_expert_usage(const std::string& path, const ModelConfig& c) {
  std::ifstream in(path);
  if (!in) fail("--expert-usage {}: cannot open it", path);
  ExpertUsage u;
  try {
    u = parse(path, nlohmann::json::parse(in));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not a valid expert-usage file ({})", path, e.what());
  }
  if (u.layers != c.num_layers || u.experts != c.num_experts)
    fail("{}: recorded for {} layers x {} experts; this model has {} x {}", path, u.layers, u.experts, c.num_layers,
         c.num_experts);
  return u;
}

std::string add_expert_usage(const std::string& path, const ModelConfig& c, const std::vector<uint64_t>& counts) {
  if (counts.size() != size_t(c.num_layers * c.num_experts))
    fail("--expert-usage: {} counts for a model of {} layers x {} experts", counts.size(), c.num_layers,
         c.num_experts);
  std::vector<uint64_t> sum = counts;
  std::string note;
  if (std::filesystem::exists(path)) {
    try {
      const ExpertUsage old = read_expert_usage(path, c);
      for (size_t i = 0; i < sum.size(); ++i)  // saturating: a count never wraps to a small one
        sum[i] = old.counts[i] > UINT64_MAX - sum[i] ? UINT64_MAX : sum[i] + old.counts[i];
    } catch (const Error& e) {
      note = fmt::format("{} did not hold this model's counts ({}); it now holds this run's", path, e.what());
    }
  }
  nlohmann::json j;
  j["format"] = kFormat;
  j["layers"] = c.num_layers;
  j["experts"] = c.num_experts;
  j["top_k"] = c.top_k;
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t li = 0; li < c.num_layers; ++li)
    rows.push_back(std::vector<uint64_t>(sum.begin() + li * c.num_experts, sum.begin() + (li + 1) * c.num_experts));
  j["counts"] = std::move(rows);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) fail("--expert-usage {}: cannot write {}", path, tmp);
    out << j.dump() << "\n";
    if (!out) fail("--expert-usage {}: writing {} failed", path, tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) fail("--expert-usage {}: cannot replace it ({})", path, ec.message());
  return note;
}

std::vector<std::vector<int32_t>> place_experts(const ModelConfig& c, const ExpertUsage* usage,
                                                const std::vector<int64_t>& expert_bytes, int64_t budget) {
  const int64_t L = c.num_layers, E = c.num_experts;
  std::vector<std::vector<int32_t>> slot(static_cast<size_t>(L));
  struct Cand {
    uint64_t count;
    int64_t layer, expert;
  };
  std::vector<Cand> cands;
  for (int64_t li = 0; li < L; ++li) {
    if (expert_bytes[size_t(li)] <= 0) continue;
    slot[size_t(li)].assign(size_t(E), -1);
    for (int64_t e = 0; e < E; ++e)
      cands.push_back({usage && !usage->counts.empty() ? usage->counts[size_t(li * E + e)] : 0, li, e});
  }
  // Most used first; equal counts by expert id, then layer: round-robin over the layers.
  std::stable_sort(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) {
    if (a.count != b.count) return a.count > b.count;
    if (a.expert != b.expert) return a.expert < b.expert;
    return a.layer < b.layer;
  });
  std::vector<int32_t> next(size_t(L), 0);
  int64_t left = budget;
  for (const Cand& k : cands) {
    const int64_t b = expert_bytes[size_t(k.layer)];
    if (budget >= 0 && b > left) continue;  // a smaller layer's expert may still fit
    left -= b;
    slot[size_t(k.layer)][size_t(k.expert)] = next[size_t(k.layer)]++;
  }
  return slot;
}

int64_t parse_byte_budget(const std::string& text) {
  std::string t;
  for (char ch : text) t += char(std::tolower(static_cast<unsigned char>(ch)));
  if (t == "all") return -1;
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(t, &used);
  } catch (...) {
    fail("--gpu-experts {}: expected a size such as 12G, 500M or 1.5GiB, or \"all\"", text);
  }
  std::string unit = t.substr(used);
  if (unit.size() > 1 && unit.back() == 'b') unit.pop_back();  // "gb", "gib" -> "g", "gi"
  if (unit.size() > 1 && unit.back() == 'i') unit.pop_back();
  double scale = 1;
  if (unit == "k") scale = 1024.0;
  else if (unit == "m") scale = 1024.0 * 1024;
  else if (unit == "g") scale = 1024.0 * 1024 * 1024;
  else if (unit == "t") scale = 1024.0 * 1024 * 1024 * 1024;
  else if (unit.empty() && v != 0)
    fail("--gpu-experts {}: give a unit (K, M, G or T, binary: 12G is 12 GiB)", text);
  else if (!unit.empty() && unit != "b")
    fail("--gpu-experts {}: unknown unit \"{}\" (K, M, G or T, binary)", text, unit);
  if (!std::isfinite(v) || v < 0 || v * scale > 9.0e18)
    fail("--gpu-experts {}: expected a non-negative size", text);
  return int64_t(v * scale);
}

}  // namespace genesis::runtime
