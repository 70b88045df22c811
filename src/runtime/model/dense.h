// Products with the non-expert matrices (Dense), whatever family holds them: the activations are prepared once per
// product (kernels/linear.h) and the rows split over the thread pool in contiguous ranges, so each thread streams its
// own part of the matrix. Results are fp32.
#pragma once

#include <cstdint>
#include <span>

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

}  // namespace genesis::runtime
