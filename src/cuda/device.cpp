#include "cuda/device.h"

#include <atomic>

#include "common/error.h"

namespace genesis::cuda {

namespace {
std::atomic<size_t> g_held{0};
}

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so that later calls do not report it again
  fail("CUDA error in {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

std::string DeviceInfo::summary() const {
  return fmt::format("{} (sm_{}{}, {} SMs), {:.1f} GiB, {:.1f} GiB free", name, cc_major, cc_minor, multiprocessors,
                     double(total_bytes) / double(1ull << 30), double(free_bytes) / double(1ull << 30));
}

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = fmt::format("{} ({})", cudaGetErrorString(e), cudaGetErrorName(e));
    return 0;
  }
  if (n == 0 && why) *why = "the CUDA driver reports no device";
  return n;
}

DeviceInfo use_device(int index) {
  std::string why;
  const int n = device_count(&why);
  if (n == 0) fail("no CUDA device: {}", why);
  if (index < 0 || index >= n) fail("CUDA device {} does not exist: this machine has {} (0..{})", index, n, n - 1);
  check(cudaSetDevice(index), "cudaSetDevice");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, index), "cudaGetDeviceProperties");
  DeviceInfo d;
  d.index = index;
  d.name = p.name;
  d.cc_major = p.major;
  d.cc_minor = p.minor;
  d.multiprocessors = p.multiProcessorCount;
  check(cudaMemGetInfo(&d.free_bytes, &d.total_bytes), "cudaMemGetInfo");
  return d;
}

size_t device_bytes_held() { return g_held.load(); }

template <class T>
void DeviceArray<T>::resize(size_t n) {
  if (n <= n_ && p_) return;
  reset();
  if (n == 0) return;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, n * sizeof(T));
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    fail("out of GPU memory: {:.1f} MiB asked, {:.1f} MiB free of {:.1f} MiB (this process holds {:.1f} MiB): {}",
         double(n * sizeof(T)) / 1048576.0, double(free_b) / 1048576.0, double(total_b) / 1048576.0,
         double(g_held.load()) / 1048576.0, cudaGetErrorString(e));
  }
  p_ = static_cast<T*>(p);
  n_ = n;
  g_held += n * sizeof(T);
}

template <class T>
void DeviceArray<T>::reset() {
  if (p_) {
    cudaFree(p_);
    g_held -= n_ * sizeof(T);
  }
  p_ = nullptr;
  n_ = 0;
}

template <class T>
void DeviceArray<T>::upload(const T* host, size_t n) {
  resize(n);
  if (n) check(cudaMemcpy(p_, host, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy (upload)");
}

template <class T>
void DeviceArray<T>::upload_at(size_t offset, const T* host, size_t n) {
  if (offset + n > n_) fail("DeviceArray::upload_at: [{}, {}) is outside the array of {}", offset, offset + n, n_);
  if (n) check(cudaMemcpy(p_ + offset, host, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy (upload)");
}

template <class T>
void PinnedArray<T>::resize(size_t n) {
  if (n <= n_ && p_) return;
  reset();
  if (n == 0) return;
  void* p = nullptr;
  check(cudaHostAlloc(&p, n * sizeof(T), cudaHostAllocMapped), "cudaHostAlloc");
  p_ = static_cast<T*>(p);
  n_ = n;
  void* d = nullptr;
  check(cudaHostGetDevicePointer(&d, p, 0), "cudaHostGetDevicePointer");
  d_ = static_cast<T*>(d);
}

template <class T>
void PinnedArray<T>::reset() {
  if (p_) cudaFreeHost(p_);
  p_ = d_ = nullptr;
  n_ = 0;
}

template class DeviceArray<float>;
template class DeviceArray<uint16_t>;
template class DeviceArray<int32_t>;
template class DeviceArray<int64_t>;
template class DeviceArray<float*>;
template class DeviceArray<uint8_t>;
template class PinnedArray<float>;
template class PinnedArray<int32_t>;
template class PinnedArray<int64_t>;
template class PinnedArray<float*>;
template class PinnedArray<uint8_t>;

Stream::Stream() { check(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "cudaStreamCreate"); }
Stream::~Stream() {
  if (s_) cudaStreamDestroy(s_);
}
void Stream::sync(const char* what) const { check(cudaStreamSynchronize(s_), what); }

void copy_to_device(void* dst, const void* src, size_t bytes, const Stream& s) {
  if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s.get()), "cudaMemcpyAsync (to device)");
}
void copy_to_host(void* dst, const void* src, size_t bytes, const Stream& s) {
  if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s.get()), "cudaMemcpyAsync (to host)");
}

HostRegistration::HostRegistration(void* p, size_t bytes) {
  check(cudaHostRegister(p, bytes, cudaHostRegisterPortable), "cudaHostRegister");
  p_ = p;
}

HostRegistration::~HostRegistration() {
  if (p_) cudaHostUnregister(p_);
}

}  // namespace genesis::cuda
