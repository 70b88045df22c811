#include "cuda/blas.h"

#include <cublas_v2.h>
#include <dlfcn.h>

#include <mutex>

#include "common/error.h"

namespace genesis::cuda {

namespace {
using CreateFn = cublasStatus_t (*)(cublasHandle_t*);
using SetStreamFn = cublasStatus_t (*)(cublasHandle_t, cudaStream_t);
using GemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                                    const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                                    cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
using GemmBatchedFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                         const void*, const void*, cudaDataType, int, long long, const void*,
                                         cudaDataType, int, long long, const void*, void*, cudaDataType, int, long long,
                                         int, cublasComputeType_t, cublasGemmAlgo_t);
std::mutex call_mu;  // the stream is the handle's state: set and use it as one step
}  // namespace

Blas* Blas::get(std::string* why) {
  static std::mutex mu;
  static Blas* blas = nullptr;
  static std::string error;
  static bool tried = false;
  std::lock_guard<std::mutex> lock(mu);
  if (!tried) {
    tried = true;
    void* lib = nullptr;
    for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"})
      if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
    if (!lib) {
      error = fmt::format("libcublas not found ({}); put the CUDA toolkit's lib64 on LD_LIBRARY_PATH", dlerror());
    } else {
      auto create = reinterpret_cast<CreateFn>(dlsym(lib, "cublasCreate_v2"));
      auto set_stream = reinterpret_cast<SetStreamFn>(dlsym(lib, "cublasSetStream_v2"));
      void* gemm = dlsym(lib, "cublasGemmEx");
      void* batched = dlsym(lib, "cublasGemmStridedBatchedEx");
      cublasHandle_t h = nullptr;
      if (!create || !set_stream || !gemm || !batched) {
        error = "libcublas lacks cublasCreate_v2 / cublasSetStream_v2 / cublasGemmEx / cublasGemmStridedBatchedEx";
      } else if (const cublasStatus_t st = create(&h); st != CUBLAS_STATUS_SUCCESS) {
        error = fmt::format("cublasCreate failed (status {})", int(st));
      } else {
        blas = new Blas();
        blas->lib_ = lib;
        blas->handle_ = h;
        blas->set_stream_ = reinterpret_cast<int (*)(void*, cudaStream_t)>(set_stream);
        blas->gemm_ex_ = gemm;
        blas->gemm_batched_ = batched;
      }
    }
  }
  if (!blas && why) *why = error;
  return blas;
}

void Blas::gemm_bf16(const uint16_t* W, int64_t rows, int64_t cols, const uint16_t* x, int64_t n, float* y, int64_t ldy,
                     cudaStream_t s, bool accumulate) {
  gemm(W, CUDA_R_16BF, rows, cols, x, n, y, ldy, s, accumulate);
}

void Blas::gemm_f32(const float* W, int64_t rows, int64_t cols, const float* x, int64_t n, float* y, int64_t ldy,
                    cudaStream_t s) {
  gemm(W, CUDA_R_32F, rows, cols, x, n, y, ldy, s, false);
}

void Blas::gemm_bf16_batched(const uint16_t* W, int64_t rows, int64_t cols, int64_t stride_w, const uint16_t* x,
                             int64_t n, int64_t stride_x, float* y, int64_t ldy, int64_t stride_y, int64_t count,
                             cudaStream_t s, bool accumulate) {
  if (n <= 0 || count <= 0) return;
  auto h = static_cast<cublasHandle_t>(handle_);
  std::lock_guard<std::mutex> lock(call_mu);
  if (const int st = set_stream_(handle_, s); st != 0) fail("cublasSetStream failed (status {})", st);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const cublasStatus_t st = reinterpret_cast<GemmBatchedFn>(gemm_batched_)(
      h, CUBLAS_OP_T, CUBLAS_OP_N, int(rows), int(n), int(cols), &alpha, W, CUDA_R_16BF, int(cols), stride_w, x,
      CUDA_R_16BF, int(cols), stride_x, &beta, y, CUDA_R_32F, int(ldy), stride_y, int(count), CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS)
    fail("cublasGemmStridedBatchedEx ({} x {} x {}, {} products) failed (status {})", rows, n, cols, count, int(st));
}

void Blas::gemm(const void* W, int type, int64_t rows, int64_t cols, const void* x, int64_t n, float* y, int64_t ldy,
                cudaStream_t s, bool accumulate) {
  if (n <= 0) return;
  auto h = static_cast<cublasHandle_t>(handle_);
  std::lock_guard<std::mutex> lock(call_mu);
  if (const int st = set_stream_(handle_, s); st != 0) fail("cublasSetStream failed (status {})", st);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const auto t = static_cast<cudaDataType>(type);
  // Column-major: y^T [rows x n] = W [cols x rows]^T * x^T [cols x n].
  const cublasStatus_t st = reinterpret_cast<GemmExFn>(gemm_ex_)(
      h, CUBLAS_OP_T, CUBLAS_OP_N, int(rows), int(n), int(cols), &alpha, W, t, int(cols), x, t, int(cols), &beta, y,
      CUDA_R_32F, int(ldy), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS) fail("cublasGemmEx ({} x {} x {}) failed (status {})", rows, n, cols, int(st));
}

}  // namespace genesis::cuda
