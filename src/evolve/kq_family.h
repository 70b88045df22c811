// The kq_gemv family inside the factory (the second adapter of family.h): its parameter space as data (genes with
// their choices), the instruction-order gene of the unit loop's body (def/use from jit/), a mutator for it, and the
// adapter: random GGUF blocks of one format with the fp64 reference and the family's error bound, static checks
// (make_conf, order legality for every pass's body), kernels on run_rows, the correctness gate (bound, and bit-exact
// to the canonical order for a reorder descendant). The knowledge base keys its records by family "kq_gemv" and path
// "<isa path>/<format>" ("avx512vnni/Q4_K"): a genome's order fits one format's body.
#pragma once

#include <array>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "evolve/family.h"
#include "evolve/mutate.h"
#include "kernels/kq_gemv/kq_gemv.h"

namespace genesis::cpu {
class ThreadPool;
}

namespace genesis::evolve {

using KqGenome = kernels::kq_gemv::Genome;

struct KqEvalConfig : EvalConfig {
  kernels::kq_gemv::Path path = kernels::kq_gemv::Path::avx512vnni;
  kernels::kq_gemv::Format format = kernels::kq_gemv::Format::q4_k;
};

// One parameter gene: its name in the genome's text and the values a search may visit (the genome's validate() has
// the last word).
struct GeneSpec {
  std::string name;
  std::vector<int> values;
};
// kq_gemv's genes for products of `tokens` activation rows: prefetch distance (pf) and kind (pfk: 0..3 = t0, t1, t2,
// nta), loop alignment, rows per call, the activation budget of a column chunk (xkb) and, when tokens > 1, rows per
// pass.
std::vector<GeneSpec> kq_param_space(int tokens);
int kq_gene(const KqGenome& g, const std::string& name);          // genesis::Error for an unknown gene
void set_kq_gene(KqGenome& g, const std::string& name, int value);

// The unit loop's body (canonical_body + def_use) of the widest pass a genome runs for `tokens` activation rows.
using KqBodyFn = std::function<BodyModel(const KqGenome&)>;
// The body of the path's kernels (scalar runs no generated code: its orders are checked against avx512vnni's body).
KqBodyFn kq_body_fn(kernels::kq_gemv::Format f, int tokens,
                    kernels::kq_gemv::Path path = kernels::kq_gemv::Path::avx512vnni);
// The activation rows of each pass a genome runs for `tokens` rows (the driver's balanced passes).
std::vector<int> kq_pass_rows(const KqGenome& g, int tokens,
                              kernels::kq_gemv::Path path = kernels::kq_gemv::Path::avx512vnni,
                              kernels::kq_gemv::Format f = kernels::kq_gemv::Format::q4_k);

bool same_params(const KqGenome& a, const KqGenome& b);  // every gene but the order

// Mutation operators on a kq_gemv genome: swap_near / swap_far / move_block on the order (legal by construction),
// param moves over kq_param_space(); the family has no hints and no same-class replacements (those operators
// propose nothing).
class KqMutator {
 public:
  // tokens: the activation rows of the searched product (an order fits one pass's body: when the passes differ in
  // rows, a genome keeps no order).
  // path / f: how run_rows splits the rows into passes (the AVX2 kernels take fewer rows per pass).
  KqMutator(KqBodyFn body, std::vector<GeneSpec> space, int tokens,
            kernels::kq_gemv::Path path = kernels::kq_gemv::Path::avx512vnni,
            kernels::kq_gemv::Format f = kernels::kq_gemv::Format::q4_k)
      : body_(std::move(body)), space_(std::move(space)), tokens_(tokens), path_(path), format_(f) {}
  std::optional<KqGenome> mutate(const KqGenome& parent, Op op, Rng& rng, std::string* why = nullptr) const;
  // Precedence-preserving merge of the two orders (same parameter genes), nullopt otherwise.
  std::optional<KqGenome> crossover(const KqGenome& a, const KqGenome& b, Rng& rng) const;
  // Map-elites descriptors: prefetch distance bucket (none, <= 2 KB, <= 8 KB, more), rows per call bucket
  // (<= 16, <= 64, more), load-to-use bucket.
  std::array<int, 3> descriptors(const KqGenome& g) const;
  BodyModel body(const KqGenome& g) const { return body_(g); }
  const std::vector<GeneSpec>& space() const { return space_; }

 private:
  bool order_fits(const KqGenome& g) const;  // every pass has the same rows (one body)
  KqBodyFn body_;
  std::vector<GeneSpec> space_;
  int tokens_;
  kernels::kq_gemv::Path path_;
  kernels::kq_gemv::Format format_;
};

SearchResultOf<KqGenome> search(const KqGenome& start, const KqMutator& mutator, EvaluatorOf<KqGenome>& evaluator,
                                const SearchOptionsOf<KqGenome>& opt);

// The adapter (family.h lists what an adapter supplies).
struct KqFamily {
  using Genome = KqGenome;
  using Config = KqEvalConfig;
  using Weights = kernels::kq_gemv::Matrix;
  struct Kernel {
    Genome genome;
    kernels::kq_gemv::Path path;
    bool allow_faults = false;
  };
  struct Case {
    std::vector<uint8_t> stored;  // the GGUF blocks (the reference reads them)
    Weights m;
    std::vector<float> x;
    kernels::kq_gemv::Activations a;
    std::vector<double> ref, bound;
    std::vector<float> y;
  };
  static constexpr const char* kName = "kq_gemv";
  static std::string kb_path(const Config& c);  // "avx512vnni/Q4_K"
  static Genome baseline(const Config&) { return Genome::baseline(); }
  static Case make_case(const Config& c, const Shape& s, uint64_t seed);
  static void static_check(const Config& c, const Case& d, const Genome& g);
  static Kernel build(const Config& c, const Case& d, const Genome& g);
  static void check(const Config& c, const Kernel& k, Case& d, const Genome& g, cpu::ThreadPool* pool);
  static const Weights& weights(const Case& d) { return d.m; }
  static Weights clone(const Weights& w) { return w; }
  static size_t bytes(const Weights& w) { return w.bytes(); }
  static void run(const Kernel& k, const Weights& w, Case& d, cpu::ThreadPool* pool);
  static double bytes_moved(const Case& d);
};

extern template class FamilyEvaluator<KqFamily>;
using KqEvaluator = FamilyEvaluator<KqFamily>;

GateResult heldout_gate(const KqEvalConfig& cfg, const std::vector<Shape>& heldout, const KqGenome& winner,
                        const KqGenome& baseline, int rounds);

}  // namespace genesis::evolve
