// The nf4_gemv driver: activation preparation, splitting 16-row groups over threads and into tiles, calling the
// generated code (JIT paths) or the compiled loops (scalar, AVX2), and the process-wide kernel cache.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>

#include "common/error.h"
#include "cpu/isa.h"
#include "cpu/thread_pool.h"
#include "jit/emit.h"
#include "kernels/nf4_gemv/compiled.h"
#include "kernels/nf4_gemv/conf.h"
#include "kernels/nf4_gemv/family.h"
#include "quant/half.h"

namespace genesis::kernels::nf4_gemv {
namespace {

// ---- activation preparation ([block][token][blocksize] elements) ----

void quantize_block_scalar(const float* x, int bs, int8_t* q, int32_t* corr, float* scale) {
  float a = 0;
  for (int i = 0; i < bs; ++i) a = std::max(a, std::fabs(x[i]));
  if (a == 0) {
    std::memset(q, 0, size_t(bs));
    *corr = 0;
    *scale = 0;
    return;
  }
  const float inv = 127.0f / a;
  int32_t sum = 0;
  for (int i = 0; i < bs; ++i) {
    const int v = int(std::nearbyint(x[i] * inv));
    q[i] = int8_t(v);
    sum += v;
  }
  *corr = -128 * sum;
  *scale = a / 16129.0f;  // (a / 127) activation step times 1/127 for the int8 codes
}

__attribute__((target("avx512f,avx512bw"))) void quantize_block_avx512(const float* x, int bs, int8_t* q,
                                                                        int32_t* corr, float* scale) {
  __m512 m = _mm512_setzero_ps();
  for (int i = 0; i < bs; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  const float a = _mm512_reduce_max_ps(m);
  if (a == 0) {
    std::memset(q, 0, size_t(bs));
    *corr = 0;
    *scale = 0;
    return;
  }
  const __m512 inv = _mm512_set1_ps(127.0f / a);
  __m512i sum = _mm512_setzero_si512();
  for (int i = 0; i < bs; i += 16) {
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), inv));  // round to nearest even
    sum = _mm512_add_epi32(sum, v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(v));
  }
  *corr = -128 * _mm512_reduce_add_epi32(sum);
  *scale = a / 16129.0f;
}

// The same bits on AVX2 (the AVX2 JIT paths' CPUs). bs is a multiple of 32.
__attribute__((target("avx2"))) void quantize_block_avx2(const float* x, int bs, int8_t* q, int32_t* corr,
                                                         float* scale) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (int i = 0; i < bs; i += 8) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), m);
  alignas(32) float mm[8];
  _mm256_store_ps(mm, m);
  float a = 0;
  for (float v : mm) a = std::max(a, v);
  if (a == 0) {
    std::memset(q, 0, size_t(bs));
    *corr = 0;
    *scale = 0;
    return;
  }
  const __m256 inv = _mm256_set1_ps(127.0f / a);
  __m256i sum = _mm256_setzero_si256();
  for (int i = 0; i < bs; i += 16) {  // round to nearest even (MXCSR default), as nearbyint
    const __m256i v0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    const __m256i v1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), inv));
    sum = _mm256_add_epi32(sum, _mm256_add_epi32(v0, v1));
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(v0, v1), 0xD8);  // 16 words in order
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i),
                     _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
  }
  alignas(32) int32_t s8[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(s8), sum);
  int32_t total = 0;
  for (int32_t v : s8) total += v;
  *corr = -128 * total;
  *scale = a / 16129.0f;
  _mm256_zeroupper();
}

