// The one-plus-one and map-elites loops (search.h).
#include "evolve/search.h"

#include <map>
#include <unordered_map>

#include "common/error.h"
#include "common/util.h"
#include "evolve/kq_family.h"

namespace genesis::evolve {

const char* strategy_name(Strategy s) { return s == Strategy::one_plus_one ? "one-plus-one" : "map-elites"; }

std::optional<Strategy> parse_strategy(std::string_view name) {
  if (name == "one-plus-one") return Strategy::one_plus_one;
  if (name == "map-elites") return Strategy::map_elites;
  return std::nullopt;
}

namespace {

template <class G>
struct Elite {
  G genome;
  double fitness = 0;
};

// G: a family's genome; M: its mutator (mutate, crossover, descriptors); same_params(G, G) by overload.
template <class G, class M>
class Searcher {
 public:
  Searcher(const M& m, EvaluatorOf<G>& ev, const SearchOptionsOf<G>& opt) : m_(m), ev_(ev), opt_(opt), rng_(opt.seed) {}

  SearchResultOf<G> run(const G& start) {
    if (opt_.max_evals <= 0 && opt_.max_seconds <= 0) fail("search: a budget of zero (no evaluations, no time)");
    t0_ = now_seconds();
    best_ = {start, opt_.start_fitness.value_or(0.0)};  // the start is its own incumbent
    auto base = evaluate(start, "baseline");
    if (!base || base->verdict != Verdict::ok)
      fail("search: the starting genome {} failed: {}", start.serialize(),
           base ? base->diagnostics : std::string("duplicate"));
    const double start_fit = opt_.start_fitness.value_or(base->fitness);
    best_ = {start, start_fit};
    res_.best = start;
    res_.best_fitness = start_fit;
    archive_insert(start, start_fit);
    for (const auto& s : opt_.seeds) {
      if (out_of_budget()) break;
      auto o = evaluate(s, "seed");
      if (o && o->verdict == Verdict::ok) {
        archive_insert(s, o->fitness);
        if (o->promoted) set_best(s, o->fitness);
      }
    }
    int64_t failures_in_row = 0;
    while (!out_of_budget()) {
      if (failures_in_row > 20000) {
        res_.stop_reason = "no new legal genome found in 20000 proposals (space exhausted)";
        break;
      }
      if (step()) {
        failures_in_row = 0;
      } else {
        ++failures_in_row;
      }
    }
    if (res_.stop_reason.empty())
      res_.stop_reason = (opt_.max_evals > 0 && res_.evaluations >= opt_.max_evals) ? "evaluation budget" : "time budget";
    res_.best = best_.genome;
    res_.best_fitness = best_.fitness;
    res_.archive_cells = int64_t(archive_.size());
    res_.op_weights = bandit_.probabilities();
    return std::move(res_);
  }

 private:
  bool out_of_budget() const {
    if (opt_.max_evals > 0 && res_.evaluations >= opt_.max_evals) return true;
    if (opt_.max_seconds > 0 && now_seconds() - t0_ >= opt_.max_seconds) return true;
    return false;
  }

  // One proposal; true if it led to an evaluation.
  bool step() {
    G parent;
    double parent_fit = 0;
    std::optional<G> child;
    std::string origin;
    std::optional<Op> op;
    if (opt_.strategy == Strategy::one_plus_one) {
      parent = best_.genome;
      parent_fit = best_.fitness;
    } else if (since_improvement_ >= opt_.stagnation && archive_.size() > 0) {
      // Restart: leave the basin with a few random moves from an elite.
      since_improvement_ = 0;
      ++res_.restarts;
      G g = random_elite().genome;
      for (int i = 0; i < opt_.kick; ++i)
        if (auto k = m_.mutate(g, bandit_.pick(rng_), rng_)) g = *k;
      child = g;
      origin = "restart";
      parent_fit = 0;
    } else if (archive_.size() >= 2 && rng_.chance(opt_.crossover_rate)) {
      const Elite<G>& a = random_elite();
      std::vector<const Elite<G>*> mates;
      for (const auto& [k, e] : archive_)
        if (!(e.genome == a.genome) && same_params(e.genome, a.genome) && e.genome.fault == a.genome.fault)
          mates.push_back(&e);
      if (!mates.empty()) {
        const Elite<G>* b = rng_.pick(mates);
        child = m_.crossover(a.genome, b->genome, rng_);
        parent_fit = std::max(a.fitness, b->fitness);
        origin = "crossover";
        ++res_.crossovers;
      }
    }
    if (!child) {
      if (opt_.strategy == Strategy::map_elites) {
        const Elite<G>& e = rng_.chance(0.5) ? best_ : random_elite();
        parent = e.genome;
        parent_fit = e.fitness;
      }
      op = bandit_.pick(rng_);
      auto& st = res_.ops[int(*op)];
      ++st.proposed;
      child = m_.mutate(parent, *op, rng_);
      if (!child) {
        bandit_.reward(*op, false);
        return false;
      }
      ++st.legal;
      origin = op_name(*op);
    }
    auto o = evaluate(*child, origin);
    if (!o) {
      if (op) bandit_.reward(*op, false);
      return false;
    }
    bool improved = false;
    if (o->verdict == Verdict::ok) {
      if (op) ++res_.ops[int(*op)].correct;
      const bool cell_better = archive_insert(*child, o->fitness);
      if (o->promoted) set_best(*child, o->fitness);
      improved = o->promoted || (opt_.strategy == Strategy::map_elites && cell_better && o->fitness > parent_fit);
    }
    if (op) {
      if (improved) ++res_.ops[int(*op)].improved;
      bandit_.reward(*op, improved);
    }
    since_improvement_ = improved ? 0 : since_improvement_ + 1;
    return true;
  }

