// Mutation operators, crossover, descriptors and the operator bandit (mutate.h).
#include "evolve/mutate.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "common/error.h"

namespace genesis::evolve {

using kernels::nf4_gemv::Hint;
using kernels::nf4_gemv::HintKind;
using kernels::nf4_gemv::Path;
using kernels::nf4_gemv::Stream;

namespace {
constexpr int kTries = 24;
constexpr const char* kOpNames[] = {"swap_near", "swap_far", "move_block", "hint_insert",
                                    "hint_delete", "hint_replace", "replace",   "param"};
static_assert(std::size(kOpNames) == size_t(kOpCount));

bool is_identity(const std::vector<uint16_t>& o) {
  for (size_t i = 0; i < o.size(); ++i)
    if (o[i] != i) return false;
  return true;
}

// Canonical form: identity order stored as empty, hints sorted, so equal kernels hash equal.
void normalize(Genome& g) {
  if (is_identity(g.order)) g.order.clear();
  std::stable_sort(g.hints.begin(), g.hints.end(), [](const Hint& a, const Hint& b) {
    return std::tie(a.pos, a.kind, a.stream, a.offset) < std::tie(b.pos, b.kind, b.stream, b.offset);
  });
}

}  // namespace

bool same_params(const Genome& a, const Genome& b) {
  return a.path == b.path && a.row_groups == b.row_groups && a.accs == b.accs && a.unroll == b.unroll &&
         a.pf_dist == b.pf_dist && a.pf_kind == b.pf_kind && a.bcast_reg == b.bcast_reg &&
         a.lut_permb == b.lut_permb && a.loop_align == b.loop_align;
}

const char* op_name(Op op) { return kOpNames[int(op)]; }

std::vector<uint16_t> order_of(const std::vector<uint16_t>& order, size_t n) {
  if (!order.empty()) return order;
  std::vector<uint16_t> o(n);
  std::iota(o.begin(), o.end(), uint16_t(0));
  return o;
}

std::vector<uint16_t> order_of(const Genome& g, size_t n) { return order_of(g.order, n); }

bool BodyModel::legal(std::span<const uint16_t> order, std::string* why) const {
  const size_t n = size();
  if (order.empty()) return true;
  if (order.size() != n) {
    if (why) *why = fmt::format("order has {} entries, the body {}", order.size(), n);
    return false;
  }
  std::vector<int> pos(n, -1);
  for (size_t p = 0; p < n; ++p) {
    if (order[p] >= n || pos[order[p]] >= 0) {
      if (why) *why = "order is not a permutation";
      return false;
    }
    pos[order[p]] = int(p);
  }
  for (size_t i = 0; i < n; ++i)
    for (auto p : preds[i])
      if (pos[p] > pos[i]) {
        if (why)
          *why = fmt::format("instruction {} ({}) moved before {} ({}) which it depends on", i,
                             i < text.size() ? text[i] : "?", p, p < text.size() ? text[p] : "?");
        return false;
      }
  return true;
}

double BodyModel::load_to_use(std::span<const uint16_t> order) const {
  const size_t n = size();
  std::vector<int> pos(n);
  for (size_t p = 0; p < n; ++p) pos[order.empty() ? p : order[p]] = int(p);
  std::vector<int> first_use(n, int(n) + 1);
  for (size_t j = 0; j < n; ++j)
    for (auto p : preds[j])
      if (is_load[p]) first_use[p] = std::min(first_use[p], pos[j] - pos[p]);
  double sum = 0;
  int count = 0;
  for (size_t i = 0; i < n; ++i)
    if (is_load[i] && first_use[i] <= int(n)) {
      sum += first_use[i];
      ++count;
    }
  return count ? sum / count : 0;
}

ParamSpace param_space(Path p) {
  ParamSpace s;
  switch (p) {
    case Path::scalar:
    case Path::avx2:
      s.row_groups = {1, 2, 4};
      s.accs = {1, 2, 4};
      s.unroll = {0};
      s.pf_dist = {0};
      s.loop_align = {0};
      s.bcast = false;
      s.max_hints = 0;
      break;
    case Path::avx512_fp32:
    case Path::avx512_bf16:
      s.unroll = {2, 4, 8, 16};
      break;
    case Path::avx512_vnni:
      s.unroll = {0, 1, 2, 4};
      break;
    case Path::avx2_int8:
    case Path::avx2_vnni:  // activations always broadcast into registers (no {1to8} in VEX)
      s.unroll = {0, 1, 2, 4};
      s.bcast = false;
      break;
  }
  return s;
}

OpBandit::OpBandit() { q_.fill(0.5); }

std::array<double, kOpCount> OpBandit::probabilities() const {
  constexpr double kFloor = 0.04;
  std::array<double, kOpCount> p{};
  const double sum = std::accumulate(q_.begin(), q_.end(), 0.0);
  for (int i = 0; i < kOpCount; ++i)
    p[i] = kFloor + (1 - kFloor * kOpCount) * (sum > 1e-12 ? q_[i] / sum : 1.0 / kOpCount);
  return p;
}

Op OpBandit::pick(Rng& rng) const {
  auto p = probabilities();
  double u = rng.uniform(), acc = 0;
  for (int i = 0; i < kOpCount; ++i) {
    acc += p[i];
    if (u < acc) return Op(i);
  }
  return Op(kOpCount - 1);
}

void OpBandit::reward(Op op, bool improved) {
  constexpr double kRate = 0.05;
  auto& q = q_[int(op)];
  q += kRate * ((improved ? 1.0 : 0.0) - q);
  // Keep every operator alive: a long run of failures must not silence one for good.
  q = std::max(q, 0.02);
}

std::optional<Genome> Mutator::mutate(const Genome& parent, Op op, Rng& rng, std::string* why) const {
  switch (op) {
    case Op::swap_near:
    case Op::swap_far:
    case Op::move_block:
      return reorder(parent, op, rng, why);
    case Op::hint_insert:
    case Op::hint_delete:
    case Op::hint_replace:
      return hint_op(parent, op, rng, why);
    case Op::replace:
      return replace_op(parent, rng, why);
    case Op::param:
      return param_op(parent, rng, why);
    case Op::count_:
      break;
  }
  return std::nullopt;
}

std::optional<std::vector<uint16_t>> reorder_order(const BodyModel& body, const std::vector<uint16_t>& base, Op op,
                                                   Rng& rng, std::string* why) {
  const int n = int(body.size());
  if (n < 2) {
    if (why) *why = "body too small to reorder";
    return std::nullopt;
  }
  for (int t = 0; t < kTries; ++t) {
    auto o = base;
    if (op == Op::swap_near) {
      int a = rng.below(n - 1), b = std::min(n - 1, a + rng.range(1, 3));
      std::swap(o[a], o[b]);
    } else if (op == Op::swap_far) {
      int a = rng.below(n), b = rng.below(n);
      if (a == b) continue;
      std::swap(o[a], o[b]);
    } else {
      int len = std::min(n - 1, rng.range(2, 6));
      int a = rng.below(n - len + 1);
      std::vector<uint16_t> block(o.begin() + a, o.begin() + a + len);
      o.erase(o.begin() + a, o.begin() + a + len);
      int c = rng.below(int(o.size()) + 1);
      if (c == a) continue;
      o.insert(o.begin() + c, block.begin(), block.end());
    }
    if (o == base) continue;
    if (!body.legal(o, why)) continue;
    return o;
  }
  return std::nullopt;
}

std::vector<uint16_t> merge_orders(const std::vector<uint16_t>& oa, const std::vector<uint16_t>& ob, Rng& rng) {
  const size_t n = oa.size();
  std::vector<bool> done(n, false);
  std::vector<uint16_t> out;
  size_t ia = 0, ib = 0;
  while (out.size() < n) {
    while (ia < n && done[oa[ia]]) ++ia;
    while (ib < n && done[ob[ib]]) ++ib;
    const uint16_t next = rng.chance(0.5) ? oa[ia] : ob[ib];
    done[next] = true;
    out.push_back(next);
  }
  return out;
}

std::optional<Genome> Mutator::reorder(const Genome& parent, Op op, Rng& rng, std::string* why) const {
  if (!kernels::nf4_gemv::path_is_jit(parent.path)) {
    if (why) *why = "compiled path: no instruction order";
    return std::nullopt;
  }
  const BodyModel body = body_(parent);
  auto o = reorder_order(body, order_of(parent, body.size()), op, rng, why);
  if (!o) return std::nullopt;
  Genome g = parent;
  g.order = std::move(*o);
  normalize(g);
  return g;
}

Hint Mutator::random_hint(size_t body_size, Rng& rng) const {
  Hint h;
  h.pos = rng.range(0, int(body_size));
  if (rng.chance(0.2)) {
    h.kind = HintKind::nop;
    h.stream = Stream::weights;
    h.offset = rng.range(1, 15);
    return h;
  }
  h.kind = HintKind(rng.below(4));
  const double u = rng.uniform();
  h.stream = u < 0.7 ? Stream::weights : u < 0.9 ? Stream::scales : Stream::activations;
  h.offset = 64 * (h.stream == Stream::weights ? rng.range(1, 32) : rng.range(1, 8));
  return h;
}

std::optional<Genome> Mutator::hint_op(const Genome& parent, Op op, Rng& rng, std::string* why) const {
  if (!kernels::nf4_gemv::path_is_jit(parent.path) || space_.max_hints == 0) {
    if (why) *why = "path takes no hints";
    return std::nullopt;
  }
  const size_t n = body_(parent).size();
  Genome g = parent;
  if (op == Op::hint_insert) {
    if (int(g.hints.size()) >= space_.max_hints) {
      if (why) *why = "hint limit reached";
      return std::nullopt;
    }
    g.hints.push_back(random_hint(n, rng));
  } else if (op == Op::hint_delete) {
    if (g.hints.empty()) {
      if (why) *why = "no hint to delete";
      return std::nullopt;
    }
    g.hints.erase(g.hints.begin() + rng.below(int(g.hints.size())));
  } else {
    if (g.hints.empty()) {
      if (why) *why = "no hint to replace";
      return std::nullopt;
    }
    Hint& h = g.hints[size_t(rng.below(int(g.hints.size())))];
    const int what = rng.below(3);
    if (what == 0) {  // same class: another locality, or another NOP length
      if (h.kind == HintKind::nop) {
        h.offset = 1 + (h.offset - 1 + rng.range(1, 14)) % 15;
      } else {
        h.kind = HintKind((int(h.kind) + rng.range(1, 3)) % 4);
      }
    } else if (what == 1 && h.kind != HintKind::nop) {
      h.offset = std::clamp(h.offset + 64 * (rng.chance(0.5) ? 1 : -1) * rng.range(1, 4), 64, 4096);
    } else {
      h.pos = std::clamp(h.pos + (rng.chance(0.5) ? 1 : -1) * rng.range(1, 3), 0, int(n));
    }
  }
  normalize(g);
  if (g == parent) {
    if (why) *why = "hint change made no difference";
    return std::nullopt;
  }
  return g;
}

std::optional<Genome> Mutator::replace_op(const Genome& parent, Rng& rng, std::string* why) const {
  if (!kernels::nf4_gemv::path_is_jit(parent.path)) {
    if (why) *why = "compiled path: no instructions to replace";
    return std::nullopt;
  }
  const BodyModel body = body_(parent);
  std::vector<uint16_t> can;
  for (size_t i = 0; i < body.has_alt.size(); ++i)
    if (body.has_alt[i]) can.push_back(uint16_t(i));
  if (can.empty()) {
    if (why) *why = "no instruction of this body has a same-class equivalent";
    return std::nullopt;
  }
  // Same registers read and written as the original: every order stays legal.
  Genome g = parent;
  const uint16_t i = rng.pick(can);
  auto it = std::lower_bound(g.alt.begin(), g.alt.end(), i);
  if (it != g.alt.end() && *it == i) {
    g.alt.erase(it);
  } else {
    g.alt.insert(it, i);
  }
  return g;
}

std::optional<Genome> Mutator::param_op(const Genome& parent, Rng& rng, std::string* why) const {
  for (int t = 0; t < kTries; ++t) {
    Genome g = parent;
    auto other = [&](const std::vector<int>& vals, int cur) -> std::optional<int> {
      std::vector<int> c;
      for (int v : vals)
        if (v != cur) c.push_back(v);
      if (c.empty()) return std::nullopt;
      return rng.pick(c);
    };
    std::optional<int> v;
    switch (rng.below(8)) {
      case 0:
        if ((v = other(space_.row_groups, g.row_groups))) g.row_groups = *v;
        break;
      case 1:
        if ((v = other(space_.accs, g.accs))) g.accs = *v;
        break;
      case 2:
        if ((v = other(space_.unroll, g.unroll))) g.unroll = *v;
        break;
      case 3:
        if ((v = other(space_.pf_dist, g.pf_dist))) g.pf_dist = *v;
        break;
      case 4:
        if (g.pf_dist > 0) {
          g.pf_kind = HintKind((int(g.pf_kind) + rng.range(1, 3)) % 4);
          v = 1;
        }
        break;
      case 5:
        if (space_.bcast) {
          g.bcast_reg = !g.bcast_reg;
          v = 1;
        }
        break;
      case 6:
        if ((v = other(space_.loop_align, g.loop_align))) g.loop_align = *v;
        break;
      case 7:
        if (space_.lut_permb) {
          g.lut_permb = !g.lut_permb;
          v = 1;
        }
        break;
    }
    if (!v) continue;
    BodyModel nb;
    try {
      g.validate();
      nb = body_(g);
    } catch (const Error& e) {
      if (why) *why = e.what();
      continue;
    }
    if (kernels::nf4_gemv::path_is_jit(g.path)) {
      const BodyModel pb = body_(parent);
      if (nb.text != pb.text) {
        // A new body: the old permutation means nothing there. Hints carry no state, so they keep their relative
        // place in the loop.
        g.order.clear();
        g.alt.clear();
        for (auto& h : g.hints)
          h.pos = pb.size() ? int(int64_t(h.pos) * int64_t(nb.size()) / int64_t(pb.size())) : 0;
      }
    }
    normalize(g);
    return g;
  }
  if (why && why->empty()) *why = "no other parameter value";
  return std::nullopt;
}

std::optional<Genome> Mutator::crossover(const Genome& a, const Genome& b, Rng& rng) const {
  if (!same_params(a, b) || a.fault != b.fault) return std::nullopt;
  const BodyModel body = body_(a);
  const size_t n = body.size();
  Genome g = a;
  g.order = merge_orders(order_of(a, n), order_of(b, n), rng);
  g.hints.clear();
  for (const auto* src : {&a.hints, &b.hints})
    for (const auto& h : *src)
      if (rng.chance(0.5) && int(g.hints.size()) < space_.max_hints &&
          std::find(g.hints.begin(), g.hints.end(), h) == g.hints.end())
        g.hints.push_back(h);
  // Both parents keep every dependency, so the merge does too; checked anyway since a failure is a bug.
  std::string why;
  if (!body.legal(g.order, &why)) fail("crossover produced an illegal order: {}", why);
  normalize(g);
  return g;
}

std::array<int, 3> Mutator::descriptors(const Genome& g) const {
  int pf = 0;
  for (const auto& h : g.hints)
    if (h.kind != HintKind::nop) ++pf;
  int l2u = 0;
  if (kernels::nf4_gemv::path_is_jit(g.path)) {
    const BodyModel body = body_(g);
    l2u = std::min(7, int(body.load_to_use(g.order)));
  }
  return {std::min(pf, 3), g.accs, l2u};
}

}  // namespace genesis::evolve
