// kq_gemv driver: paths, the JIT kernel calls (rows in chunks, lanes summed here), the scalar path (exact integer
// dots, the same fp32 fold), the fp64 reference and the error bound.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "common/error.h"
#include "cpu/isa.h"
#include "cpu/simd.h"
#include "cpu/thread_pool.h"
#include "jit/emit.h"
#include "kernels/kq_gemv/build.h"
#include "kernels/kq_gemv/kq_gemv.h"
#include "kernels/kq_gemv/layout.h"
#include "quant/ggml.h"

namespace genesis::kernels::kq_gemv {

using namespace layout;

const char* path_name(Path p) {
  switch (p) {
    case Path::avx512vnni: return "avx512vnni";
    case Path::avx2vnni: return "avx2vnni";
    case Path::avx2: return "avx2";
    case Path::scalar: return "scalar";
  }
  return "?";
}

std::optional<Path> parse_path(const std::string& s) {
  for (Path p : {Path::avx512vnni, Path::avx2vnni, Path::avx2, Path::scalar})
    if (s == path_name(p)) return p;
  return std::nullopt;
}

std::vector<Path> available_paths() {
  std::vector<Path> v;
  if (cpu::mayiuse(cpu::Isa::avx512f) && cpu::mayiuse(cpu::Isa::avx512bw) && cpu::mayiuse(cpu::Isa::avx512vnni))
    v.push_back(Path::avx512vnni);
  // the AVX2 kernels use FMA (vfmadd231ps) and F16C (vcvtph2ps) besides AVX2
  const bool avx2 = cpu::mayiuse(cpu::Isa::avx2) && cpu::mayiuse(cpu::Isa::fma) && cpu::mayiuse(cpu::Isa::f16c);
  if (avx2 && cpu::mayiuse_avx_vnni()) v.push_back(Path::avx2vnni);
  if (avx2) v.push_back(Path::avx2);
  v.push_back(Path::scalar);
  return v;
}

Path best_path() { return available_paths().front(); }

void require_path(Path p) {
  for (Path q : available_paths())
    if (q == p) return;
  std::string names;
  for (Path q : available_paths()) names += (names.empty() ? "" : ", ") + std::string(path_name(q));
  fail("kq_gemv: this CPU (or GENESIS_MAX_ISA) cannot run path {}; possible: {}", path_name(p), names);
}

namespace {

float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return quant::half_to_float(h);
}

int16_t i16(const uint8_t* p) {
  int16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// One unit's weights in kernel byte order as small integers: for the K-quants the code times its sub-block scale
// (the -32 of Q6_K and the mins are applied from the activations' sums), for the legacy formats the unsigned code.
void decode_unit(Format f, const uint8_t* rec, int16_t* wq) {
  static const auto elem = [] {  // element_of for Q4_K ([0]) and Q5_K ([1])
    std::array<std::array<uint8_t, 256>, 2> t{};
    for (int j = 0; j < 256; ++j) {
      t[0][size_t(j)] = uint8_t(element_of(Format::q4_k, j));
      t[1][size_t(j)] = uint8_t(element_of(Format::q5_k, j));
    }
    return t;
  }();
  const int co = codes_offset(f);
  switch (f) {
    case Format::q4_k:
    case Format::q5_k:
      for (int j = 0; j < 256; ++j) {
        const int k = j / 64, p = j % 64, e = elem[f == Format::q5_k][size_t(j)];
        const uint8_t b = rec[co + 64 * (k / 2) + p];
        int c = (k % 2) ? b >> 4 : b & 0xF;
        if (f == Format::q5_k) {
          const int pos = q5k_position(j);  // where the record packs this byte's code
          c |= ((rec[20 + pos % 32] >> (pos / 32)) & 1) << 4;
        }
        wq[j] = int16_t(c * rec[4 + e / 32]);
      }
      return;
    case Format::q6_k:
      for (int j = 0; j < 256; ++j) {
        const int h = j / 128, l = j % 128, quarter = l / 32, i = l % 32;
        const uint8_t ql = rec[64 * h + (quarter % 2) * 32 + i];
        const int lo = quarter < 2 ? ql & 0xF : ql >> 4;
        const int hi = (rec[128 + j % 64] >> (2 * (j / 64))) & 3;  // kernel vector j / 64 (q6_qh_relayout)
        wq[j] = int16_t((lo | (hi << 4)) * int(int8_t(rec[192 + element_of(Format::q6_k, j) / 16])));
      }
      return;
    case Format::q8_0:
      for (int j = 0; j < 128; ++j) wq[j] = rec[co + j];
      return;
    case Format::q4_0:
    case Format::q4_1:
      for (int j = 0; j < 64; ++j) {
        wq[j] = int16_t(rec[co + j] & 0xF);
        wq[j + 64] = int16_t(rec[co + j] >> 4);
      }
      return;
  }
}

// The scalar path: per unit exact integer sums, then the JIT kernel's fp32 fold (one fp32 accumulator per output;
// separate multiplies and adds: without FMA in the baseline ISA, std::fma would be emulated in software).
void scalar_rows(const Matrix& w, const Activations& a, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const Format f = w.format;
  const int uc = unit_cols(f);
  alignas(64) int16_t wq[256];
  float acc[kMaxRows];
  for (int64_t r = r0; r < r1; ++r) {
    std::fill(acc, acc + a.n, 0.0f);
    for (int64_t u = 0; u < w.units; ++u) {
      const uint8_t* rec = w.records() + size_t(r * w.row_bytes() + u * w.record_bytes);
      decode_unit(f, rec, wq);
      for (int t = 0; t < a.n; ++t) {
        const uint8_t* xr = a.data.data() + (size_t(u) * size_t(a.n) + size_t(t)) * kTokenRecord;
        const auto* xq = reinterpret_cast<const int8_t*>(xr);
        if (is_k_quant(f)) {
          int32_t S = 0;
          for (int j = 0; j < uc; ++j) S += int32_t(wq[j]) * xq[j];
          float dx;
          std::memcpy(&dx, xr + kXScale, 4);
          float s;
          if (f == Format::q6_k) {
            for (int b = 0; b < 16; ++b) S -= 32 * int32_t(int8_t(rec[192 + b])) * i16(xr + kXBs16 + 2 * b);
            s = float(S) * half(rec + 208);
          } else {  // the JIT kernel's fold: d S - sum_j (dmin m_j) sums_j
            s = float(S) * half(rec);
            const float dmin = half(rec + 2);
            for (int b = 0; b < 8; ++b) {
              float sum;
              std::memcpy(&sum, xr + kXSums32 + 4 * b, 4);
              s -= (dmin * float(rec[12 + b])) * sum;
            }
          }
          acc[t] += s * dx;
        } else {
          int32_t S[4];
          std::memcpy(S, xr + kXCorr, 16);
          for (int j = 0; j < uc; ++j) S[(j % 64) / 4 % 4] += int32_t(wq[j]) * xq[j];
          for (int b = 0; b < 4; ++b) {
            float dx, sx;
            std::memcpy(&dx, xr + kXDx + 4 * b, 4);
            std::memcpy(&sx, xr + kXSx + 4 * b, 4);
            acc[t] += float(S[b]) * half(rec + 2 * b) * dx;
            if (f == Format::q4_1) acc[t] += half(rec + 8 + 2 * b) * sx;
          }
        }
      }
    }
    for (int t = 0; t < a.n; ++t) y[size_t(t) * size_t(ldy) + size_t(r)] = acc[t];
  }
}

// zero: the variant that starts each row's lanes at zero (the first column chunk), else the one that adds to them;
// kind: 0 one row per iteration, 1 row pairs (make_conf_pair), 2 + tail four units with `tail` (0..3) one-unit
// iterations after them (make_conf_group)
std::shared_ptr<const jit::ExecutableCode> jit_kernel(Path path, Format f, int tokens, const Genome& g, bool zero,
                                                      int kind) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, int, std::string, bool, int>, std::shared_ptr<const jit::ExecutableCode>>
      cache;
  const auto key = std::make_tuple(int(path), int(f), tokens, g.code_key(), zero, kind);
  {
    std::lock_guard<std::mutex> lock(mu);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  const Conf one = kind == 1   ? make_conf_pair(f, tokens, g)
                   : kind >= 2 ? make_conf_group(f, tokens, g, kind - 2)
                               : make_conf(f, tokens, g, path);
  const Conf c = zero ? zero_init(one) : one;
  auto code = jit::CodeCache::instance().get_or_build(c.id, [&] { return build(c); });
  std::lock_guard<std::mutex> lock(mu);
  return cache.emplace(key, code).first->second;
}

// The 16 fp32 lanes of output (row i, activation row t) at lanes[(i n + t) 16] summed into y[t ldy + r0 + i]. 16 rows
// at a time by a transposing tree (45 shuffles and adds for 16 outputs, one contiguous store per activation row)
// rather than a horizontal reduction per output (about 9 dependent instructions each and a scattered store: it took
// 13% of the kernel time in a 30B-shaped MoE prefill). The last rows (fewer than 16) take the same tree with zeros
// for the missing rows and a masked store: each output's sum is then the same pairwise tree over its lanes wherever
// its row falls in a range, so results do not depend on how a product's rows were split into tasks (when those rows
// took a per-row reduction, a row's bits moved with the split, and with the thread count; and decode's few-row tasks,
// in multiples of 4 rows, left up to 12 rows of each to it).
__attribute__((target("avx512f"))) void sum_lanes(const float* lanes, int n, int64_t rows, float* y, int64_t ldy,
                                                  int64_t r0) {
  const size_t stride = size_t(n) * 16;  // floats from one row's lanes to the next row's (same activation row)
  for (int64_t i = 0; i < rows; i += 16) {
    const int64_t m = std::min<int64_t>(16, rows - i);
    for (int t = 0; t < n; ++t) {
      const float* l = lanes + (size_t(i) * size_t(n) + size_t(t)) * 16;
      __m512 v[16];
      for (int k = 0; k < 16; ++k) v[k] = k < m ? _mm512_loadu_ps(l + size_t(k) * stride) : _mm512_setzero_ps();
      const __m512 s = cpu::hsum16x16(v);
      float* out = y + size_t(t) * size_t(ldy) + size_t(r0 + i);
      if (m == 16) _mm512_storeu_ps(out, s);
      else _mm512_mask_storeu_ps(out, __mmask16((1u << m) - 1), s);
    }
  }
}

// The AVX2 kernels fill lanes 0..7 of each 16 (the rest stay zero): summed pairwise in plain C++ (no AVX-512 here).
void sum_lanes8(const float* lanes, int n, int64_t rows, float* y, int64_t ldy, int64_t r0) {
  for (int64_t i = 0; i < rows; ++i)
    for (int t = 0; t < n; ++t) {
      const float* l = lanes + (i * n + t) * 16;
      const float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
      y[size_t(t) * size_t(ldy) + size_t(r0 + i)] = (a0 + a2) + (a1 + a3);
    }
}

void prefetch_range(const uint8_t* p, size_t bytes, PrefetchKind k) {
  const char* c = reinterpret_cast<const char*>(p);
  switch (k) {
    case PrefetchKind::t0: for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T0); break;
    case PrefetchKind::t1: for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T1); break;
    case PrefetchKind::t2: for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T2); break;
    case PrefetchKind::nta: for (size_t b = 0; b < bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_NTA); break;
  }
}

}  // namespace

