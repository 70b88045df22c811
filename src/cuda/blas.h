// cuBLAS, loaded at run time (dlopen) the first time a product needs it: the binary then starts, and runs CPU-only or
// with --gpu's other parts, on machines without libcublas. Used for the prefill's expert products (bf16 tensor-core
// GEMMs per expert); nothing else depends on it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace genesis::cuda {

class Blas {
 public:
  // The process's cuBLAS bound to the current device, or null with `why` set (library or symbol missing, init error).
  static Blas* get(std::string* why);
  // y[t * ldy + r] = sum_k W[r, k] x[t, k] for t < n, r < rows: W bf16 [rows][cols], x bf16 [n][cols], y fp32.
  // Queued on s. Throws genesis::Error with cuBLAS's status.
  void gemm_bf16(const uint16_t* W, int64_t rows, int64_t cols, const uint16_t* x, int64_t n, float* y, int64_t ldy,
                 cudaStream_t s);

 private:
  Blas() = default;
  void* handle_ = nullptr;
  void* lib_ = nullptr;
  int (*set_stream_)(void*, cudaStream_t) = nullptr;
  void* gemm_ex_ = nullptr;
};

}  // namespace genesis::cuda
