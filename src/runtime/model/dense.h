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

}  // namespace genesis::runtime