std::vector<int> pass_rows(Path path, Format f, const Genome& g, int n) {
  const int per_pass = std::min(g.rows_per_pass, max_tokens(path, f));
  const int passes = (n + per_pass - 1) / per_pass;
  std::vector<int> v;
  for (int p = 0; p < passes; ++p) v.push_back(n / passes + (p < n % passes ? 1 : 0));
  return v;
}

namespace {

// Rows in chunks of genome.row_chunk (their lanes stay in L1/L2); per chunk the activation rows in balanced passes of
// at most genome.rows_per_pass (later passes find the chunk's weights in L2); columns in chunks whose activation
// records fit genome.x_budget_kb, so that the activations a chunk of rows re-reads stay in L1. The first column chunk
// runs the kernel variant that starts the lanes at zero (no clearing of the lanes buffer: it was 5% of a product with
// 8 activation rows), later chunks the one that adds to them.
void jit_rows(const Matrix& w, const Activations& a, float* y, int64_t ldy, int64_t r0, int64_t r1, const Genome& g,
              Path path) {
  // pass_rows() without its vector (no allocation per call)
  const int per_pass = std::min(g.rows_per_pass, max_tokens(path, w.format));
  const int passes = (a.n + per_pass - 1) / per_pass;
  struct Pass {
    int t0, n;
    int64_t unit_chunk;
    void (*fn_zero)(const KernelArgs*);  // the first column chunk: lanes start at zero
    void (*fn)(const KernelArgs*);       // later chunks: added to the lanes
    void (*fn2_zero)(const KernelArgs*); // the same for row pairs (null where there is no two-row kernel)
    void (*fn2)(const KernelArgs*);
    int64_t group_chunk;                 // four-unit kernels: groups per column chunk (0: none)
    void (*fn4_zero)(const KernelArgs*); // a column chunk before the last (no tail)
    void (*fn4)(const KernelArgs*);
    void (*fn4l_zero)(const KernelArgs*); // the last column chunk: the row's tail units too
    void (*fn4l)(const KernelArgs*);
  };
  // The MoE calls this for every (expert, row block) task, tens of thousands of times per token over all threads: the
  // kernels come from a per-thread cache (no lock, no allocation once warm; the process-wide cache keeps the code).
  struct Cached {
    Path path;
    Format f;
    int n;
    bool zero;
    int kind;
    Genome g;
    void (*fn)(const KernelArgs*);
  };
  thread_local std::vector<Cached> kernels;
  auto kernel_for = [&](int n, bool zero, int kind) {
    for (const Cached& c : kernels)
      if (c.path == path && c.f == w.format && c.n == n && c.zero == zero && c.kind == kind && c.g == g) return c.fn;
    auto fn = jit_kernel(path, w.format, n, g, zero, kind)->as<void (*)(const KernelArgs*)>();
    if (kernels.size() >= 64) kernels.erase(kernels.begin());
    kernels.push_back({path, w.format, n, zero, kind, g, fn});
    return fn;
  };
  thread_local std::vector<Pass> plan;
  plan.clear();
  for (int p = 0, t0 = 0; p < passes; ++p) {
    const int n = a.n / passes + (p < a.n % passes ? 1 : 0);
    const int64_t unit_chunk = std::max<int64_t>(1, (int64_t(g.x_budget_kb) << 10) / (int64_t(n) * kTokenRecord));
    // Row pairs for several activation rows, unless the genome carries an order (it permutes the one-row body, which
    // then runs as ordered: the factory's reordered mutants are measured as they are). One activation row: the
    // weights' bandwidth decides, and a tuned order fits that body.
    const bool pair = a.n > 1 && g.order.empty() && has_pair_kernel(path, w.format, n) && r1 - r0 > 1;
    // Legacy formats, 2..8 rows in the pass: the four-unit kernel over the first 4 * groups units (grouped activation
    // records), its last column chunk also running the row's remaining units (fewer than 4) by the one-unit body
    // before the lanes' store. A genome's order permutes the one-unit kernel only (the four-unit kernel takes none).
    const bool group = a.groups > 0 && has_group_kernel(path, w.format, n);
    const int64_t group_chunk =
        group ? std::max<int64_t>(1, (int64_t(g.x_budget_kb) << 10) / (int64_t(n) * kGroupRecord)) : 0;
    const int tail = group ? int(w.units - 4 * a.groups) : 0;
    const bool chunks = group && group_chunk < a.groups;  // more than one column chunk of groups
    const bool more = unit_chunk < w.units;
    plan.push_back({t0, n, unit_chunk, group ? nullptr : kernel_for(n, true, 0),
                    !group && more ? kernel_for(n, false, 0) : nullptr, pair ? kernel_for(n, true, 1) : nullptr,
                    pair && more ? kernel_for(n, false, 1) : nullptr, group_chunk,
                    chunks ? kernel_for(n, true, 2) : nullptr, chunks ? kernel_for(n, false, 2) : nullptr,
                    group ? kernel_for(n, true, 2 + tail) : nullptr,
                    chunks ? kernel_for(n, false, 2 + tail) : nullptr});
    t0 += n;
  }
  const int64_t row_chunk = g.row_chunk;
  if (g.pf_ramp > 0 && path != Path::scalar)  // the range's first bytes requested at once (genome.h: pf_ramp)
    prefetch_range(w.records() + size_t(r0) * size_t(w.row_bytes()),
                   std::min<size_t>(size_t(g.pf_ramp), size_t(r1 - r0) * size_t(w.row_bytes())), g.pf_kind);
  thread_local std::vector<float> lanes;
  if (lanes.size() < size_t(row_chunk * kMaxTokens * 16)) lanes.resize(size_t(row_chunk * kMaxTokens * 16));
  KernelArgs args;
  args.consts = kernel_constants();
  args.out = lanes.data();
  args.w_row = w.row_bytes();
  for (int64_t r = r0; r < r1; r += row_chunk) {
    const int64_t rows = std::min(row_chunk, r1 - r);
    for (const Pass& p : plan) {
      int64_t u0 = 0;  // the first unit of the one-unit kernel
      if (p.fn4l_zero) {
        const int64_t gw = 4 * w.record_bytes, tail = w.units - 4 * a.groups;
        args.x_stride = int64_t(a.n) * kGroupRecord;
        args.x_tail = a.data.data() + (size_t(4 * a.groups) * size_t(a.n) + size_t(p.t0)) * kTokenRecord;
        args.x_tail_stride = int64_t(a.n) * kTokenRecord;
        args.out = lanes.data();
        args.n_rows = rows;
        for (int64_t gi = 0; gi < a.groups; gi += p.group_chunk) {
          const int64_t ng = std::min(p.group_chunk, a.groups - gi);
          const bool last = gi + ng == a.groups;
          args.x = a.grouped.data() + (size_t(gi) * size_t(a.n) + size_t(p.t0)) * kGroupRecord;
          args.n_units = ng;
          args.w_skip = w.row_bytes() - (ng * gw + (last ? tail * w.record_bytes : 0));
          args.w = w.records() + size_t(r * w.row_bytes() + gi * gw);
          if (last)
            (gi == 0 ? p.fn4l_zero : p.fn4l)(&args);
          else
            (gi == 0 ? p.fn4_zero : p.fn4)(&args);
        }
        u0 = w.units;  // every unit done
      }
      args.x_stride = int64_t(a.n) * kTokenRecord;
      for (int64_t u = u0; u < w.units; u += p.unit_chunk) {
        const int64_t nu = std::min(p.unit_chunk, w.units - u);
        const bool first = u == 0;  // the lanes start here (no four-unit kernel before)
        args.x = a.data.data() + (size_t(u) * size_t(a.n) + size_t(p.t0)) * kTokenRecord;
        args.n_units = nu;
        args.w_skip = w.row_bytes() - nu * w.record_bytes;
        int64_t done = 0;
        if (p.fn2_zero && rows > 1) {  // rows in pairs, then a last odd row alone
          args.w = w.records() + size_t(r * w.row_bytes() + u * w.record_bytes);
          args.out = lanes.data();
          args.n_rows = rows / 2;
          (first ? p.fn2_zero : p.fn2)(&args);
          done = rows / 2 * 2;
        }
        if (done < rows) {
          args.w = w.records() + size_t((r + done) * w.row_bytes() + u * w.record_bytes);
          args.out = lanes.data() + size_t(done) * size_t(p.n) * 16;
          args.n_rows = rows - done;
          (first ? p.fn_zero : p.fn)(&args);
        }
      }
      if (path == Path::avx512vnni)
        sum_lanes(lanes.data(), p.n, rows, y + size_t(p.t0) * size_t(ldy), ldy, r);
      else
        sum_lanes8(lanes.data(), p.n, rows, y + size_t(p.t0) * size_t(ldy), ldy, r);
    }
  }
}

}  // namespace

