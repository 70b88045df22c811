// Dense products over the Linear seam; see dense.h.
#include "runtime/model/dense.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "cpu/thread_pool.h"

namespace genesis::runtime {

namespace {

// The calling thread's prepared activations, one container per activation kind, reused across products (no
// allocation per step). The workers read the caller's containers, never their own.
kernels::LinearActivations& activations_for(const kernels::Linear& l) {
  thread_local std::vector<std::pair<std::string, std::unique_ptr<kernels::LinearActivations>>> cache;
  const std::string_view kind = l.activation_kind();
  for (auto& [k, a] : cache)
    if (k == kind) return *a;
  cache.emplace_back(std::string(kind), l.new_activations());
  return *cache.back().second;
}

void add_bias(const Dense& d, float* y, int64_t n) {
  if (d.bias.empty()) return;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < d.rows; ++r) y[i * d.rows + r] += d.bias[size_t(r)];
}

// Rows per thread: an even share rounded up to a multiple of 16 (and of the matrix's row granule).
int64_t share(int64_t rows, int nt, int64_t granule) {
  const int64_t g = std::max<int64_t>(16, granule);
  return ((rows + nt - 1) / nt + g - 1) / g * g;
}

}  // namespace

void dense_product(const Dense& d, const float* x, float* y, int64_t n, cpu::ThreadPool* pool) {
  if (d.empty()) fail("dense_product: no matrix (an absent weight was multiplied)");
  kernels::LinearActivations& a = activations_for(*d.op);
  d.op->prepare(x, n, a);
  const int nt = pool ? pool->size() : 1;
  if (nt == 1 || d.rows < 64) {
    d.op->run_rows(a, y, 0, d.rows);
  } else {
    const int64_t per = share(d.rows, nt, d.op->row_granule());
    pool->run([&](int tid, int) {
      const int64_t r0 = std::min(d.rows, int64_t(tid) * per), r1 = std::min(d.rows, r0 + per);
      if (r0 < r1) d.op->run_rows(a, y, r0, r1);
    });
  }
  add_bias(d, y, n);
}

void dense_products(std::span<const DenseJob> jobs, const float* x, int64_t n, cpu::ThreadPool* pool) {
  if (jobs.empty()) return;
  if (!pool || pool->size() == 1) {
    for (const DenseJob& j : jobs) dense_product(*j.d, x, j.y, n, pool);
    return;
  }
  // x prepared once per activation kind; the jobs' activations in order.
  std::vector<kernels::LinearActivations*> acts;
  int64_t total = 0, granule = 1;
  for (const DenseJob& j : jobs) {
    if (j.d->empty()) fail("dense_products: no matrix (an absent weight was multiplied)");
    if (j.d->cols != jobs[0].d->cols)
      fail("dense_products: matrices over one x with {} and {} columns", jobs[0].d->cols, j.d->cols);
    kernels::LinearActivations* a = &activations_for(*j.d->op);
    if (std::find(acts.begin(), acts.end(), a) == acts.end()) j.d->op->prepare(x, n, *a);
    acts.push_back(a);
    total += j.d->rows;
    granule = std::max(granule, j.d->op->row_granule());
  }
  // Thread tid's rows [tid * per, (tid + 1) * per) of the matrices stacked, cut at each matrix's boundary. Every
  // matrix's row count is a multiple of its granule or the cut falls at its end, so each piece starts on a granule.
  const int nt = pool->size();
  const int64_t per = share(total, nt, granule);
  pool->run([&](int tid, int) {
    const int64_t g0 = int64_t(tid) * per, g1 = g0 + per;
    int64_t off = 0;
    for (size_t i = 0; i < jobs.size(); ++i) {
      const Dense& d = *jobs[i].d;
      const int64_t r0 = std::max(g0, off) - off, r1 = std::min(g1, off + d.rows) - off;
      if (r0 < r1) d.op->run_rows(*acts[i], jobs[i].y, r0, r1);
      off += d.rows;
    }
  });
  for (const DenseJob& j : jobs) add_bias(*j.d, j.y, n);
}

}  // namespace genesis::runtime
