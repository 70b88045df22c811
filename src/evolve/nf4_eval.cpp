// The nf4_gemv adapter (nf4_eval.h) and its instantiation of the generic pipeline (pipeline.h).
#include "evolve/nf4_eval.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <random>

#include "common/error.h"
#include "cpu/isa.h"
#include "evolve/pipeline.h"
#include "jit/ir.h"
#include "kernels/nf4_gemv/conf.h"

namespace genesis::evolve {

namespace nf = kernels::nf4_gemv;

BodyFn nf4_body_fn(const nf::Problem& problem) {
  return [problem](const Genome& g) {
    Genome params = g;  // the body depends on the parameter genes only
    params.order.clear();
    params.hints.clear();
    params.alt.clear();
    const nf::Conf conf = nf::make_conf(problem, params, cpu::host_isa());
    const auto body = nf::canonical_body(conf);
    const auto dep = jit::def_use(body);
    BodyModel m;
    for (size_t i = 0; i < body.size(); ++i) {
      std::vector<uint16_t> p;
      for (int j : dep.preds[i]) p.push_back(uint16_t(j));
      m.preds.push_back(std::move(p));
      m.cls.push_back(body[i].cls());
      m.is_load.push_back(body[i].is_load());
      m.has_alt.push_back(jit::has_alternative(body[i]));
      m.text.push_back(body[i].text());
    }
    return m;
  };
}

ParamSpace nf4_param_space(nf::Path p) {
  ParamSpace s = param_space(p);
  s.lut_permb = p == nf::Path::avx512_vnni && cpu::mayiuse(cpu::Isa::avx512vbmi);
  return s;
}

std::string Nf4Family::kb_path(const Config& c) { return std::string(nf::path_name(c.path)); }

Nf4Family::Case Nf4Family::make_case(const Config& c, const Shape& s, uint64_t seed) {
  nf::require_path(c.path);
  Case d;
  d.pr = nf::Problem{s.first, s.second, c.tokens, c.blocksize};
  d.pr.validate();
  std::mt19937_64 rng(seed * 1000003 + uint64_t(s.first) * 31 + uint64_t(s.second));
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> w(size_t(s.first * s.second));
  for (auto& v : w) v = g(rng);
  d.w = quant::quantize_nf4(w, s.first, s.second, c.blocksize);
  d.pw = nf::pack(d.w, c.path);
  d.x.resize(size_t(c.tokens * s.second));
  for (auto& v : d.x) v = g(rng);
  d.ref.resize(size_t(c.tokens * s.first));
  nf::reference(d.w, d.x.data(), c.tokens, d.ref.data());
  d.bound.resize(d.ref.size());
  for (int t = 0; t < c.tokens; ++t)
    for (int64_t m = 0; m < s.first; ++m)
      d.bound[size_t(t * s.first + m)] = nf::error_bound(c.path, d.w, d.x.data(), m, t);
  d.y.resize(d.ref.size());
  return d;
}

void Nf4Family::static_check(const Config&, const Case& d, const Genome& g) {
  if (!nf::path_is_jit(g.path)) return;  // compiled paths (scalar, avx2): no code to configure or order
  const nf::Conf conf = nf::make_conf(d.pr, g, cpu::host_isa());
  if (!g.order.empty()) {
    std::string why;
    const auto body = nf::canonical_body(conf);
    if (!jit::is_legal_order(body, g.order, &why)) fail("illegal order: {}", why);
  }
}

Nf4Family::Kernel Nf4Family::build(const Config& c, const Case& d, const Genome& g) {
  return nf::get_kernel(d.pr, g, c.allow_faults);
}

// Correctness gate in the worker: every output within the path's bound; a reorder/hint/alt descendant also
// bit-exact to its canonical twin (same parameter genes). Throws WrongResult naming the first bad output.
void Nf4Family::check(const Config& c, const Kernel& k, Case& d, const Genome& g, cpu::ThreadPool* pool) {
  std::vector<float> y(d.ref.size(), std::nanf(""));
  k->run(d.pw, d.x.data(), y.data(), pool);
  for (size_t i = 0; i < y.size(); ++i)
    if (!(std::fabs(double(y[i]) - d.ref[i]) <= d.bound[i]))
      throw WrongResult{fmt::format("{} {} tokens={}: y[t={}][m={}] = {} but reference {} (bound {})", k->id(),
                                    d.pr.shape(), d.pr.tokens, i / size_t(d.pr.M), i % size_t(d.pr.M), y[i], d.ref[i],
                                    d.bound[i])};
  if (g.order.empty() && g.hints.empty() && g.alt.empty()) return;
  Genome twin = g;
  twin.order.clear();
  twin.hints.clear();
  twin.alt.clear();
  twin.fault = nf::Fault::none;
  auto tk = nf::get_kernel(d.pr, twin, c.allow_faults);
  std::vector<float> ty(y.size());
  tk->run(d.pw, d.x.data(), ty.data(), pool);
  for (size_t i = 0; i < y.size(); ++i)
    if (std::memcmp(&y[i], &ty[i], 4) != 0)
      throw WrongResult{fmt::format("{} {}: reorder/hint descendant differs from its canonical order at y[{}]: {} vs {} "
                                    "(a legality bug)",
                                    k->id(), d.pr.shape(), i, y[i], ty[i])};
}

void Nf4Family::run(const Kernel& k, const Weights& w, Case& d, cpu::ThreadPool* pool) {
  k->run(w, d.x.data(), d.y.data(), pool);
}

double Nf4Family::bytes_moved(const Case& d) { return double(d.pw.bytes()) + 4.0 * double(d.x.size() + d.y.size()); }

template class FamilyEvaluator<Nf4Family>;
template GateResult heldout_gate_of<Nf4Family>(const Nf4EvalConfig&, const std::vector<Shape>&, const Genome&,
                                               const Genome&, int);

GateResult heldout_gate(const Nf4EvalConfig& cfg, const std::vector<Shape>& heldout, const Genome& winner,
                        const Genome& baseline, int rounds) {
  return heldout_gate_of<Nf4Family>(cfg, heldout, winner, baseline, rounds);
}

}  // namespace genesis::evolve
