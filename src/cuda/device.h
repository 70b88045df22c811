// The CUDA runtime as Genesis uses it: errors turned into genesis::Error with the CUDA text, device discovery that
// explains why there is no device, owning device / pinned host arrays, a stream. Only compiled when CMake finds the
// CUDA toolkit (GENESIS_HAVE_CUDA); nothing outside src/cuda and the runtime's GPU step includes it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

namespace genesis::cuda {

// Throws genesis::Error "CUDA error in <what>: <cudaGetErrorString>" unless e == cudaSuccess.
void check(cudaError_t e, const char* what);

struct DeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int multiprocessors = 0;
  size_t total_bytes = 0, free_bytes = 0;
  std::string summary() const;  // "NVIDIA H200 (sm_90, 132 SMs), 140.4 GiB, 139.9 GiB free"
};

// Devices visible to this process; 0 with `why` set (no driver, no device, driver too old for this build's runtime).
int device_count(std::string* why);
// Selects device `index` for the calling thread and describes it; throws genesis::Error naming the devices there are.
DeviceInfo use_device(int index);

// Bytes this process holds on the device through DeviceArray (for reports; cudaMemGetInfo also counts the context).
size_t device_bytes_held();

// An owning array in device memory. Moves, never copies.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n) { resize(n); }
  ~DeviceArray() { reset(); }
  DeviceArray(DeviceArray&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  // Reallocates (contents lost) when n exceeds the capacity.
  void resize(size_t n);
  void reset();
  // Synchronous copy of n elements from host memory into [0, n).
  void upload(const T* host, size_t n);
  // Synchronous copy of n elements from host memory into [offset, offset + n) (within the size).
  void upload_at(size_t offset, const T* host, size_t n);
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// Page-locked host memory, mapped into the device's address space: async copies run from it without staging, and
// kernels may write it directly (device() is its address there).
template <class T>
class PinnedArray {
 public:
  PinnedArray() = default;
  ~PinnedArray() { reset(); }
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  void resize(size_t n);  // contents lost when it grows
  void reset();
  T* data() { return p_; }
  T* device() { return d_; }
  size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  T* d_ = nullptr;
  size_t n_ = 0;
};

// Host memory pinned where it is (cudaHostRegister): async copies run straight from it. Unpinned when destroyed.
// Throws genesis::Error with CUDA's text when the range cannot be pinned.
class HostRegistration {
 public:
  HostRegistration() = default;
  HostRegistration(void* p, size_t bytes);
  ~HostRegistration();
  HostRegistration(HostRegistration&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  HostRegistration& operator=(HostRegistration&&) = delete;
  HostRegistration(const HostRegistration&) = delete;
  HostRegistration& operator=(const HostRegistration&) = delete;

 private:
  void* p_ = nullptr;
};

class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void sync(const char* what) const;  // waits for the stream; a kernel's error surfaces here, named by `what`

 private:
  cudaStream_t s_ = nullptr;
};

// Async copies on a stream, checked.
void copy_to_device(void* dst, const void* src, size_t bytes, const Stream& s);
void copy_to_host(void* dst, const void* src, size_t bytes, const Stream& s);

}  // namespace genesis::cuda
