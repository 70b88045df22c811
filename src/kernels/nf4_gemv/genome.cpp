// Genome data: baseline schedules per path, structural validation, the one-line text form and its hash.
#include "kernels/nf4_gemv/genome.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <map>

#include "common/error.h"
#include "common/util.h"

namespace genesis::kernels::nf4_gemv {

namespace {
constexpr std::string_view kPathNames[] = {"scalar",     "avx2",     "avx512fp32", "avx512bf16",
                                           "avx512vnni", "avx2int8", "avx2vnni"};
constexpr std::string_view kHintNames[] = {"t0", "t1", "t2", "nta", "nop"};
constexpr std::string_view kStreamNames[] = {"w", "s", "x"};
constexpr std::string_view kFaultNames[] = {"none", "wrong_result", "crash", "hang", "illegal_instruction"};
constexpr int kMaxBodyPos = 1 << 15;

int parse_int(std::string_view s, std::string_view field) {
  int v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) fail("genome: field '{}' has a bad integer '{}'", field, s);
  return v;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    size_t i = s.find(sep, start);
    out.push_back(s.substr(start, i == std::string_view::npos ? std::string_view::npos : i - start));
    if (i == std::string_view::npos) break;
    start = i + 1;
  }
  return out;
}

template <size_t N>
int index_of(const std::string_view (&names)[N], std::string_view s, std::string_view field) {
  for (size_t i = 0; i < N; ++i)
    if (names[i] == s) return int(i);
  std::string all;
  for (auto n : names) all += fmt::format("{}{}", all.empty() ? "" : ", ", n);
  fail("genome: field '{}' has unknown value '{}' (possible: {})", field, s, all);
}
}  // namespace

std::string_view path_name(Path p) { return kPathNames[int(p)]; }
std::optional<Path> parse_path(std::string_view name) {
  for (size_t i = 0; i < std::size(kPathNames); ++i)
    if (kPathNames[i] == name) return Path(i);
  return std::nullopt;
}
bool path_is_jit(Path p) {
  return p == Path::avx512_fp32 || p == Path::avx512_bf16 || p == Path::avx512_vnni || is_avx2_jit(p);
}
std::string_view hint_name(HintKind k) { return kHintNames[int(k)]; }

Genome Genome::baseline(Path p) {
  Genome g;
  g.path = p;
  switch (p) {
    case Path::scalar:
    case Path::avx2:
      g.row_groups = 1;
      g.accs = 1;
      g.unroll = 0;
      break;
    case Path::avx512_fp32:  // step = 2 k (16 bytes of codes); 8 steps per iteration
      g.row_groups = 1;
      g.accs = 2;
      g.unroll = 8;
      break;
    case Path::avx512_bf16:  // step = 4 k (32 bytes); 8 steps per iteration
      g.row_groups = 1;
      g.accs = 2;
      g.unroll = 8;
      break;
    case Path::avx2_int8:
    case Path::avx2_vnni:
    case Path::avx512_vnni:  // step = 8 k (64 bytes); one whole block per iteration
      g.row_groups = 1;
      g.accs = 2;
      g.unroll = 0;
      // Weights prefetched 4 KiB ahead into L2 (as kq_gemv's baseline, which has the why). Stop 29, the 2-core Xeon
      // with AMX, cold, 2 threads, 14336x4096 / 2048x7168: avx512vnni 67/65% -> 84-88/91-95% of the read bandwidth,
      // avx2vnni 68-73/56-58% -> 70-78/73-74%; hot (L3), 1 thread, 3-8% slower; the 8-layer synthetic 30B shape
      // (NF4 experts) decodes 18.0 / 18.2 -> 19.2 / 19.1 tokens/s.
      g.pf_dist = 4096;
      g.pf_kind = HintKind::prefetch_t2;
      break;
  }
  return g;
}

void Genome::validate() const {
  auto in = [](int v, std::initializer_list<int> ok) { return std::find(ok.begin(), ok.end(), v) != ok.end(); };
  if (int(path) >= int(std::size(kPathNames))) fail("genome: unknown path {}", int(path));
  if (!in(row_groups, {1, 2, 3, 4})) fail("genome: row_groups {} not in 1..4", row_groups);
  if (!in(accs, {1, 2, 3, 4})) fail("genome: accs {} not in 1..4", accs);
  if (unroll < 0 || unroll > 64) fail("genome: unroll {} not in 0..64", unroll);
  if (pf_dist < 0 || pf_dist > 65536 || pf_dist % 64 != 0)
    fail("genome: prefetch distance {} must be a multiple of 64 in 0..65536", pf_dist);
  if (pf_kind == HintKind::nop) fail("genome: prefetch kind cannot be nop");
  if (!in(loop_align, {0, 16, 32, 64})) fail("genome: loop_align {} not one of 0, 16, 32, 64", loop_align);
  if (!order.empty()) {
    std::vector<bool> seen(order.size(), false);
    for (auto i : order) {
      if (i >= order.size() || seen[i]) fail("genome: order is not a permutation of 0..{}", order.size() - 1);
      seen[i] = true;
    }
  }
  for (const auto& h : hints) {
    if (h.pos < 0 || h.pos > kMaxBodyPos) fail("genome: hint position {} out of range", h.pos);
    if (h.kind == HintKind::nop) {
      if (h.offset < 1 || h.offset > 15) fail("genome: nop length {} not in 1..15", h.offset);
    } else if (h.offset < -4096 || h.offset > 65536) {
      fail("genome: prefetch offset {} not in -4096..65536", h.offset);
    }
  }
  if (lut_permb && path != Path::avx512_vnni) fail("genome: lut=permb exists only on path avx512vnni");
  for (size_t i = 1; i < alt.size(); ++i)
    if (alt[i] <= alt[i - 1]) fail("genome: alt indices must be strictly increasing");
  if (!path_is_jit(path) && (!order.empty() || !hints.empty() || !alt.empty()))
    fail("genome: path {} is compiled, it has no instruction order or hints to set", path_name(path));
}

