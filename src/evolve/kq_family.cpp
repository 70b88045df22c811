// The kq_gemv adapter (kq_family.h): genes as data, the body model, the mutator, and the instantiation of the
// generic pipeline (pipeline.h).
#include "evolve/kq_family.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "common/error.h"
#include "cpu/thread_pool.h"
#include "evolve/pipeline.h"
#include "jit/ir.h"
#include "kernels/kq_gemv/build.h"
#include "quant/ggml.h"

namespace genesis::evolve {

namespace kq = kernels::kq_gemv;

namespace {
constexpr int kTries = 24;
}

std::vector<GeneSpec> kq_param_space(int tokens) {
  std::vector<GeneSpec> s = {
      {"pf", {0, 512, 1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384}},
      {"pfk", {0, 1, 2, 3}},
      {"pfr", {0, 1024, 2048, 4096, 8192, 16384}},
      {"align", {0, 16, 32, 64}},
      {"rows", {8, 16, 32, 64, 128, 256}},
      {"xkb", {8, 12, 16, 24, 32, 48, 64, 128}},
  };
  if (tokens > 1) {
    s.push_back({"pass", {2, 4, 6, 8, 12, 16}});
    s.push_back({"pfm", {0, 512, 1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384}});
    s.push_back({"pfp", {0, 256, 512, 1024, 2048, 4096}});
  }
  return s;
}

int kq_gene(const KqGenome& g, const std::string& name) {
  if (name == "pf") return g.pf_dist;
  if (name == "pfm") return g.pf_multi;
  if (name == "pfp") return g.pf_pair;
  if (name == "pfr") return g.pf_ramp;
  if (name == "pfk") return int(g.pf_kind);
  if (name == "align") return g.loop_align;
  if (name == "rows") return g.row_chunk;
  if (name == "xkb") return g.x_budget_kb;
  if (name == "pass") return g.rows_per_pass;
  fail("kq_gemv: unknown gene '{}' (genes: pf, pfm, pfp, pfr, pfk, align, rows, xkb, pass)", name);
}

void set_kq_gene(KqGenome& g, const std::string& name, int v) {
  if (name == "pf") g.pf_dist = v;
  else if (name == "pfm") g.pf_multi = v;
  else if (name == "pfp") g.pf_pair = v;
  else if (name == "pfr") g.pf_ramp = v;
  else if (name == "pfk") g.pf_kind = kq::PrefetchKind(v);
  else if (name == "align") g.loop_align = v;
  else if (name == "rows") g.row_chunk = v;
  else if (name == "xkb") g.x_budget_kb = v;
  else if (name == "pass") g.rows_per_pass = v;
  else fail("kq_gemv: unknown gene '{}' (genes: pf, pfm, pfp, pfr, pfk, align, rows, xkb, pass)", name);
}

std::vector<int> kq_pass_rows(const KqGenome& g, int tokens, kq::Path path, kq::Format f) {
  return kq::pass_rows(path == kq::Path::scalar ? kq::Path::avx512vnni : path, f, g, tokens);
}

namespace {

BodyModel body_model(const std::vector<jit::Instr>& body) {
  const auto dep = jit::def_use(body);
  BodyModel m;
  for (size_t i = 0; i < body.size(); ++i) {
    std::vector<uint16_t> p;
    for (int j : dep.preds[i]) p.push_back(uint16_t(j));
    m.preds.push_back(std::move(p));
    m.cls.push_back(body[i].cls());
    m.is_load.push_back(body[i].is_load());
    m.has_alt.push_back(false);  // the family offers no same-class replacements
    m.text.push_back(body[i].text());
  }
  return m;
}

KqGenome code_genes_only(const KqGenome& g) {
  KqGenome p = g;
  p.order.clear();
  p.fault = kq::Fault::none;
  return p;
}

}  // namespace

KqBodyFn kq_body_fn(kq::Format f, int tokens, kq::Path path) {
  if (path == kq::Path::scalar) path = kq::Path::avx512vnni;
  return [f, tokens, path](const KqGenome& g) {
    const KqGenome p = code_genes_only(g);
    return body_model(kq::canonical_body(kq::make_conf(f, kq_pass_rows(p, tokens, path, f).front(), p, path)));
  };
}

bool same_params(const KqGenome& a, const KqGenome& b) {
  return a.pf_dist == b.pf_dist && a.pf_multi == b.pf_multi && a.pf_pair == b.pf_pair && a.pf_ramp == b.pf_ramp &&
         a.pf_kind == b.pf_kind &&
         a.loop_align == b.loop_align && a.row_chunk == b.row_chunk && a.x_budget_kb == b.x_budget_kb &&
         a.rows_per_pass == b.rows_per_pass;
}

bool KqMutator::order_fits(const KqGenome& g) const {
  const auto n = kq_pass_rows(g, tokens_, path_, format_);
  return std::all_of(n.begin(), n.end(), [&](int v) { return v == n.front(); });
}

std::optional<KqGenome> KqMutator::mutate(const KqGenome& parent, Op op, Rng& rng, std::string* why) const {
  switch (op) {
    case Op::swap_near:
    case Op::swap_far:
    case Op::move_block: {
      if (!order_fits(parent)) {
        if (why) *why = "passes of different rows: no one order fits their bodies";
        return std::nullopt;
      }
      const BodyModel body = body_(parent);
      auto o = reorder_order(body, order_of(parent.order, body.size()), op, rng, why);
      if (!o) return std::nullopt;
      KqGenome g = parent;
      g.order = std::move(*o);
      if (g.order == order_of(std::vector<uint16_t>{}, body.size())) g.order.clear();  // identity stored as empty
      return g;
    }
    case Op::param: {
      for (int t = 0; t < kTries; ++t) {
        const GeneSpec& gene = rng.pick(space_);
        const int cur = kq_gene(parent, gene.name);
        std::vector<int> other;
        for (int v : gene.values)
          if (v != cur) other.push_back(v);
        if (other.empty()) continue;
        KqGenome g = parent;
        set_kq_gene(g, gene.name, rng.pick(other));
        BodyModel nb;
        try {
          g.validate();
          nb = body_(g);
        } catch (const Error& e) {
          if (why) *why = e.what();
          continue;
        }
        // A body with other dependencies: the old permutation means nothing there (a prefetch kind or an alignment
        // changes no dependency and keeps it).
        if (!g.order.empty()) {
          const BodyModel pb = body_(parent);
          if (nb.preds != pb.preds || !nb.legal(g.order) || !order_fits(g)) g.order.clear();
        }
        return g;
      }
      if (why) *why = "no other parameter value";
      return std::nullopt;
    }
    default:
      if (why) *why = fmt::format("kq_gemv has no {} operator (no hints, no same-class replacements)", op_name(op));
      return std::nullopt;
  }
}

std::optional<KqGenome> KqMutator::crossover(const KqGenome& a, const KqGenome& b, Rng& rng) const {
  if (!same_params(a, b) || a.fault != b.fault) return std::nullopt;
  const BodyModel body = body_(a);
  const size_t n = body.size();
  KqGenome g = a;
  g.order = merge_orders(order_of(a.order, n), order_of(b.order, n), rng);
  std::string why;
  if (!body.legal(g.order, &why)) fail("crossover produced an illegal order: {}", why);
  if (g.order == order_of(std::vector<uint16_t>{}, n)) g.order.clear();
  return g;
}

std::array<int, 3> KqMutator::descriptors(const KqGenome& g) const {
  const int pf = g.pf_dist == 0 ? 0 : g.pf_dist <= 2048 ? 1 : g.pf_dist <= 8192 ? 2 : 3;
  const int rows = g.row_chunk <= 16 ? 0 : g.row_chunk <= 64 ? 1 : 2;
  const BodyModel body = body_(g);
  return {pf, rows, std::min(7, int(body.load_to_use(g.order)))};
}

// --- the adapter ---

std::string KqFamily::kb_path(const Config& c) {
  return fmt::format("{}/{}", kq::path_name(c.path), kq::format_name(c.format));
}

namespace {

// Stored GGUF blocks: every code byte random (so every code value occurs), the scale fields halves of magnitude
// 2^-7 .. 2^-1 (exponent field 8..14), random sign and mantissa.
std::vector<uint8_t> random_blocks(kq::Format f, int64_t rows, int64_t cols, std::mt19937_64& g) {
  const auto info = quant::ggml_type_info(kq::ggml_type(f));
  if (!info) fail("kq_gemv: no type info for {}", kq::format_name(f));
  if (cols % info->block != 0)
    fail("kq_gemv: {} columns is not a multiple of {}'s block of {}", cols, kq::format_name(f), info->block);
  const int64_t blocks = rows * cols / info->block;
  std::vector<uint8_t> b(size_t(blocks * info->block_bytes));
  for (auto& v : b) v = uint8_t(g());
  auto half = [&](uint8_t* p) {
    const uint16_t e = uint16_t(8 + g() % 7), m = uint16_t(g() & 0x3FF), s = uint16_t(g() & 1);
    const uint16_t h = uint16_t(s << 15 | e << 10 | m);
    std::memcpy(p, &h, 2);
  };
  for (int64_t i = 0; i < blocks; ++i) {
    uint8_t* blk = b.data() + i * info->block_bytes;
    switch (f) {
      case kq::Format::q4_k:
      case kq::Format::q5_k: half(blk), half(blk + 2); break;
      case kq::Format::q6_k: half(blk + 208); break;
      case kq::Format::q4_1: half(blk), half(blk + 2); break;
      default: half(blk); break;
    }
  }
  return b;
}

}  // namespace

KqFamily::Case KqFamily::make_case(const Config& c, const Shape& s, uint64_t seed) {
  kq::require_path(c.path);
  if (c.tokens < 1 || c.tokens > kq::kMaxTokens)
    fail("kq_gemv: {} activation rows; the factory tunes 1..{}", c.tokens, kq::kMaxTokens);
  Case d;
  std::mt19937_64 rng(seed * 1000003 + uint64_t(s.first) * 31 + uint64_t(s.second) + 7 * uint64_t(c.format));
  d.stored = random_blocks(c.format, s.first, s.second, rng);
  d.m = kq::make_matrix(kq::ggml_type(c.format), s.first, s.second, d.stored.data(), d.stored.size());
  std::normal_distribution<float> nd(0.0f, 1.0f);
  d.x.resize(size_t(c.tokens * s.second));
  for (auto& v : d.x) v = nd(rng);
  kq::quantize_activations(c.format, d.x.data(), c.tokens, s.second, d.a);
  d.ref.resize(size_t(c.tokens * s.first));
  kq::reference(kq::ggml_type(c.format), d.stored.data(), s.first, s.second, d.a, d.ref.data());
  d.bound.resize(d.ref.size());
  for (int t = 0; t < c.tokens; ++t)
    for (int64_t r = 0; r < s.first; ++r)
      d.bound[size_t(t * s.first + r)] = kq::error_bound(kq::ggml_type(c.format), d.stored.data(), s.second, r, d.a, t);
  d.y.resize(d.ref.size());
  return d;
}

void KqFamily::static_check(const Config& c, const Case&, const Genome& g) {
  const Genome p = code_genes_only(g);
  const kq::Path path = c.path == kq::Path::scalar ? kq::Path::avx512vnni : c.path;  // scalar: genes checked alike
  for (int n : kq_pass_rows(p, c.tokens, path, c.format)) {
    const kq::Conf conf = kq::make_conf(c.format, n, p, path);
    if (g.order.empty()) continue;
    std::string why;
    if (!jit::is_legal_order(kq::canonical_body(conf), g.order, &why))
      fail("illegal order for {} passes of {} rows: {}", kq::format_name(c.format), n, why);
  }
}

KqFamily::Kernel KqFamily::build(const Config& c, const Case&, const Genome& g) {
  return Kernel{g, c.path, c.allow_faults};
}

void KqFamily::run(const Kernel& k, const Weights& w, Case& d, cpu::ThreadPool* pool) {
  const int64_t rows = w.rows;
  if (pool == nullptr || pool->size() <= 1) {
    kq::run_rows(w, d.a, d.y.data(), rows, 0, rows, k.path, k.genome, k.allow_faults);
    return;
  }
  const int nt = pool->size();
  const int64_t per = (rows + nt - 1) / nt;
  pool->run([&](int tid, int) {
    const int64_t a = std::min(rows, int64_t(tid) * per), b = std::min(rows, a + per);
    if (a < b) kq::run_rows(w, d.a, d.y.data(), rows, a, b, k.path, k.genome, k.allow_faults);
  });
}

// Correctness gate in the worker: every output within the family's bound; a reorder descendant also bit-exact to
// its canonical order (same code genes). Throws WrongResult naming the first bad output.
void KqFamily::check(const Config& c, const Kernel& k, Case& d, const Genome& g, cpu::ThreadPool* pool) {
  const int64_t M = d.m.rows;
  std::fill(d.y.begin(), d.y.end(), std::nanf(""));
  run(k, d.m, d, pool);
  const std::vector<float> y = d.y;
  for (size_t i = 0; i < y.size(); ++i)
    if (!(std::fabs(double(y[i]) - d.ref[i]) <= d.bound[i]))
      throw WrongResult{fmt::format("kq_gemv {} {}x{} tokens={} genome '{}': y[t={}][r={}] = {} but reference {} "
                                    "(bound {})",
                                    kq::format_name(c.format), M, d.m.cols, c.tokens, g.serialize(), i / size_t(M),
                                    i % size_t(M), y[i], d.ref[i], d.bound[i])};
  if (g.order.empty()) return;
  Kernel twin = k;
  twin.genome.order.clear();
  twin.genome.fault = kq::Fault::none;
  std::fill(d.y.begin(), d.y.end(), std::nanf(""));
  run(twin, d.m, d, pool);
  for (size_t i = 0; i < y.size(); ++i)
    if (std::memcmp(&y[i], &d.y[i], 4) != 0)
      throw WrongResult{fmt::format("kq_gemv {} {}x{}: reorder descendant '{}' differs from its canonical order at "
                                    "y[{}]: {} vs {} (a legality bug)",
                                    kq::format_name(c.format), M, d.m.cols, g.serialize(), i, y[i], d.y[i])};
}

double KqFamily::bytes_moved(const Case& d) { return kq::bytes_moved(d.m, d.a.n); }

template class FamilyEvaluator<KqFamily>;
template GateResult heldout_gate_of<KqFamily>(const KqEvalConfig&, const std::vector<Shape>&, const KqGenome&,
                                              const KqGenome&, int);

GateResult heldout_gate(const KqEvalConfig& cfg, const std::vector<Shape>& heldout, const KqGenome& winner,
                        const KqGenome& baseline, int rounds) {
  return heldout_gate_of<KqFamily>(cfg, heldout, winner, baseline, rounds);
}

}  // namespace genesis::evolve
