// cuBLAS, loaded at run time (dlopen) the first time a product needs it: the binary then starts, and runs CPU-only or
// with --gpu's other parts, on machines without libcublas. Used for the products of large steps (prefill chunks): the
// dense matrices and the experts (bf16 tensor-core GEMMs); decode-sized steps use the kernels of kernels.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace genesis::cuda {

class Blas {
 public:
  // The process's cuBLAS bound to the current device, or null with `why` set (library or symbol missing, init error).
  static Blas* get(std::string* why);
  // y[t * ldy + r] = sum_k W[r, k] x[t, k] for t < n, r < rows: W bf16 [rows][cols], x bf16 [n][cols], y fp32 (with
  // `accumulate` added to y). Queued on s. Throws genesis::Error with cuBLAS's status.
  void gemm_bf16(const uint16_t* W, int64_t rows, int64_t cols, const uint16_t* x, int64_t n, float* y, int64_t ldy,
                 cudaStream_t s, bool accumulate = false);
  // The same with W and x fp32 (fp32 arithmetic: CUBLAS_COMPUTE_32F, no TF32).
  void gemm_f32(const float* W, int64_t rows, int64_t cols, const float* x, int64_t n, float* y, int64_t ldy,
                cudaStream_t s);
  // `count` bf16 products at once (cuBLAS's strided batch): product i reads W + i * stride_w and x + i * stride_x
  // (n rows each) and writes y + i * stride_y (row stride ldy).
  void gemm_bf16_batched(const uint16_t* W, int64_t rows, int64_t cols, int64_t stride_w, const uint16_t* x, int64_t n,
                         int64_t stride_x, float* y, int64_t ldy, int64_t stride_y, int64_t count, cudaStream_t s,
                         bool accumulate = false);

 private:
  void gemm(const void* W, int type, int64_t rows, int64_t cols, const void* x, int64_t n, float* y, int64_t ldy,
            cudaStream_t s, bool accumulate);
  Blas() = default;
  void* handle_ = nullptr;
  void* lib_ = nullptr;
  int (*set_stream_)(void*, cudaStream_t) = nullptr;
  void* gemm_ex_ = nullptr;
  void* gemm_batched_ = nullptr;
};

}  // namespace genesis::cuda
