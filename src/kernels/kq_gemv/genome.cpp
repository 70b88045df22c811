// kq_gemv genome: ranges, text form.
#include "kernels/kq_gemv/genome.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <charconv>
#include <iterator>
#include <sstream>

#include "common/error.h"

namespace genesis::kernels::kq_gemv {
namespace {

const char* kind_name(PrefetchKind k) {
  switch (k) {
    case PrefetchKind::t0: return "t0";
    case PrefetchKind::t1: return "t1";
    case PrefetchKind::t2: return "t2";
    case PrefetchKind::nta: return "nta";
  }
  return "?";
}

constexpr const char* kFaultNames[] = {"none", "wrong_result", "crash", "hang", "illegal_instruction"};

}  // namespace

void Genome::validate() const {
  if (pf_dist < 0 || pf_dist > 65536 || pf_dist % 64 != 0)
    fail("kq_gemv genome: pf={} must be a multiple of 64 in 0..65536", pf_dist);
  if (pf_multi < 0 || pf_multi > 65536 || pf_multi % 64 != 0)
    fail("kq_gemv genome: pfm={} must be a multiple of 64 in 0..65536", pf_multi);
  if (pf_pair < 0 || pf_pair > 65536 || pf_pair % 64 != 0)
    fail("kq_gemv genome: pfp={} must be a multiple of 64 in 0..65536", pf_pair);
  if (pf_ramp < 0 || pf_ramp > 65536 || pf_ramp % 64 != 0)
    fail("kq_gemv genome: pfr={} must be a multiple of 64 in 0..65536", pf_ramp);
  if (int(pf_kind) > int(PrefetchKind::nta)) fail("kq_gemv genome: prefetch kind {} is not t0, t1, t2 or nta", int(pf_kind));
  if (loop_align != 0 && loop_align != 16 && loop_align != 32 && loop_align != 64)
    fail("kq_gemv genome: align={} must be 0, 16, 32 or 64", loop_align);
  if (row_chunk < 1 || row_chunk > 256) fail("kq_gemv genome: rows={} must be in 1..256", row_chunk);
  if (x_budget_kb < 1 || x_budget_kb > 1024) fail("kq_gemv genome: xkb={} must be in 1..1024", x_budget_kb);
  if (rows_per_pass < 1 || rows_per_pass > 16) fail("kq_gemv genome: pass={} must be in 1..16", rows_per_pass);
  if (int(fault) > int(Fault::illegal_instruction)) fail("kq_gemv genome: fault {} is unknown", int(fault));
}

uint64_t Genome::hash() const {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : serialize()) h = (h ^ ch) * 1099511628211ull;
  return h;
}

std::string Genome::serialize() const {
  std::string s = fmt::format("pf={} pfm={} pfp={} pfr={} pfk={} align={} rows={} xkb={} pass={}", pf_dist,
                              pf_multi, pf_pair, pf_ramp, kind_name(pf_kind), loop_align, row_chunk, x_budget_kb, rows_per_pass);
  if (!order.empty()) s += fmt::format(" order={}", fmt::join(order, ","));
  if (fault != Fault::none) s += fmt::format(" fault={}", kFaultNames[int(fault)]);
  return s;
}

std::string Genome::code_key() const {
  std::string k = fmt::format("pf{}m{}p{}{}a{}", pf_dist, pf_multi, pf_pair, kind_name(pf_kind), loop_align);
  if (!order.empty()) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a of the permutation
    for (uint16_t v : order) h = (h ^ v) * 1099511628211ull;
    k += fmt::format("o{:016x}", h);
  }
  return k;
}

Genome Genome::parse(const std::string& text) {
  Genome g;
  std::istringstream in(text);
  std::string tok;
  while (in >> tok) {
    const auto eq = tok.find('=');
    if (eq == std::string::npos) fail("kq_gemv genome: '{}' is not key=value (in '{}')", tok, text);
    const std::string key = tok.substr(0, eq), val = tok.substr(eq + 1);
    if (key == "order") {
      g.order.clear();
      std::string item;
      std::istringstream items(val);
      while (std::getline(items, item, ',')) {
        int v = -1;
        auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
        if (ec != std::errc() || p != item.data() + item.size() || v < 0 || v > 65535)
          fail("kq_gemv genome: order entry '{}' is not an index 0..65535", item);
        g.order.push_back(uint16_t(v));
      }
      continue;
    }
    if (key == "fault") {
      bool ok = false;
      for (int i = 0; i < int(std::size(kFaultNames)); ++i)
        if (val == kFaultNames[i]) g.fault = Fault(i), ok = true;
      if (!ok) fail("kq_gemv genome: fault='{}' is not none, wrong_result, crash, hang or illegal_instruction", val);
      continue;
    }
    if (key == "pfk") {
      bool ok = false;
      for (auto k : {PrefetchKind::t0, PrefetchKind::t1, PrefetchKind::t2, PrefetchKind::nta})
        if (val == kind_name(k)) g.pf_kind = k, ok = true;
      if (!ok) fail("kq_gemv genome: pfk='{}' is not t0, t1, t2 or nta", val);
      continue;
    }
    int v = 0;
    auto [p, ec] = std::from_chars(val.data(), val.data() + val.size(), v);
    if (ec != std::errc() || p != val.data() + val.size()) fail("kq_gemv genome: {}='{}' is not an integer", key, val);
    if (key == "pf") g.pf_dist = v;
    else if (key == "pfm") g.pf_multi = v;
    else if (key == "pfp") g.pf_pair = v;
    else if (key == "pfr") g.pf_ramp = v;
    else if (key == "align") g.loop_align = v;
    else if (key == "rows") g.row_chunk = v;
    else if (key == "xkb") g.x_budget_kb = v;
    else if (key == "pass") g.rows_per_pass = v;
    else fail("kq_gemv genome: unknown gene '{}' (genes: pf, pfm, pfp, pfr, pfk, align, rows, xkb, pass, order, fault)", key);
  }
  g.validate();
  return g;
}

}  // namespace genesis::kernels::kq_gemv