void prepare_activations(Path path, const float* x, int T, int64_t K, int bs, PreparedActivations& out) {
  const int64_t nb = K / bs;
  const size_t elem = int8_layout(path) ? 1 : path == Path::avx512_bf16 ? 2 : 4;
  const size_t need = size_t(nb) * size_t(T) * size_t(bs) * elem;
  if (out.data.size() < need) out.data = AlignedBuffer(need);
  out.path = path;
  out.tokens = T;
  out.K = K;
  out.blocksize = bs;
  if (int8_layout(path)) {
    const size_t aux = size_t(nb) * size_t(T) * 8;
    if (out.aux.size() < aux) out.aux = AlignedBuffer(aux);
    const bool wide = cpu::mayiuse(cpu::Isa::avx512f) && cpu::mayiuse(cpu::Isa::avx512bw);
    const auto quantize = wide ? quantize_block_avx512 : cpu::mayiuse(cpu::Isa::avx2) ? quantize_block_avx2
                                                                                       : quantize_block_scalar;
    for (int64_t b = 0; b < nb; ++b)
      for (int t = 0; t < T; ++t) {
        const float* src = x + size_t(t) * size_t(K) + size_t(b * bs);
        int8_t* q = reinterpret_cast<int8_t*>(out.data.data()) + (size_t(b) * size_t(T) + size_t(t)) * size_t(bs);
        uint8_t* a = out.aux.data() + (size_t(b) * size_t(T) + size_t(t)) * 8;
        int32_t corr;
        float scale;
        quantize(src, bs, q, &corr, &scale);
        std::memcpy(a, &corr, 4);
        std::memcpy(a + 4, &scale, 4);
      }
    return;
  }
  for (int64_t b = 0; b < nb; ++b)
    for (int t = 0; t < T; ++t) {
      const float* src = x + size_t(t) * size_t(K) + size_t(b * bs);
      const size_t off = (size_t(b) * size_t(T) + size_t(t)) * size_t(bs);
      if (path == Path::avx512_bf16) {
        uint16_t* d = reinterpret_cast<uint16_t*>(out.data.data()) + off;
        for (int i = 0; i < bs; ++i) d[i] = quant::f32_to_bf16(src[i]);
      } else {
        std::memcpy(reinterpret_cast<float*>(out.data.data()) + off, src, size_t(bs) * 4);
      }
    }
}

void check_inputs(const PackedWeights& w, const PreparedActivations& xa, Path path, int T, int bs, int64_t g0,
                  int64_t g1) {
  if (w.path != path)
    fail("nf4_gemv: weights are packed for path {}, the kernel is {}", path_name(w.path), path_name(path));
  if (w.blocksize != bs) fail("nf4_gemv: weights use blocksize {}, the kernel {}", w.blocksize, bs);
  if (xa.tokens != T || xa.K != w.K || xa.path != path || xa.blocksize != bs)
    fail("nf4_gemv: activations prepared for {} tokens, K={}, path {} do not fit this call ({} tokens, K={}, {})",
         xa.tokens, xa.K, path_name(xa.path), T, w.K, path_name(path));
  if (g0 < 0 || g1 > w.groups() || g0 > g1) fail("nf4_gemv: group range [{}, {}) outside 0..{}", g0, g1, w.groups());
}

// Shared plumbing: per-thread buffers, thread split, the partial last group.
class KernelBase : public Kernel {
 public:
  KernelBase(Genome g, Path path, int T, int bs, std::string id)
      : genome_(std::move(g)), path_(path), T_(T), bs_(bs), id_(std::move(id)) {}
  const std::string& id() const override { return id_; }
  const Genome& genome() const override { return genome_; }

  void prepare(const float* x, int64_t K, PreparedActivations& out) const override {
    if (K % bs_ != 0) fail("nf4_gemv: K = {} is not a multiple of the blocksize {}", K, bs_);
    prepare_activations(path_, x, T_, K, bs_, out);
  }

  void run(const PackedWeights& w, const float* x, float* y, cpu::ThreadPool* pool) const override {
    thread_local PreparedActivations xa;
    prepare(x, w.K, xa);
    const int64_t G = w.groups();
    if (pool == nullptr || pool->size() <= 1 || G < 2) {
      run_prepared(w, xa, y, 0, G);
      return;
    }
    const int64_t unit = std::max<int64_t>(1, tile_groups());
    const int n = pool->size();
    const int64_t per = (G / unit + n - 1) / n * unit;
    const PreparedActivations* xp = &xa;
    pool->run([&](int tid, int) {
      const int64_t a = std::min(G, int64_t(tid) * per), b = std::min(G, a + per);
      if (a < b) run_prepared(w, *xp, y, a, b);
    });
  }

