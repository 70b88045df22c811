// Products with the non-expert matrices (Dense), whatever family holds them: the activations are prepared once per
// product (kernels/linear.h) and the rows split over the thread pool in contiguous ranges, so each thread streams its
// own part of the matrix. Results are fp32.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "runtime/model/profile.h"
#include "runtime/model/stages.h"
#include "runtime/model/weights.h"

namespace genesis::cpu {
class ThreadPool;
}

namespace genesis::runtime {


// y[n, d.rows] = x[n, d.cols] d^T + bias. pool may be null.
void dense_product(const Dense& d, const float* x, float* y, int64_t n, cpu::ThreadPool* pool);

// Several matrices over the same x (q, k and v; gate and up): the same results as one dense_product each, in one
// parallel region over all their rows, with x prepared once per activation kind.
struct DenseJob {
  const Dense* d;
  float* y;
};
void dense_products(std::span<const DenseJob> jobs, const float* x, int64_t n, cpu::ThreadPool* pool);

// A SwiGLU MLP's first half: g = x gate^T, u = x up^T, then g <- silu(g) * u, for n rows (g and u [n, rows]). The
// same bits as dense_products over both then swiglu() per row (from kGemmRows rows, up to sgemm's summation order over
// other row ranges), in one parallel region: each task runs matching row
// ranges of gate and up and applies SwiGLU to its range (no region of its own for it: on 16 threads a region costs
// more than 8 rows of it), each task adding the biases of its rows first. Matrices of different shapes: an error.
void dense_swiglu(const Dense& gate, const Dense& up, const float* x, float* g, float* u, int64_t n,
                  cpu::ThreadPool* pool);

// A few-row product (n < kernels::kGemmRows rows of x, a pool of several threads) as stages of one region
// (stages.h): dense_products' or dense_swiglu's results, bit for bit, biases included, with x read only when the
// stages run, so that x may be the output of an earlier stage of the same region:
//   shape()        each activation kind's Linear::prepare_shape (prepare() whole for one row of x): on one thread
//                  before the region, or as the earlier stage's after();
//   add_to(st, op) a stage converting x's rows (one per task and activation kind, Linear::prepare_rows; none for one
//                  row), then the stage of the row ranges.
// Made on the calling thread (the activation containers are its, as dense_products' are); not copied or moved (the
// stages hold its address). DenseStages of one activation kind share one container (the caller's for that kind): a
// later one's shape() must come after the earlier one's row ranges are done (as the after() of that stage or of a
// later one), never beside them. n from 1 to kernels::kGemmRows - 1 (more: an error).
class DenseStage {
 public:
  DenseStage(std::span<const DenseJob> jobs, const float* x, int64_t n, int threads);
  // dense_swiglu's: g <- silu(x gate^T) * (x up^T), u = x up^T
  DenseStage(const Dense& gate, const Dense& up, const float* x, float* g, float* u, int64_t n, int threads);
  DenseStage(const DenseStage&) = delete;
  DenseStage& operator=(const DenseStage&) = delete;

  void shape();
  void add_to(Stages& st, Op op);
  template <class A>
  void add_to(Stages& st, Op op, A& after) {  // after() once the last row range is done
    if (n_ >= 2) st.add(op, int64_t(kinds_.size()) * n_, prep_fn_);
    st.add(op, int64_t(tasks_.size()), run_fn_, after);
  }
  void prep(int64_t k);  // row k % n of activation kind k / n
  void run(int64_t k);   // task k's row range

 private:
  struct Task {
    int32_t job;  // -1: both matrices of dense_swiglu's, then SwiGLU
    int64_t r0, r1;
  };
  struct PrepFn {
    DenseStage* s;
    void operator()(int64_t k) const { s->prep(k); }
  };
  struct RunFn {
    DenseStage* s;
    void operator()(int64_t k) const { s->run(k); }
  };
  void add_kinds();

  std::vector<DenseJob> jobs_;
  std::vector<kernels::LinearActivations*> acts_;  // [jobs]
  std::vector<std::pair<const kernels::Linear*, kernels::LinearActivations*>> kinds_;
  std::vector<char> split_;  // [kinds]: prepare_shape asked for the rows
  std::vector<Task> tasks_;
  const float* x_;
  int64_t n_;
  const Dense *gate_ = nullptr, *up_ = nullptr;  // dense_swiglu's
  PrepFn prep_fn_{this};
  RunFn run_fn_{this};
};

}  // namespace genesis::runtime
