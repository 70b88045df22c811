// Products with the non-expert matrices (Dense): fp32 through OpenBLAS, bf16 widened to fp32 in registers (AVX-512,
// AVX2, or portable C++) with the rows split over the thread pool. Results are fp32 either way.
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
// parallel region over all their rows when they are held alike (int8 blocks or bf16) and x has few rows (decode),
// with x converted once; else one product after the other.
struct DenseJob {
  const Dense* d;
  float* y;
};
void dense_products(std::span<const DenseJob> jobs, const float* x, int64_t n, cpu::ThreadPool* pool);

}  // namespace genesis::runtime