  void run_groups(const PackedWeights& w, const float* x, float* y, int64_t g0, int64_t g1) const override {
    thread_local PreparedActivations xa;
    prepare(x, w.K, xa);
    run_prepared(w, xa, y, g0, g1);
  }

  void run_prepared(const PackedWeights& w, const PreparedActivations& xa, float* y, int64_t g0,
                    int64_t g1) const override {
    check_inputs(w, xa, path_, T_, bs_, g0, g1);
    const bool partial_last = (w.M % kGroupRows) != 0 && g1 == w.groups();
    const int64_t full_end = partial_last ? g1 - 1 : g1;
    if (full_end > g0) run_full(w, xa, y, w.M, g0, full_end);
    if (partial_last && g1 > g0) {
      // The last group has fewer than 16 real rows: compute it into a [T][16] buffer and copy the real rows.
      alignas(64) float tmp[kMaxTokens * kGroupRows];
      run_one_group_to(w, xa, g1 - 1, tmp);
      const int64_t rows = w.M - (g1 - 1) * kGroupRows;
      for (int t = 0; t < T_; ++t)
        std::memcpy(y + size_t(t) * size_t(w.M) + size_t((g1 - 1) * kGroupRows), tmp + t * kGroupRows,
                    size_t(rows) * 4);
    }
  }

 protected:
  virtual int64_t tile_groups() const { return 1; }
  // Full groups [g0, g1) into y ([T][M_stride]).
  virtual void run_full(const PackedWeights& w, const PreparedActivations& xa, float* y, int64_t y_stride, int64_t g0,
                        int64_t g1) const = 0;
  void run_one_group_to(const PackedWeights& w, const PreparedActivations& xa, int64_t g, float* out) const {
    run_full_shifted(w, xa, out, kGroupRows, g);
  }
  virtual void run_full_shifted(const PackedWeights& w, const PreparedActivations& xa, float* out,
                                int64_t y_stride, int64_t g) const = 0;

  Genome genome_;
  Path path_;
  int T_, bs_;
  std::string id_;
};

// ---- JIT paths ----

class JitKernel final : public KernelBase {
 public:
  JitKernel(const Conf& conf, std::shared_ptr<const jit::ExecutableCode> main, const Conf& rem_conf,
            std::shared_ptr<const jit::ExecutableCode> rem)
      : KernelBase(conf.genome, conf.path, conf.tokens, conf.blocksize, conf.id),
        R_(conf.R), main_(std::move(main)), rem_(std::move(rem)), rem_R_(rem_conf.R) {}

 protected:
  int64_t tile_groups() const override { return R_; }

  void call(const jit::ExecutableCode& code, int R, const PackedWeights& w, const PreparedActivations& xa, float* y,
            int64_t y_stride_elems, int64_t g, int64_t tiles) const {
    thread_local AlignedBuffer scratch(size_t(4) * kMaxTokens * kGroupRows * 4);
    KernelArgs a;
    a.w = w.data.data() + g * w.group_bytes();
    a.group_bytes = w.group_bytes();
    a.tile_advance = int64_t(R - 1) * w.group_bytes();
    a.x = xa.data.data();
    a.xaux = xa.aux.data();
    a.y = y;
    a.y_stride = y_stride_elems * 4;
    a.n_tiles = tiles;
    a.n_blocks = w.blocks();
    a.scratch = reinterpret_cast<float*>(scratch.data());
    a.consts = kernel_constants();
    a.rewind = -w.group_bytes();
    code.as<void (*)(const KernelArgs*)>()(&a);
  }