  const Elite<G>& random_elite() {
    int i = rng_.below(int(archive_.size()));
    auto it = archive_.begin();
    std::advance(it, i);
    return it->second;
  }

  // true if the genome took an empty cell or beat the cell's occupant.
  bool archive_insert(const G& g, double fitness) {
    if (opt_.strategy != Strategy::map_elites) return false;
    auto key = m_.descriptors(g);
    auto it = archive_.find(key);
    if (it == archive_.end()) {
      archive_.emplace(key, Elite<G>{g, fitness});
      return true;
    }
    if (fitness > it->second.fitness) {
      it->second = Elite<G>{g, fitness};
      return true;
    }
    return false;
  }

  void set_best(const G& g, double fitness) { best_ = {g, fitness}; }

  // nullopt for a duplicate (already evaluated in this run).
  std::optional<Outcome> evaluate(const G& g, const std::string& origin) {
    const uint64_t h = g.hash();
    if (seen_.count(h)) {
      ++res_.duplicates;
      return std::nullopt;
    }
    seen_.emplace(h, true);
    const int64_t index = res_.evaluations;
    Outcome o = ev_.evaluate(g, index, best_.genome, best_.fitness);
    ++res_.evaluations;
    ++res_.verdicts[int(o.verdict)];
    TraceItem t;
    t.index = index;
    t.origin = origin;
    t.genome_hash = hex64(h);
    t.verdict = o.verdict;
    t.fitness = o.fitness;
    t.promoted = o.promoted;
    t.reused = o.reused;
    t.best_fitness = index == 0 ? opt_.start_fitness.value_or(o.fitness)
                              : (o.promoted && o.fitness > best_.fitness ? o.fitness : best_.fitness);
    res_.trace.push_back(t);
    if (opt_.on_progress) {
      Progress p;
      p.evaluations = res_.evaluations;
      p.duplicates = res_.duplicates;
      p.restarts = res_.restarts;
      p.best_fitness = t.best_fitness;
      p.verdicts = res_.verdicts;
      p.elapsed_s = now_seconds() - t0_;
      opt_.on_progress(p);
    }
    return o;
  }

  const M& m_;
  EvaluatorOf<G>& ev_;
  const SearchOptionsOf<G>& opt_;
  Rng rng_;
  OpBandit bandit_;
  SearchResultOf<G> res_;
  Elite<G> best_;
  std::map<std::array<int, 3>, Elite<G>> archive_;
  std::unordered_map<uint64_t, bool> seen_;
  int64_t since_improvement_ = 0;
  double t0_ = 0;
};

}  // namespace

SearchResult search(const Genome& start, const Mutator& mutator, Evaluator& evaluator, const SearchOptions& opt) {
  Searcher<Genome, Mutator> s(mutator, evaluator, opt);
  return s.run(start);
}

SearchResultOf<KqGenome> search(const KqGenome& start, const KqMutator& mutator, EvaluatorOf<KqGenome>& evaluator,
                                const SearchOptionsOf<KqGenome>& opt) {
  Searcher<KqGenome, KqMutator> s(mutator, evaluator, opt);
  return s.run(start);
}

}  // namespace genesis::evolve