namespace {

// Test-only planted faults (genome.h): the factory's sandbox must survive and classify each of them.
void plant_fault(Fault f, float* y) {
  static volatile uintptr_t zero = 0;  // opaque to the compiler: a real load from address 0
  static volatile int spin = 1;        // never cleared: the hang spins until the sandbox kills the worker
  switch (f) {
    case Fault::wrong_result: y[0] = 2.0f * y[0] + 1.0f; break;
    case Fault::crash: (void)*reinterpret_cast<volatile int*>(zero); break;
    case Fault::hang:
      while (spin) {
      }
      break;
    case Fault::illegal_instruction: __builtin_trap();
    case Fault::none: break;
  }
}

}  // namespace

void run_rows(const Matrix& w, const Activations& a, float* y, int64_t ldy, int64_t r0, int64_t r1, Path path,
              const Genome& genome, bool allow_faults) {
  if (genome.fault != Fault::none && !allow_faults)
    fail("kq_gemv: genome '{}' carries a planted test fault; only the factory's sandboxed tests may run it",
         genome.serialize());
  const bool same_kind = a.format == w.format || (a.format == Format::q4_k && w.format == Format::q5_k) ||
                         (a.format == Format::q5_k && w.format == Format::q4_k);  // one activation layout
  if (!same_kind || a.cols != w.cols || a.units != w.units)
    fail("kq_gemv: activations quantized for {} with {} columns do not fit a {} matrix of {} columns",
         format_name(a.format), a.cols, format_name(w.format), w.cols);
  if (a.n < 1 || a.n > kMaxRows) fail("kq_gemv: {} activation rows; 1..{} possible", a.n, kMaxRows);
  if (r0 < 0 || r1 > w.rows || r0 > r1) fail("kq_gemv: row range [{}, {}) outside 0..{}", r0, r1, w.rows);
  if (ldy < w.rows && a.n > 1) fail("kq_gemv: output stride {} is below the {} rows", ldy, w.rows);
  if (r0 == r1) return;
  static const Path best = best_path();
  if (path != Path::scalar && path != best) require_path(path);
  if (path != Path::scalar)
    jit_rows(w, a, y, ldy, r0, r1, genome, path);
  else
    scalar_rows(w, a, y, ldy, r0, r1);
  if (genome.fault != Fault::none) plant_fault(genome.fault, y + r0);
}

void gemv(const Matrix& w, const float* x, int n, float* y, int64_t ldy, cpu::ThreadPool* pool, Activations& scratch) {
  quantize_activations(w.format, x, n, w.cols, scratch);
  const Path p = best_path();
  if (pool == nullptr || pool->size() <= 1 || w.rows < 128) {
    run_rows(w, scratch, y, ldy, 0, w.rows, p);
    return;
  }
  const int nt = pool->size();
  const int64_t per = (w.rows + nt - 1) / nt;
  const Activations* ap = &scratch;
  pool->run([&](int tid, int) {
    const int64_t a = std::min(w.rows, int64_t(tid) * per), b = std::min(w.rows, a + per);
    if (a < b) run_rows(w, *ap, y, ldy, a, b, p);
  });
}

}  // namespace genesis::kernels::kq_gemv