  void run_full(const PackedWeights& w, const PreparedActivations& xa, float* y, int64_t y_stride, int64_t g0,
                int64_t g1) const override {
    const int64_t n = g1 - g0, tiles = n / R_, left = n % R_;
    if (tiles > 0) call(*main_, R_, w, xa, y + g0 * kGroupRows, y_stride, g0, tiles);
    if (left > 0) {
      const int64_t g = g0 + tiles * R_;
      call(*rem_, rem_R_, w, xa, y + g * kGroupRows, y_stride, g, left);
    }
  }
  void run_full_shifted(const PackedWeights& w, const PreparedActivations& xa, float* out, int64_t y_stride,
                        int64_t g) const override {
    call(*rem_, rem_R_, w, xa, out, y_stride, g, 1);
  }

 private:
  int R_;
  std::shared_ptr<const jit::ExecutableCode> main_, rem_;
  int rem_R_;
};

// ---- compiled paths (scalar, AVX2) ----

class CompiledKernel final : public KernelBase {
 public:
  using KernelBase::KernelBase;

 protected:
  void run_full(const PackedWeights& w, const PreparedActivations& xa, float* y, int64_t y_stride, int64_t g0,
                int64_t g1) const override {
    alignas(64) float tmp[kMaxTokens * kGroupRows];
    for (int64_t g = g0; g < g1; ++g) {
      group(w, xa, g, tmp);
      for (int t = 0; t < T_; ++t)
        std::memcpy(y + size_t(t) * size_t(y_stride) + size_t(g * kGroupRows), tmp + t * kGroupRows,
                    kGroupRows * 4);
    }
  }
  void run_full_shifted(const PackedWeights& w, const PreparedActivations& xa, float* out, int64_t y_stride,
                        int64_t g) const override {
    group(w, xa, g, out);
  }

 private:
  void group(const PackedWeights& w, const PreparedActivations& xa, int64_t g, float* out) const {
    const uint8_t* rec = w.data.data() + g * w.group_bytes();
    const float* x = reinterpret_cast<const float*>(xa.data.data());
    if (path_ == Path::avx2)
      compiled_group_avx2(rec, w.blocks(), bs_, x, T_, out);
    else
      compiled_group_scalar(rec, w.blocks(), bs_, x, T_, out);
  }
};

Genome remainder_genome(const Genome& g) {
  Genome r = g;
  r.row_groups = 1;
  r.order.clear();
  r.hints.clear();
  r.alt.clear();
  return r;
}

}  // namespace

std::shared_ptr<const Kernel> get_kernel(const Problem& problem, const Genome& genome, bool allow_faults) {
  problem.validate();
  genome.validate();
  require_path(genome.path);
  if (genome.fault != Fault::none && !allow_faults)
    fail("nf4_gemv: genome {} carries a planted test fault; only sandboxed tests may build it", kernel_id(genome));
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<const Kernel>> cache;
  const std::string key = genome.serialize() + "|t" + std::to_string(problem.tokens) + "|bs" +
                          std::to_string(problem.blocksize);
  {
    std::lock_guard<std::mutex> lock(mu);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  std::shared_ptr<const Kernel> k;
  if (!path_is_jit(genome.path)) {
    k = std::make_shared<CompiledKernel>(genome, genome.path, problem.tokens, problem.blocksize,
                                         kernel_id(genome) + "_t" + std::to_string(problem.tokens) + "_bs" +
                                             std::to_string(problem.blocksize));
  } else {
    const Conf conf = make_conf(problem, genome, cpu::host_isa());
    auto& cc = jit::CodeCache::instance();
    auto main = cc.get_or_build(conf.id, [&] { return build(conf); });
    const Conf rconf = make_conf(problem, remainder_genome(genome), cpu::host_isa());
    auto rem = rconf.id == conf.id ? main : cc.get_or_build(rconf.id, [&] { return build(rconf); });
    k = std::make_shared<JitKernel>(conf, main, rconf, rem);
  }
  std::lock_guard<std::mutex> lock(mu);
  return cache.emplace(key, k).first->second;
}

}  // namespace genesis::kernels::nf4_gemv
