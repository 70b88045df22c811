// The nf4_gemv family inside the factory: its loop body as the mutation operators see it, its parameter space, and
// its adapter to the generic evaluation pipeline (family.h): random NF4 inputs with the fp64 reference and the path's
// error bound, static checks (make_conf, order legality), kernels from get_kernel, the correctness gate (bound, and
// bit-exact to the canonical twin for reorder / hint / same-class descendants).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "evolve/family.h"
#include "kernels/nf4_gemv/nf4_gemv.h"

namespace genesis::cpu {
class ThreadPool;
}

namespace genesis::evolve {

struct Nf4EvalConfig : EvalConfig {
  kernels::nf4_gemv::Path path = kernels::nf4_gemv::Path::avx512_vnni;
  int blocksize = 64;
};

// The loop body of a genome for one problem (parameter genes only), from make_conf + canonical_body + def_use.
BodyFn nf4_body_fn(const kernels::nf4_gemv::Problem& problem);
// The parameter space for a path on this CPU.
ParamSpace nf4_param_space(kernels::nf4_gemv::Path p);

// The adapter (family.h lists what an adapter supplies).
struct Nf4Family {
  using Genome = kernels::nf4_gemv::Genome;
  using Config = Nf4EvalConfig;
  using Weights = kernels::nf4_gemv::PackedWeights;
  using Kernel = std::shared_ptr<const kernels::nf4_gemv::Kernel>;
  struct Case {
    kernels::nf4_gemv::Problem pr;
    quant::Nf4Matrix w;
    Weights pw;
    std::vector<float> x;
    std::vector<double> ref, bound;
    std::vector<float> y;
  };
  static constexpr const char* kName = "nf4_gemv";
  static std::string kb_path(const Config& c);
  static Genome baseline(const Config& c) { return Genome::baseline(c.path); }
  static Case make_case(const Config& c, const Shape& s, uint64_t seed);
  static void static_check(const Config& c, const Case& d, const Genome& g);
  static Kernel build(const Config& c, const Case& d, const Genome& g);
  static void check(const Config& c, const Kernel& k, Case& d, const Genome& g, cpu::ThreadPool* pool);
  static const Weights& weights(const Case& d) { return d.pw; }
  static Weights clone(const Weights& w) { return w.clone(); }
  static size_t bytes(const Weights& w) { return w.bytes(); }
  static void run(const Kernel& k, const Weights& w, Case& d, cpu::ThreadPool* pool);
  static double bytes_moved(const Case& d);
};

extern template class FamilyEvaluator<Nf4Family>;
using Nf4Evaluator = FamilyEvaluator<Nf4Family>;

GateResult heldout_gate(const Nf4EvalConfig& cfg, const std::vector<Shape>& heldout, const Genome& winner,
                        const Genome& baseline, int rounds);

}  // namespace genesis::evolve