std::string Genome::serialize() const {
  std::string s = fmt::format("path={} rg={} acc={} unroll={} pf={}:{} bc={} lut={} align={} order=", path_name(path),
                              row_groups, accs, unroll, pf_dist, hint_name(pf_kind), bcast_reg ? 1 : 0,
                              lut_permb ? "permb" : "shufb", loop_align);
  if (order.empty()) {
    s += "-";
  } else {
    for (size_t i = 0; i < order.size(); ++i) s += fmt::format("{}{}", i ? "," : "", order[i]);
  }
  if (!alt.empty()) {
    s += " alt=";
    for (size_t i = 0; i < alt.size(); ++i) s += fmt::format("{}{}", i ? "," : "", alt[i]);
  }
  s += " hints=";
  if (hints.empty()) {
    s += "-";
  } else {
    for (size_t i = 0; i < hints.size(); ++i)
      s += fmt::format("{}{}:{}:{}:{}", i ? ";" : "", hints[i].pos, hint_name(hints[i].kind),
                       kStreamNames[int(hints[i].stream)], hints[i].offset);
  }
  if (fault != Fault::none) s += fmt::format(" fault={}", kFaultNames[int(fault)]);
  return s;
}

Genome Genome::parse(std::string_view text) {
  Genome g;
  std::map<std::string_view, std::string_view> kv;
  for (auto tok : split(text, ' ')) {
    if (tok.empty()) continue;
    auto eq = tok.find('=');
    if (eq == std::string_view::npos) fail("genome: '{}' is not key=value", tok);
    kv[tok.substr(0, eq)] = tok.substr(eq + 1);
  }
  auto need = [&](std::string_view k) {
    auto it = kv.find(k);
    if (it == kv.end()) fail("genome: missing field '{}' in '{}'", k, text);
    return it->second;
  };
  g.path = Path(index_of(kPathNames, need("path"), "path"));
  g.row_groups = parse_int(need("rg"), "rg");
  g.accs = parse_int(need("acc"), "acc");
  g.unroll = parse_int(need("unroll"), "unroll");
  auto pf = split(need("pf"), ':');
  if (pf.size() != 2) fail("genome: field 'pf' must be DIST:KIND, got '{}'", need("pf"));
  g.pf_dist = parse_int(pf[0], "pf");
  g.pf_kind = HintKind(index_of(kHintNames, pf[1], "pf"));
  g.bcast_reg = parse_int(need("bc"), "bc") != 0;
  if (auto it = kv.find("lut"); it != kv.end()) {  // optional: absent in texts written before the gene existed
    if (it->second != "shufb" && it->second != "permb")
      fail("genome: field 'lut' has unknown value '{}' (possible: shufb, permb)", it->second);
    g.lut_permb = it->second == "permb";
  }
  g.loop_align = parse_int(need("align"), "align");
  if (auto o = need("order"); o != "-")
    for (auto t : split(o, ',')) {
      int v = parse_int(t, "order");
      if (v < 0 || v > 65535) fail("genome: order entry {} out of range", v);
      g.order.push_back(uint16_t(v));
    }
  if (auto it = kv.find("alt"); it != kv.end() && it->second != "-")
    for (auto t : split(it->second, ',')) {
      int v = parse_int(t, "alt");
      if (v < 0 || v > 65535) fail("genome: alt entry {} out of range", v);
      g.alt.push_back(uint16_t(v));
    }
  if (auto h = need("hints"); h != "-")
    for (auto t : split(h, ';')) {
      auto f = split(t, ':');
      if (f.size() != 4) fail("genome: hint '{}' must be POS:KIND:STREAM:OFFSET", t);
      Hint x;
      x.pos = parse_int(f[0], "hints");
      x.kind = HintKind(index_of(kHintNames, f[1], "hints"));
      x.stream = f[2] == "-" ? Stream::weights : Stream(index_of(kStreamNames, f[2], "hints"));
      x.offset = parse_int(f[3], "hints");
      g.hints.push_back(x);
    }
  if (auto it = kv.find("fault"); it != kv.end()) g.fault = Fault(index_of(kFaultNames, it->second, "fault"));
  g.validate();
  return g;
}

uint64_t Genome::hash() const { return fnv1a64(serialize()); }
std::string Genome::short_hash() const { return hex64(hash(), 6); }
std::string kernel_id(const Genome& g) { return fmt::format("nf4_gemv__{}__{}", path_name(g.path), g.short_hash()); }

}  // namespace genesis::kernels::nf4_gemv
