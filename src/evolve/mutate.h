// Mutation operators over a family's Genome, each legal by construction: reorders are checked against the loop
// body's def/use graph, hints change no architectural state, parameter moves are checked by the family's make_conf.
// Also the map-elites descriptors and order-preserving crossover. Nothing here runs or times code.
#pragma once

#include <array>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "evolve/rng.h"
#include "kernels/nf4_gemv/genome.h"

namespace genesis::evolve {

using kernels::nf4_gemv::Genome;

// The hot loop body as the operators see it: for each canonical instruction, the instructions that must precede it
// (read-after-write, write-after-read, write-after-write), a same-class id, whether it loads, and its text.
struct BodyModel {
  std::vector<std::vector<uint16_t>> preds;
  std::vector<int> cls;
  std::vector<bool> is_load;
  std::vector<bool> has_alt;  // the family offers a same-class equivalent (Genome::alt may flip it)
  std::vector<std::string> text;

  size_t size() const { return preds.size(); }
  // true if `order` (a permutation of 0..size-1, or empty = canonical) keeps every dependency.
  bool legal(std::span<const uint16_t> order, std::string* why = nullptr) const;
  // Mean distance (in instructions) from each load to its first consumer, under `order`.
  double load_to_use(std::span<const uint16_t> order) const;
};

// The body a genome's parameter genes give (order and hints ignored); throws genesis::Error when the parameter genes
// are invalid for the problem. Supplied by the family (nf4: conf.h + jit def_use) or by a synthetic test.
using BodyFn = std::function<BodyModel(const Genome&)>;

enum class Op : uint8_t {
  swap_near,    // swap two instructions at most 3 apart
  swap_far,     // swap two instructions anywhere
  move_block,   // move a run of 2..6 instructions elsewhere
  hint_insert,  // insert a prefetch (t0/t1/t2/nta, stream, offset) or a multi-byte NOP
  hint_delete,
  hint_replace,  // same-class replacement: another prefetch locality / NOP length, or a nudged offset / position
  replace,       // flip a body instruction to / from its same-class equivalent (Genome::alt)
  param,         // rows per tile, accumulators, unroll, prefetch distance/kind, broadcast, loop alignment
  count_
};
inline constexpr int kOpCount = int(Op::count_);
const char* op_name(Op op);

struct OpStats {
  int64_t proposed = 0, legal = 0, correct = 0, improved = 0;
};

// Parameter gene values a search may visit for one path; the family's make_conf has the last word.
struct ParamSpace {
  std::vector<int> row_groups{1, 2, 4};
  std::vector<int> accs{1, 2, 4};
  std::vector<int> unroll{0};
  std::vector<int> pf_dist{0, 256, 512, 1024, 2048};
  std::vector<int> loop_align{0, 16, 32, 64};
  bool bcast = true;
  bool lut_permb = false;  // int8 path on a CPU with AVX512-VBMI
  int max_hints = 8;
};
ParamSpace param_space(kernels::nf4_gemv::Path p);

// Bandit over operators: probability matching with a floor, rewarded when an operator's child improves on its
// parent. Deterministic given the Rng.
class OpBandit {
 public:
  OpBandit();
  Op pick(Rng& rng) const;
  void reward(Op op, bool improved);
  std::array<double, kOpCount> probabilities() const;

 private:
  std::array<double, kOpCount> q_{};
};

class Mutator {
 public:
  Mutator(BodyFn body, ParamSpace space) : body_(std::move(body)), space_(std::move(space)) {}
  // A legal child of `parent` by operator `op`, or nullopt when none was found in a few tries (for instance a
  // body where nothing can move, or a parameter value the family refuses). `why` gets the last rejection.
  std::optional<Genome> mutate(const Genome& parent, Op op, Rng& rng, std::string* why = nullptr) const;
  // Precedence-preserving crossover of two genomes with the same parameter genes: each next instruction is the
  // first unscheduled one of a randomly chosen parent, which keeps every dependency both parents keep; hints are
  // taken from either parent. nullopt if the parents' bodies differ.
  std::optional<Genome> crossover(const Genome& a, const Genome& b, Rng& rng) const;
  // Cheap descriptors for the map-elites archive: prefetch hints (0..3+), accumulators, load-to-use bucket.
  std::array<int, 3> descriptors(const Genome& g) const;
  BodyModel body(const Genome& g) const { return body_(g); }
  const ParamSpace& space() const { return space_; }

 private:
  std::optional<Genome> reorder(const Genome& parent, Op op, Rng& rng, std::string* why) const;
  std::optional<Genome> hint_op(const Genome& parent, Op op, Rng& rng, std::string* why) const;
  std::optional<Genome> replace_op(const Genome& parent, Rng& rng, std::string* why) const;
  std::optional<Genome> param_op(const Genome& parent, Rng& rng, std::string* why) const;
  kernels::nf4_gemv::Hint random_hint(size_t body_size, Rng& rng) const;
  BodyFn body_;
  ParamSpace space_;
};

// true if the two genomes have the same parameter genes (hence the same loop body).
bool same_params(const Genome& a, const Genome& b);

// The permutation a genome applies (its order, or the identity when empty).
std::vector<uint16_t> order_of(const Genome& g, size_t body_size);
std::vector<uint16_t> order_of(const std::vector<uint16_t>& order, size_t body_size);

// The instruction-order gene's operators, shared by every family that has one: a legal permutation of `body` made
// from `base` by swap_near / swap_far / move_block, or nullopt after a few tries (`why` gets the last rejection).
std::optional<std::vector<uint16_t>> reorder_order(const BodyModel& body, const std::vector<uint16_t>& base, Op op,
                                                   Rng& rng, std::string* why);
// Precedence-preserving merge of two permutations of one body: each next instruction is the first unscheduled one of
// a randomly chosen parent, which keeps every dependency both parents keep.
std::vector<uint16_t> merge_orders(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b, Rng& rng);

}  // namespace genesis::evolve
