// Each GPU kernel against a plain CPU reference (double sums) on small and odd shapes. Skips, saying why, where there
// is no CUDA device (this build compiles them everywhere; scripts/gpu_tests.sh runs them on a GPU machine).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/error.h"
#include "cuda/blas.h"
#include "cuda/deltanet.h"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "kernels/kq_gemv/kq_gemv.h"
#include "quant/ggml.h"
#include "quant/half.h"
#include "runtime/model/ops.h"

namespace genesis::cuda {
namespace {

#define NEED_GPU()                                                   \
  do {                                                               \
    std::string why;                                                 \
    if (device_count(&why) == 0) GTEST_SKIP() << "no CUDA device: " << why; \
    use_device(0);                                                   \
  } while (0)

std::vector<float> randoms(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

template <class T>
std::vector<T> download(const DeviceArray<T>& d, size_t n) {
  std::vector<T> h(n);
  check(cudaMemcpy(h.data(), d.data(), n * sizeof(T), cudaMemcpyDeviceToHost), "download");
  return h;
}

double max_err(const std::vector<float>& got, const std::vector<double>& want) {
  double e = 0, ref = 1e-30;
  for (size_t i = 0; i < want.size(); ++i) {
    e = std::max(e, std::fabs(double(got[i]) - want[i]));
    ref = std::max(ref, std::fabs(want[i]));
  }
  return e / ref;
}

// A product's rows against double sums: got[t * ldy + r] vs sum_k w[r, k] x[t, k] (+ bias[r]), for t < n, r < rows;
// the largest difference relative to the largest reference value.
double product_error(const std::vector<float>& got, int64_t ldy, const std::vector<float>& w,
                     const std::vector<float>& x, int64_t rows, int64_t cols, int64_t n,
                     const std::vector<float>* bias = nullptr) {
  std::vector<float> g;
  std::vector<double> want;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double acc = bias ? (*bias)[size_t(r)] : 0.0;
      for (int64_t k = 0; k < cols; ++k) acc += double(w[size_t(r * cols + k)]) * x[size_t(t * cols + k)];
      want.push_back(acc);
      g.push_back(got[size_t(t * ldy + r)]);
    }
  return max_err(g, want);
}

TEST(CudaKernels, GemvMatchesReference) {
  NEED_GPU();
  Stream s;
  for (bool bf16 : {false, true})
    for (int64_t cols : {64, 72, 100, 2048})
      for (int64_t n : {1, 3, 8, 13}) {
        const int64_t rows = 37;
        auto w = randoms(size_t(rows * cols), 1), x = randoms(size_t(n * cols), 2), b = randoms(size_t(rows), 3);
        if (bf16)
          for (float& v : w) v = quant::bf16_to_f32(quant::f32_to_bf16(v));
        DeviceArray<float> dw32, dx, dy, db;
        DeviceArray<uint16_t> dw16;
        if (bf16) {
          std::vector<uint16_t> h(w.size());
          for (size_t i = 0; i < w.size(); ++i) h[i] = quant::f32_to_bf16(w[i]);
          dw16.upload(h.data(), h.size());
        } else {
          dw32.upload(w.data(), w.size());
        }
        dx.upload(x.data(), x.size());
        db.upload(b.data(), b.size());
        const int64_t ldy = rows + 5;
        dy.resize(size_t(n * ldy));
        DeviceMatrix m{bf16 ? static_cast<const void*>(dw16.data()) : static_cast<const void*>(dw32.data()), bf16,
                       rows, cols, db.data()};
        gemv(m, dx.data(), dy.data(), n, ldy, s.get());
        s.sync("gemv");
        EXPECT_LT(product_error(download(dy, size_t(n * ldy)), ldy, w, x, rows, cols, n, &b), 1e-5)
            << "bf16 " << bf16 << " cols " << cols << " n " << n;
      }
}

TEST(CudaKernels, AddRmsNormMatchesReference) {
  NEED_GPU();
  Stream s;
  // 300: the plain kernel; 2048, 512 and 4096: a row in registers (2, 1 and 4 float4 a thread); 1000: plain again.
  for (const int64_t H : {int64_t(300), int64_t(2048), int64_t(512), int64_t(4096), int64_t(1000)}) {
  SCOPED_TRACE(H);
  const int64_t n = 3;
  auto x = randoms(size_t(n * H), 4), a = randoms(size_t(n * H), 5), b = randoms(size_t(n * H), 6),
       w = randoms(size_t(H), 7);
  DeviceArray<float> dx, da, db, dw, dn;
  dx.upload(x.data(), x.size()), da.upload(a.data(), a.size()), db.upload(b.data(), b.size());
  dw.upload(w.data(), w.size());
  dn.resize(size_t(n * H));
  add_rms_norm(dx.data(), da.data(), db.data(), dw.data(), dn.data(), n, H, 1e-6f, s.get());
  s.sync("add_rms_norm");
  const auto gx = download(dx, size_t(n * H)), gn = download(dn, size_t(n * H));
  std::vector<double> wx, wn;
  for (int64_t t = 0; t < n; ++t) {
    double ss = 0;
    std::vector<double> row(static_cast<size_t>(H));
    for (int64_t i = 0; i < H; ++i) {
      row[size_t(i)] = double(x[size_t(t * H + i)]) + (double(a[size_t(t * H + i)]) + b[size_t(t * H + i)]);
      ss += row[size_t(i)] * row[size_t(i)];
    }
    const double inv = 1.0 / std::sqrt(ss / double(H) + 1e-6);
    for (int64_t i = 0; i < H; ++i) wx.push_back(row[size_t(i)]), wn.push_back(w[size_t(i)] * row[size_t(i)] * inv);
  }
  EXPECT_LT(max_err(gx, wx), 1e-6);
  EXPECT_LT(max_err(gn, wn), 1e-5);
  }
}

// Rope + KV append + attention for rows of two sequences at different positions, with and without a window, a gate
// and per-head QK-norms, against a direct CPU computation; the fused kernel (rope_attention) for rows of distinct
// sequences the same.
TEST(CudaKernels, RopeStoreAndAttentionMatchReference) {
  NEED_GPU();
  Stream s;
  // mode 0: rope_store, attention (and its merge kernel); 1: rope_attention with the merge kernel; 2: rope_attention
  // whose split blocks merge themselves (counters).
  for (const int mode : {0, 1, 2})
  for (const bool normed : {false, true}) {
  const bool fused = mode > 0;
  SCOPED_TRACE("mode " + std::to_string(mode) + (normed ? ", QK-norm" : ""));
  const int64_t nh = 4, nkv = 2, hd = 40, rd = 20, cap = 300, layers = 2, layer = 1;
  const int64_t group = nh / nkv, qd = nh * hd, kvd = nkv * hd;
  std::vector<float> inv_freq(size_t(rd / 2));
  for (int64_t i = 0; i < rd / 2; ++i) inv_freq[size_t(i)] = float(1.0 / std::pow(10000.0, double(2 * i) / double(rd)));
  const float scaling = 1.25f;
  // Sequence A holds 290 cached positions (more than one tile of keys), B 3; the step adds rows at A's 290..291 and
  // B's 3.
  struct Row {
    int seq;
    int32_t pos;
  };
  const std::vector<Row> rows = fused ? std::vector<Row>{{0, 290}, {1, 3}} : std::vector<Row>{{0, 290}, {0, 291}, {1, 3}};
  const int64_t n = int64_t(rows.size());
  std::vector<std::vector<float>> kc(2), vc(2);
  for (int sq = 0; sq < 2; ++sq) {
    kc[size_t(sq)] = randoms(size_t(layers * nkv * cap * hd), 10 + sq);
    vc[size_t(sq)] = randoms(size_t(layers * nkv * cap * hd), 20 + sq);
  }
  auto q = randoms(size_t(n * qd), 30), k = randoms(size_t(n * kvd), 31), v = randoms(size_t(n * kvd), 32);
  auto qg = randoms(size_t(n * 2 * qd), 33);
  auto qnw = randoms(size_t(hd), 34), knw = randoms(size_t(hd), 35);
  // CPU reference of the per-head QK-norm (as the kernel: a double sum of squares, float products).
  auto norm = [&](float* x, int64_t heads, const std::vector<float>& w) {
    for (int64_t h = 0; h < heads; ++h) {
      float* p = x + h * hd;
      double ss = 0;
      for (int64_t d = 0; d < hd; ++d) ss += double(p[d]) * double(p[d]);
      const float inv = float(1.0 / std::sqrt(ss / double(hd) + 1e-6));
      for (int64_t d = 0; d < hd; ++d) p[d] = w[size_t(d)] * (p[d] * inv);
    }
  };
  // CPU reference of rope and the cache writes.
  auto rope = [&](float* x, int64_t heads, int32_t pos) {
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < rd / 2; ++i) {
        const float a = float(pos) * inv_freq[size_t(i)];
        const double c = double(float(std::cos(double(a))) * scaling), sn = double(float(std::sin(double(a))) * scaling);
        float* p = x + h * hd;
        const double x1 = p[i], x2 = p[i + rd / 2];
        p[i] = float(x1 * c - x2 * sn);
        p[i + rd / 2] = float(x2 * c + x1 * sn);
      }
  };
  auto rq = q, rk = k;
  auto rkc = kc, rvc = vc;
  const int64_t off = layer * nkv * cap * hd;
  for (int64_t t = 0; t < n; ++t) {
    if (normed) norm(&rq[size_t(t * qd)], nh, qnw), norm(&rk[size_t(t * kvd)], nkv, knw);
    rope(&rq[size_t(t * qd)], nh, rows[size_t(t)].pos);
    rope(&rk[size_t(t * kvd)], nkv, rows[size_t(t)].pos);
    for (int64_t h = 0; h < nkv; ++h)
      for (int64_t d = 0; d < hd; ++d) {
        const size_t at = size_t(off + (h * cap + rows[size_t(t)].pos) * hd + d);
        rkc[size_t(rows[size_t(t)].seq)][at] = rk[size_t(t * kvd + h * hd + d)];
        rvc[size_t(rows[size_t(t)].seq)][at] = v[size_t(t * kvd + h * hd + d)];
      }
  }
  for (int splits : {1, 5, 16})
  for (int64_t window : {int64_t(0), int64_t(7)})
    for (bool gated : {false, true}) {
      DeviceArray<float> dq, dk, dv, dqg, dout, dinv, dqn, dkn;
      dqn.upload(qnw.data(), qnw.size()), dkn.upload(knw.data(), knw.size());
      QkPrep prep;
      if (normed) prep.q_norm = dqn.data(), prep.k_norm = dkn.data();
      DeviceArray<float> dkc[2], dvc[2];
      dq.upload(q.data(), q.size()), dk.upload(k.data(), k.size()), dv.upload(v.data(), v.size());
      dqg.upload(qg.data(), qg.size()), dinv.upload(inv_freq.data(), inv_freq.size());
      dout.resize(size_t(n * qd));
      for (int sq = 0; sq < 2; ++sq) {
        dkc[sq].upload(kc[size_t(sq)].data(), kc[size_t(sq)].size());
        dvc[sq].upload(vc[size_t(sq)].data(), vc[size_t(sq)].size());
      }
      std::vector<int32_t> pos;
      std::vector<float*> kp, vp;
      for (const Row& r : rows) pos.push_back(r.pos), kp.push_back(dkc[r.seq].data()), vp.push_back(dvc[r.seq].data());
      DeviceArray<int32_t> dpos;
      DeviceArray<float*> dkp, dvp;
      dpos.upload(pos.data(), pos.size()), dkp.upload(kp.data(), kp.size()), dvp.upload(vp.data(), vp.size());
      const KvRows kv{dpos.data(), dkp.data(), dvp.data(), off, cap};
      DeviceArray<float> part(size_t(n * nh * splits * (2 + hd)));
      const std::vector<int32_t> zeros(size_t(n * nh), 0);
      DeviceArray<int32_t> counters;
      counters.upload(zeros.data(), zeros.size());
      if (fused) {
        rope_attention(dq.data(), dk.data(), dv.data(), dout.data(), n, nh, nkv, hd, rd, dinv.data(), scaling, prep, kv,
                       window, 0.3f, gated ? dqg.data() : nullptr, s.get(), splits > 1 ? part.data() : nullptr, splits,
                       mode == 2 ? counters.data() : nullptr);
      } else {
        rope_store(dq.data(), dk.data(), dv.data(), n, nh, nkv, hd, rd, dinv.data(), scaling, prep, kv, s.get());
        attention(dq.data(), dout.data(), n, nh, nkv, hd, kv, window, 0.3f, gated ? dqg.data() : nullptr, s.get(),
                  splits > 1 ? part.data() : nullptr, splits);
      }
      s.sync("rope_store + attention");
      const auto left = download(counters, zeros.size());
      EXPECT_EQ(std::count(left.begin(), left.end(), 0), int64_t(left.size())) << "counters back to 0";
      // The caches as rope_store (or the fused kernel) left them.
      for (int sq = 0; sq < 2; ++sq) {
        const auto gk = download(dkc[sq], rkc[size_t(sq)].size()), gv = download(dvc[sq], rvc[size_t(sq)].size());
        std::vector<double> want(rkc[size_t(sq)].begin(), rkc[size_t(sq)].end());
        std::vector<double> wantv(rvc[size_t(sq)].begin(), rvc[size_t(sq)].end());
        EXPECT_LT(max_err(gk, want), 1e-5) << "K cache of sequence " << sq;
        EXPECT_EQ(max_err(gv, wantv), 0.0) << "V cache of sequence " << sq;
      }
      // Attention by the definition, each row over its sequence's rows written above.
      const auto got = download(dout, size_t(n * qd));
      std::vector<double> want;
      for (int64_t t = 0; t < n; ++t)
        for (int64_t h = 0; h < nh; ++h) {
          const int sq = rows[size_t(t)].seq;
          const int64_t p = rows[size_t(t)].pos, kvh = h / group;
          const int64_t first = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
          std::vector<double> sc;
          double mx = -1e300;
          for (int64_t j = first; j <= p; ++j) {
            double dot = 0;
            for (int64_t d = 0; d < hd; ++d)
              dot += double(rq[size_t(t * qd + h * hd + d)]) * rkc[size_t(sq)][size_t(off + (kvh * cap + j) * hd + d)];
            sc.push_back(dot * 0.3);
            mx = std::max(mx, sc.back());
          }
          double sum = 0;
          for (double& x : sc) sum += (x = std::exp(x - mx));
          for (int64_t d = 0; d < hd; ++d) {
            double o = 0;
            for (int64_t j = first; j <= p; ++j)
              o += sc[size_t(j - first)] * rvc[size_t(sq)][size_t(off + (kvh * cap + j) * hd + d)];
            o /= sum;
            if (gated) o /= 1.0 + std::exp(-double(qg[size_t((t * nh + h) * 2 * hd + hd + d)]));
            want.push_back(o);
          }
        }
      EXPECT_LT(max_err(got, want), 1e-5) << "window " << window << " gated " << gated << " splits " << splits;
    }
  }
}

TEST(CudaKernels, SmallOpsMatchReference) {
  NEED_GPU();
  Stream s;
  const int64_t n = 3, heads = 2, hd = 24, H = 50;
  auto qg = randoms(size_t(n * heads * 2 * hd), 40);
  DeviceArray<float> dqg, dq;
  dqg.upload(qg.data(), qg.size());
  dq.resize(size_t(n * heads * hd));
  split_gated_q(dqg.data(), dq.data(), n, heads, hd, s.get());
  auto g = randoms(size_t(n * H), 41), u = randoms(size_t(n * H), 42), gate = randoms(size_t(n), 43);
  DeviceArray<float> dg, du, dgate;
  dg.upload(g.data(), g.size()), du.upload(u.data(), u.size()), dgate.upload(gate.data(), gate.size());
  swiglu(dg.data(), du.data(), dg.data(), n * H, s.get());
  scale_rows_sigmoid(dg.data(), dgate.data(), n, H, s.get());
  auto w = randoms(size_t(hd), 44);
  DeviceArray<float> dw;
  dw.upload(w.data(), w.size());
  rms_norm_vectors(dq.data(), n * heads, hd, dw.data(), 1e-6f, s.get());
  clip(dq.data(), n * heads * hd, 0.5f, s.get());
  const int32_t pick[] = {2, 0};
  DeviceArray<int32_t> dpick;
  DeviceArray<float> dgath;
  dpick.upload(pick, 2);
  dgath.resize(size_t(2 * H));
  gather_rows(dg.data(), dpick.data(), dgath.data(), 2, H, s.get());
  s.sync("small ops");
  std::vector<double> wq, wg;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      double ss = 0;
      for (int64_t d = 0; d < hd; ++d) ss += double(qg[size_t((t * heads + h) * 2 * hd + d)]) * qg[size_t((t * heads + h) * 2 * hd + d)];
      const double inv = 1.0 / std::sqrt(ss / double(hd) + 1e-6);
      for (int64_t d = 0; d < hd; ++d)
        wq.push_back(std::clamp(w[size_t(d)] * qg[size_t((t * heads + h) * 2 * hd + d)] * inv, -0.5, 0.5));
    }
  std::vector<double> rows(size_t(n * H));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < H; ++i) {
      const double x = g[size_t(t * H + i)];
      rows[size_t(t * H + i)] = x / (1 + std::exp(-x)) * u[size_t(t * H + i)] / (1 + std::exp(-double(gate[size_t(t)])));
    }
  for (int32_t r : pick)
    for (int64_t i = 0; i < H; ++i) wg.push_back(rows[size_t(r * H + i)]);
  EXPECT_LT(max_err(download(dq, wq.size()), wq), 1e-5);
  EXPECT_LT(max_err(download(dgath, wg.size()), wg), 1e-5);
}

// Random blocks of a GGUF format with every half-precision scale a small normal value.
std::vector<uint8_t> random_blocks(uint32_t type, int64_t blocks, std::mt19937& g) {
  const auto info = *quant::ggml_type_info(type);
  std::vector<uint8_t> bytes(size_t(blocks * info.block_bytes));
  for (auto& b : bytes) b = uint8_t(g());
  std::uniform_real_distribution<float> sc(0.001f, 0.05f);
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* p = &bytes[size_t(b * info.block_bytes)];
    auto put = [&](size_t at) {
      const uint16_t h = quant::f32_to_f16(sc(g));
      p[at] = uint8_t(h & 0xff), p[at + 1] = uint8_t(h >> 8);
    };
    if (type == 14u) put(208);  // Q6_K: d last
    else put(0);
    if (type == 3u || type == 7u || type == 12u || type == 13u) put(2);  // min / dmin
  }
  return bytes;
}

// Every block format the device dequantizes (dequantize_slots_bf16, the GEMM steps' experts), against the CPU's
// reference dequantizer (ggml's), rounded to bf16: one slot holding one row of the blocks. Random blocks with every
// half-precision scale set to a small normal value (random bits could be inf / NaN).
TEST(CudaKernels, DequantizeMatchesGgml) {
  NEED_GPU();
  Stream s;
  std::mt19937 g(5);
  for (uint32_t type : {2u, 3u, 6u, 7u, 8u, 12u, 13u, 14u}) {
    ASSERT_TRUE(can_dequantize(type));
    const auto info = *quant::ggml_type_info(type);
    const int64_t blocks = 37, n = blocks * info.block;
    const std::vector<uint8_t> bytes = random_blocks(type, blocks, g);
    std::vector<float> want(static_cast<size_t>(n));
    quant::ggml_dequantize(type, bytes.data(), want.data(), n);
    DeviceArray<uint8_t> src;
    DeviceArray<uint16_t> dst;
    DeviceArray<int32_t> slot;
    src.upload(bytes.data(), bytes.size());
    dst.resize(size_t(n));
    const int32_t zero = 0;
    slot.upload(&zero, 1);
    const ExpertMatrix m{type, 0, int64_t(bytes.size())};
    dequantize_slots_bf16(m, 1, n, src.data(), int64_t(bytes.size()), slot.data(), 1, dst.data(), n, s.get());
    s.sync("dequantize_slots_bf16");
    const auto got = download(dst, size_t(n));
    int bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float x = quant::bf16_to_f32(got[size_t(i)]), w = want[size_t(i)];
      if (std::fabs(x - w) > std::fabs(w) * (1.0f / 128) + 1e-7f) ++bad;  // one bf16 step, fma or not
    }
    EXPECT_EQ(bad, 0) << quant::ggml_type_name(type);
  }
}

// Dense matrices held as the file's blocks (DeviceMatrix::type): gemv and gemv_many against ggml's dequantizer and
// double sums, every format, 1..13 rows of x (passes of 8), a bias, three matrices of different formats in one
// launch (q, k, v of a Q4_K_M file: Q4_K, Q4_K, Q6_K), and one of them in a separate pass.
TEST(CudaKernels, BlockGemvMatchesGgml) {
  NEED_GPU();
  Stream s;
  std::mt19937 g(11);
  const int64_t cols = 512;
  auto make = [&](uint32_t type, int64_t rows, std::vector<float>& w, DeviceArray<uint8_t>& d) {
    const auto info = *quant::ggml_type_info(type);
    const auto bytes = random_blocks(type, rows * cols / info.block, g);
    w.resize(size_t(rows * cols));
    quant::ggml_dequantize(type, bytes.data(), w.data(), rows * cols);
    d.upload(bytes.data(), bytes.size());
    return DeviceMatrix{d.data(), false, rows, cols, nullptr, type, int64_t(bytes.size()) / rows};
  };
  for (uint32_t type : {2u, 3u, 6u, 7u, 8u, 12u, 13u, 14u})
    for (int64_t n : {1, 2, 5, 8, 13}) {
      const int64_t rows = 41, ldy = rows + 3;
      std::vector<float> w;
      DeviceArray<uint8_t> dw;
      DeviceArray<float> dx, dy, db;
      DeviceMatrix m = make(type, rows, w, dw);
      const auto x = randoms(size_t(n * cols), 12), b = randoms(size_t(rows), 13);
      dx.upload(x.data(), x.size());
      db.upload(b.data(), b.size());
      m.bias = db.data();
      dy.resize(size_t(n * ldy));
      gemv(m, dx.data(), dy.data(), n, ldy, s.get());
      s.sync("gemv (blocks)");
      EXPECT_LT(product_error(download(dy, size_t(n * ldy)), ldy, w, x, rows, cols, n, &b), 1e-5)
          << quant::ggml_type_name(type) << " n " << n;
    }
  // Three formats in one launch, then a block matrix beside a bf16 one (separate launches).
  for (int64_t n : {1, 8, 9}) {
    const uint32_t types[3] = {12u, 12u, 14u};
    const int64_t rows[3] = {64, 16, 24};
    std::vector<float> w[3];
    DeviceArray<uint8_t> dw[3];
    DeviceArray<float> dy[3], dx;
    GemvJob jobs[3];
    const auto x = randoms(size_t(n * cols), 14);
    dx.upload(x.data(), x.size());
    for (int j = 0; j < 3; ++j) {
      jobs[j].w = make(types[j], rows[j], w[j], dw[j]);
      dy[j].resize(size_t(n * rows[j]));
      jobs[j].y = dy[j].data();
      jobs[j].ldy = rows[j];
    }
    gemv_many(jobs, 3, dx.data(), n, s.get());
    s.sync("gemv_many (blocks)");
    for (int j = 0; j < 3; ++j)
      EXPECT_LT(product_error(download(dy[j], size_t(n * rows[j])), rows[j], w[j], x, rows[j], cols, n), 1e-5)
          << "job " << j << " n " << n;
    std::vector<uint16_t> h(w[1].size());
    for (size_t i = 0; i < h.size(); ++i) h[i] = quant::f32_to_bf16(w[1][i]);
    std::vector<float> wb(h.size());
    for (size_t i = 0; i < h.size(); ++i) wb[i] = quant::bf16_to_f32(h[i]);
    DeviceArray<uint16_t> d16;
    d16.upload(h.data(), h.size());
    GemvJob mixed[2] = {jobs[0], {DeviceMatrix{d16.data(), true, rows[1], cols}, dy[1].data(), rows[1]}};
    gemv_many(mixed, 2, dx.data(), n, s.get());
    s.sync("gemv_many (blocks and bf16)");
    EXPECT_LT(product_error(download(dy[0], size_t(n * rows[0])), rows[0], w[0], x, rows[0], cols, n), 1e-5);
    EXPECT_LT(product_error(download(dy[1], size_t(n * rows[1])), rows[1], wb, x, rows[1], cols, n), 1e-5);
  }
}

// Resident experts' products (a warp per row, blocks dequantized in registers) against ggml's dequantizer and double
// sums: every format, units of 1..8 pairs, gate and up in different formats (a Q4_K_M file's experts), rows read
// through x_row, SwiGLU fused; then down over that activation.
TEST(CudaKernels, ExpertProductsMatchGgml) {
  NEED_GPU();
  Stream s;
  std::mt19937 g(11);
  const uint32_t types[] = {2u, 3u, 6u, 7u, 8u, 12u, 13u, 14u};
  for (uint32_t ta : types) {
    const uint32_t tb = ta == 14u ? 12u : 14u;
    const auto ia = *quant::ggml_type_info(ta), ib = *quant::ggml_type_info(tb);
    // gate [I2][H] in ta, up in tb, down [H][I2] in ta (its cols I2 a multiple of ta's block).
    const int64_t H = 512, slots = 3, I2 = ia.block == 256 ? 256 : 96;
    const uint32_t td = ta;
    const auto id = ia;
    const int64_t rga = int64_t(ia.block_bytes) * H / ia.block, rgb = int64_t(ib.block_bytes) * H / ib.block;
    const int64_t rd = int64_t(id.block_bytes) * I2 / id.block;
    const int64_t slot_bytes = I2 * (rga + rgb) + H * rd;
    std::vector<uint8_t> arena;
    std::vector<float> wa(size_t(slots * I2 * H)), wb(wa.size()), wd(size_t(slots * H * I2));
    for (int64_t sl = 0; sl < slots; ++sl) {
      const auto a = random_blocks(ta, I2 * H / ia.block, g), b = random_blocks(tb, I2 * H / ib.block, g);
      const auto d = random_blocks(td, H * I2 / id.block, g);
      for (const auto* v : {&a, &b, &d}) arena.insert(arena.end(), v->begin(), v->end());
      quant::ggml_dequantize(ta, a.data(), &wa[size_t(sl * I2 * H)], I2 * H);
      quant::ggml_dequantize(tb, b.data(), &wb[size_t(sl * I2 * H)], I2 * H);
      quant::ggml_dequantize(td, d.data(), &wd[size_t(sl * H * I2)], H * I2);
    }
    // Pairs: 13 of them over units of 8, 1, 4 (slots 2, 0, 2); x rows 0..5 picked through x_row.
    const std::vector<ExpertUnit> units = {{2, 0, 8}, {0, 8, 1}, {2, 9, 4}};
    const int64_t Q = 13, X = 6;
    std::vector<int32_t> x_row(static_cast<size_t>(Q));
    for (int64_t q = 0; q < Q; ++q) x_row[size_t(q)] = int32_t((q * 5 + 1) % X);
    const auto x = randoms(size_t(X * H), 3);
    DeviceArray<uint8_t> darena;
    DeviceArray<float> dx, act, y;
    DeviceArray<int32_t> dunits, drow;
    darena.upload(arena.data(), arena.size());
    dx.upload(x.data(), x.size());
    dunits.upload(reinterpret_cast<const int32_t*>(units.data()), units.size() * 3);
    drow.upload(x_row.data(), x_row.size());
    act.resize(size_t(Q * I2)), y.resize(size_t(Q * H));
    const ExpertMatrix mg{ta, 0, rga}, mu{tb, I2 * rga, rgb}, md{td, I2 * (rga + rgb), rd};
    const auto* du = reinterpret_cast<const ExpertUnit*>(dunits.data());
    expert_gate_up(darena.data(), slot_bytes, mg, mu, I2, H, du, int64_t(units.size()), 8, dx.data(), drow.data(),
                   act.data(), s.get());
    expert_down(darena.data(), slot_bytes, md, H, I2, du, int64_t(units.size()), 8, act.data(), y.data(), s.get());
    s.sync("expert products");
    const auto got_act = download(act, size_t(Q * I2));
    std::vector<double> want_act(size_t(Q * I2)), want_y(size_t(Q * H));
    for (const ExpertUnit& u : units)
      for (int32_t q = u.q0; q < u.q0 + u.rows; ++q) {
        for (int64_t r = 0; r < I2; ++r) {
          double sa = 0, sb = 0;
          for (int64_t k = 0; k < H; ++k) {
            const double xv = x[size_t(x_row[size_t(q)] * H + k)];
            sa += double(wa[size_t((u.slot * I2 + r) * H + k)]) * xv;
            sb += double(wb[size_t((u.slot * I2 + r) * H + k)]) * xv;
          }
          want_act[size_t(q * I2 + r)] = sa / (1.0 + std::exp(-sa)) * sb;
        }
        for (int64_t r = 0; r < H; ++r) {  // down over the GPU's activation (its own error checked above)
          double sd = 0;
          for (int64_t k = 0; k < I2; ++k)
            sd += double(wd[size_t((u.slot * H + r) * I2 + k)]) * double(got_act[size_t(q * I2 + k)]);
          want_y[size_t(q * H + r)] = sd;
        }
      }
    EXPECT_LT(max_err(got_act, want_act), 1e-5) << quant::ggml_type_name(ta) << " + " << quant::ggml_type_name(tb);
    // The decode kernel (units of one pair, max_rows 1) gives the same activations.
    std::vector<ExpertUnit> ones;
    for (const ExpertUnit& u : units)
      for (int32_t q = u.q0; q < u.q0 + u.rows; ++q) ones.push_back({u.slot, q, 1});
    DeviceArray<int32_t> dones;
    DeviceArray<float> act1;
    dones.upload(reinterpret_cast<const int32_t*>(ones.data()), ones.size() * 3);
    act1.resize(size_t(Q * I2));
    expert_gate_up(darena.data(), slot_bytes, mg, mu, I2, H, reinterpret_cast<const ExpertUnit*>(dones.data()),
                   int64_t(ones.size()), 1, dx.data(), drow.data(), act1.data(), s.get());
    s.sync("expert products, one row per unit");
    EXPECT_LT(max_err(download(act1, size_t(Q * I2)), want_act), 1e-5) << quant::ggml_type_name(ta);
    EXPECT_LT(max_err(download(y, want_y.size()), want_y), 1e-5) << quant::ggml_type_name(td);
  }
}

// copy_mapped: a kernel reading mapped pinned memory, whole 16-byte words and odd tails and offsets.
TEST(CudaKernels, CopyMappedCopiesBytes) {
  NEED_GPU();
  Stream s;
  PinnedArray<uint8_t> h;
  h.resize(100003);
  for (size_t i = 0; i < h.size(); ++i) h.data()[i] = uint8_t(i * 7 + 3);
  for (auto [off, bytes] : {std::pair<size_t, size_t>{0, 65536}, {0, 100003}, {5, 99998}, {16, 17}, {3, 1}}) {
    const size_t lead = 3 * (off % 2);  // an odd destination offset where the source's is odd
    const std::vector<uint8_t> fill(bytes + 8, 0xEE);
    DeviceArray<uint8_t> d(fill.size());
    d.upload(fill.data(), fill.size());
    copy_mapped(d.data() + lead, h.device() + off, bytes, s.get());
    s.sync("copy_mapped");
    const auto got = download(d, fill.size());
    EXPECT_EQ(0, std::memcmp(got.data() + lead, h.data() + off, bytes)) << off << " " << bytes;
    for (size_t i = 0; i < got.size(); ++i)
      if (i < lead || i >= lead + bytes) ASSERT_EQ(got[i], 0xEE) << "byte " << i << " outside the copy";
  }
}

// The CPU's kq_gemv records restored on the device (the direct prefill's copies): byte for byte the file's blocks,
// each expert's gate and up rows into two parts of its slot, for every format, a padded legacy unit included.
TEST(CudaKernels, RestoreRecordsGiveTheFileBlocks) {
  NEED_GPU();
  namespace kg = kernels::kq_gemv;
  Stream s;
  std::mt19937 gen(5);
  for (kg::Format f : kg::kFormats) {
    SCOPED_TRACE(kg::format_name(f));
    const uint32_t t = kg::ggml_type(f);
    const auto info = quant::ggml_type_info(t);
    ASSERT_TRUE(info.has_value());
    const int64_t E = 3, I = 5, rows = 2 * I, cols = kg::is_k_quant(f) ? 512 : 224;  // 224: seven 32-blocks
    const int64_t row_stored = cols / info->block * info->block_bytes;
    std::vector<uint8_t> stored(size_t(E * rows * row_stored));
    for (uint8_t& b : stored) b = uint8_t(gen());
    const size_t eb = kg::record_bytes_of(t, rows, cols);
    std::vector<uint8_t> rec(size_t(E) * eb + 64, 0);
    for (int64_t e = 0; e < E; ++e)
      kg::make_matrix_in(t, rows, cols, stored.data() + e * rows * row_stored, size_t(rows * row_stored),
                         rec.data() + size_t(e) * eb, nullptr);
    const kg::RecordBits rb = kg::record_bits(f);
    const std::vector<int32_t> map = make_record_map(rb.source.data(), rb.invert.data(), rb.stored_bytes);
    DeviceArray<uint8_t> drec(rec.size()), arena;
    DeviceArray<int32_t> dmap(map.size());
    drec.upload(rec.data(), rec.size());
    dmap.upload(map.data(), map.size());
    // A slot: 7 bytes of gap, the up rows, 13 bytes, the gate rows, 9 bytes (offsets as odd as the code allows).
    const int64_t up_at = 7, gate_at = up_at + I * row_stored + 13, slot_bytes = gate_at + I * row_stored + 9;
    const std::vector<uint8_t> fill(size_t(E * slot_bytes), 0xEE);
    arena.resize(fill.size());
    arena.upload(fill.data(), fill.size());
    RecordRows r;
    r.rec = drec.data();
    r.expert_bytes = int64_t(eb);
    r.record_bytes = rb.record_bytes;
    r.rows = rows;
    r.units = (cols + (kg::is_k_quant(f) ? 255 : 127)) / (kg::is_k_quant(f) ? 256 : 128);
    r.map = dmap.data();
    r.stored_bytes = rb.stored_bytes;
    r.last_bytes = int(row_stored - (r.units - 1) * rb.stored_bytes);
    r.split = I;
    r.first = gate_at;
    r.second = up_at;
    r.row_bytes = row_stored;
    restore_records(r, E, arena.data(), slot_bytes, s.get());
    s.sync("restore_records");
    const auto got = download(arena, fill.size());
    for (int64_t e = 0; e < E; ++e) {
      const uint8_t* slot = got.data() + e * slot_bytes;
      const uint8_t* want = stored.data() + e * rows * row_stored;
      ASSERT_EQ(0, std::memcmp(slot + gate_at, want, size_t(I * row_stored))) << "expert " << e << " gate";
      ASSERT_EQ(0, std::memcmp(slot + up_at, want + I * row_stored, size_t(I * row_stored))) << "expert " << e << " up";
      for (int64_t i = 0; i < slot_bytes; ++i) {
        const bool gap = i < up_at || (i >= up_at + I * row_stored && i < gate_at) || i >= gate_at + I * row_stored;
        if (gap) ASSERT_EQ(slot[i], 0xEE) << "expert " << e << " byte " << i << " outside the rows";
      }
    }
  }
}

// The device's top-k against the host's route_top_k: the same experts in the same order (ties included: equal
// logits go to the lower id), the same weights, and the pair lists the expert kernels read.
TEST(CudaKernels, RouteTopKMatchesTheHost) {
  NEED_GPU();
  Stream s;
  for (const auto& [E, k, renorm] :
       {std::tuple{128, 8, true}, std::tuple{60, 4, false}, std::tuple{512, 10, true}, std::tuple{16, 4, true}}) {
    const int64_t n = 3, Q = n * k + 5;
    auto logits = randoms(size_t(n * E), 40 + E);
    logits[5] = logits[9] = logits[E + 3] = logits[E + 7] = 4.0f;  // ties among the largest
    if (E == 16)  // row 2: two finite logits for k = 4 (the rest tie at probability 0: the lowest ids, none twice)
      for (int e = 0; e < E; ++e)
        if (e != 6 && e != 11) logits[size_t(2 * E + e)] = -INFINITY;
    std::vector<int32_t> slot(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e) slot[size_t(e)] = (e * 7) % E;
    DeviceArray<float> dl;
    DeviceArray<int32_t> dslot, lists, chosen;
    dl.upload(logits.data(), logits.size()), dslot.upload(slot.data(), slot.size());
    lists.resize(size_t(6 * Q)), chosen.resize(size_t(n * k));
    route_top_k(dl.data(), n, E, k, renorm, dslot.data(), lists.data(), Q, chosen.data(), s.get());
    s.sync("route_top_k");
    const auto got = download(lists, size_t(6 * Q));
    const auto ids = download(chosen, size_t(n * k));
    for (int64_t t = 0; t < n; ++t) {
      const auto want = runtime::route_top_k(&logits[size_t(t * E)], E, k, renorm);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t q = t * k + j;
        EXPECT_EQ(ids[size_t(q)], want[size_t(j)].first) << "E " << E << " row " << t << " rank " << j;
        float w;
        std::memcpy(&w, &got[size_t(Q + q)], 4);
        EXPECT_NEAR(w, want[size_t(j)].second, 1e-6f * std::max(1.0f, want[size_t(j)].second));
        EXPECT_EQ(got[size_t(q)], q);
        EXPECT_EQ(got[size_t(2 * Q + q)], t);
        EXPECT_EQ(got[size_t(3 * Q + 3 * q)], slot[size_t(want[size_t(j)].first)]);
        EXPECT_EQ(got[size_t(3 * Q + 3 * q + 1)], q);
        EXPECT_EQ(got[size_t(3 * Q + 3 * q + 2)], 1);
      }
      std::vector<int32_t> row(ids.begin() + t * k, ids.begin() + (t + 1) * k);
      std::sort(row.begin(), row.end());
      EXPECT_EQ(std::adjacent_find(row.begin(), row.end()), row.end()) << "an expert chosen twice, E " << E;
    }
  }
}

// combine_pairs skips entries < 0 and accumulates when asked (the resident experts' sum joins the CPU's).
TEST(CudaKernels, CombinePairsSkipsAndAccumulates) {
  NEED_GPU();
  Stream s;
  const int64_t n = 3, k = 2, H = 70;
  const auto y = randoms(size_t(4 * H), 8), base = randoms(size_t(n * H), 9);
  const std::vector<int32_t> row_pairs = {0, -1, -1, -1, 3, 1};
  const std::vector<float> w = {0.5f, 0.25f, 0.0f, 2.0f};
  DeviceArray<float> dy, dw, out;
  DeviceArray<int32_t> drp;
  dy.upload(y.data(), y.size()), dw.upload(w.data(), w.size()), drp.upload(row_pairs.data(), row_pairs.size());
  out.upload(base.data(), base.size());
  combine_pairs(dy.data(), drp.data(), dw.data(), n, k, H, out.data(), s.get(), true);
  s.sync("combine_pairs");
  std::vector<double> want(size_t(n * H));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < H; ++i) {
      double v = base[size_t(t * H + i)];
      for (int64_t j = 0; j < k; ++j)
        if (const int32_t p = row_pairs[size_t(t * k + j)]; p >= 0) v += double(w[size_t(p)]) * y[size_t(p * H + i)];
      want[size_t(t * H + i)] = v;
    }
  EXPECT_LT(max_err(download(out, want.size()), want), 1e-6);
}

// The large steps' pieces: a list of slots' matrices dequantized (a part at its offset in each slot) equals ggml's
// values rounded to bf16; the bf16 conversion rounds to nearest even and hi + lo carries x within 2^-15; SwiGLU over
// [gate | up] rows (hi + lo too); bias rows with a stride.
TEST(CudaKernels, LargeStepPiecesMatchTheirReferences) {
  NEED_GPU();
  Stream s;
  std::mt19937 g(11);
  for (uint32_t type : {8u, 12u, 14u}) {
    // Slots of [gate 6 x C][down C x 6]-like parts; the list's second part (rows R of cols C) is checked.
    const auto info = *quant::ggml_type_info(type);
    const int64_t C = 2 * info.block, R = 6, row_bytes = C / info.block * info.block_bytes, part = R * row_bytes;
    const int64_t slot_bytes = 2 * part + 10, slots = 5, n = R * C;
    std::vector<uint8_t> arena(size_t(slots * slot_bytes));
    for (int64_t sl = 0; sl < slots; ++sl) {
      const auto b = random_blocks(type, n / info.block, g);
      std::memcpy(&arena[size_t(sl * slot_bytes + part)], b.data(), b.size());  // the second part of each slot
    }
    const std::vector<int32_t> list = {3, 0, 4};
    DeviceArray<uint8_t> da;
    DeviceArray<int32_t> dl;
    DeviceArray<uint16_t> out;
    da.upload(arena.data(), arena.size()), dl.upload(list.data(), list.size());
    const int64_t stride = n + 64;
    out.resize(size_t(3 * stride));
    const ExpertMatrix m{type, part, row_bytes};
    dequantize_slots_bf16(m, R, C, da.data(), slot_bytes, dl.data(), 3, out.data(), stride, s.get());
    s.sync("dequantize_slots_bf16");
    const auto got = download(out, size_t(3 * stride));
    for (int j = 0; j < 3; ++j) {
      std::vector<float> want(static_cast<size_t>(n));
      quant::ggml_dequantize(type, &arena[size_t(list[size_t(j)] * slot_bytes + part)], want.data(), n);
      int bad = 0;
      for (int64_t i = 0; i < n; ++i) {
        const float x = quant::bf16_to_f32(got[size_t(j * stride + i)]), w = want[size_t(i)];
        if (std::fabs(x - w) > std::fabs(w) * (1.0f / 128) + 1e-7f) ++bad;  // one bf16 step, fma or not
      }
      EXPECT_EQ(bad, 0) << quant::ggml_type_name(type) << " entry " << j;
    }
  }
  const int64_t rows = 3, I = 37;
  const auto y = randoms(size_t(rows * 2 * I), 12, 3.0f);
  DeviceArray<float> dy;
  DeviceArray<uint16_t> act, act_lo, yb, yb_lo;
  dy.upload(y.data(), y.size());
  act.resize(size_t(rows * I)), act_lo.resize(size_t(rows * I)), yb.resize(y.size()), yb_lo.resize(y.size());
  swiglu_halves_bf16(dy.data(), rows, I, act.data(), s.get(), act_lo.data());
  convert_bf16(dy.data(), yb.data(), int64_t(y.size()), s.get(), yb_lo.data());
  s.sync("swiglu_halves_bf16, convert_bf16");
  const auto a = download(act, size_t(rows * I)), b = download(yb, y.size());
  const auto al = download(act_lo, size_t(rows * I)), bl = download(yb_lo, y.size());
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = 0; i < I; ++i) {
      const double gt = y[size_t(t * 2 * I + i)], u = y[size_t(t * 2 * I + I + i)];
      const double want = gt / (1.0 + std::exp(-gt)) * u;
      EXPECT_NEAR(quant::bf16_to_f32(a[size_t(t * I + i)]), want, std::fabs(want) / 128 + 1e-6) << t << " " << i;
      EXPECT_NEAR(quant::bf16_to_f32(a[size_t(t * I + i)]) + quant::bf16_to_f32(al[size_t(t * I + i)]), want,
                  std::fabs(want) * 1e-5 + 1e-6)
          << t << " " << i;
    }
  for (size_t i = 0; i < y.size(); ++i) {
    ASSERT_EQ(b[i], quant::f32_to_bf16(y[i])) << i;
    ASSERT_NEAR(quant::bf16_to_f32(b[i]) + quant::bf16_to_f32(bl[i]), y[i], std::fabs(y[i]) / 32768) << i;
  }
  const auto bias = randoms(size_t(I), 13);
  DeviceArray<float> db, dz;
  db.upload(bias.data(), bias.size());
  const int64_t ldy = I + 5;
  const auto z = randoms(size_t(rows * ldy), 14);
  dz.upload(z.data(), z.size());
  add_bias(dz.data(), db.data(), rows, I, ldy, s.get());
  s.sync("add_bias");
  const auto zz = download(dz, z.size());
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = 0; i < ldy; ++i)
      EXPECT_FLOAT_EQ(zz[size_t(t * ldy + i)], z[size_t(t * ldy + i)] + (i < I ? bias[size_t(i)] : 0.0f));
}

// Gated DeltaNet's conv and delta rule over two segments (one fresh, one continuing from given states), both projection
// layouts, a value head dim that leaves some of the block's threads without a column, then a second step from the
// states the first left: against the definition in double (deltanet.h).
TEST(CudaKernels, DeltaNetMatchesReference) {
  NEED_GPU();
  for (const bool fused : {false, true}) {
    DeltaShape sh{2, 4, 16, 24, 4, fused};
    ASSERT_EQ(deltanet_unsupported(sh, 0), "");
    const int64_t nk = sh.nk, nv = sh.nv, dk = sh.dk, dv = sh.dv, K = sh.kernel, r = nv / nk;
    const int64_t KD = nk * dk, VD = nv * dv, CD = 2 * KD + VD, QKVZ = 2 * KD + 2 * VD, n = 8, layers = 2, slot = 1;
    const int64_t ld = fused ? QKVZ : CD, ldz = fused ? QKVZ : VD;
    const int32_t segs_h[] = {2, 0, 5, 1, 5, 3, 0};  // rows 0-4 fresh, rows 5-7 continuing
    const auto w = randoms(size_t(CD * K), 1, 0.5f), dtb = randoms(size_t(nv), 2), nw = randoms(size_t(dv), 3);
    std::vector<float> aneg(static_cast<size_t>(nv));
    for (int64_t h = 0; h < nv; ++h) aneg[size_t(h)] = -std::exp(0.3f * float(h) - 0.5f);
    // States of the continuing segment's sequence (both layers; the kernel uses `slot`).
    std::vector<float> conv1 = randoms(size_t(layers * (K - 1) * CD), 4), rec1 = randoms(size_t(layers * nv * dk * dv), 5, 0.1f);
    std::vector<float> conv0(conv1.size(), 7.0f), rec0(rec1.size(), 7.0f);  // garbage: a fresh segment ignores it
    DeviceArray<float> dw, dtbd, nwd, anegd, dconv0, dconv1, drec0, drec1, dsrc, dz, dba, dout, dcore;
    dw.upload(w.data(), w.size()), dtbd.upload(dtb.data(), dtb.size()), nwd.upload(nw.data(), nw.size());
    anegd.upload(aneg.data(), aneg.size());
    dconv0.upload(conv0.data(), conv0.size()), dconv1.upload(conv1.data(), conv1.size());
    drec0.upload(rec0.data(), rec0.size()), drec1.upload(rec1.data(), rec1.size());
    DeviceArray<int32_t> dseg;
    dseg.upload(segs_h, 7);
    float* cp[] = {dconv0.data(), dconv1.data()};
    float* rp[] = {drec0.data(), drec1.data()};
    DeviceArray<float*> dcp, drp;
    dcp.upload(cp, 2), drp.upload(rp, 2);
    const DeltaSegments segs{dseg.data(), dcp.data(), drp.data()};
    // Reference states: sequence 0 starts at zero.
    std::vector<double> cs[2], rs[2];
    for (int q = 0; q < 2; ++q) {
      cs[q].assign(size_t((K - 1) * CD), 0.0), rs[q].assign(size_t(nv * dk * dv), 0.0);
      if (q == 1) {
        for (size_t i = 0; i < cs[q].size(); ++i) cs[q][i] = conv1[size_t(slot * (K - 1) * CD) + i];
        for (size_t i = 0; i < rs[q].size(); ++i) rs[q][i] = rec1[size_t(slot * nv * dk * dv) + i];
      }
    }
    auto silu = [](double x) { return x / (1 + std::exp(-x)); };
    for (int step = 0; step < 2; ++step) {
      const auto src = randoms(size_t(n * ld), 10 + step), ba = randoms(size_t(n * 2 * nv), 20 + step);
      const auto zsep = randoms(size_t(n * VD), 30 + step);
      dsrc.upload(src.data(), src.size()), dba.upload(ba.data(), ba.size()), dz.upload(zsep.data(), zsep.size());
      dout.resize(size_t(n * CD)), dcore.resize(size_t(n * VD));
      deltanet_conv(dsrc.data(), ld, dw.data(), dout.data(), segs, n, slot, sh, nullptr);
      deltanet_rule(dout.data(), dba.data(), fused ? dsrc.data() : dz.data(), ldz, anegd.data(), dtbd.data(),
                    nwd.data(), 1e-6f, dcore.data(), segs, n, slot, sh, nullptr);
      const auto got = download(dcore, size_t(n * VD));
      std::vector<double> want(static_cast<size_t>(n * VD));
      auto at = [&](int64_t ch) -> int64_t {  // conv channel -> column of the projection's row
        if (!fused) return ch;
        const int64_t gs = 2 * dk + 2 * r * dv;
        if (ch < KD) return ch / dk * gs + ch % dk;
        if (ch < 2 * KD) return (ch - KD) / dk * gs + dk + (ch - KD) % dk;
        return (ch - 2 * KD) / (r * dv) * gs + 2 * dk + (ch - 2 * KD) % (r * dv);
      };
      for (int q = 0; q < 2; ++q) {
        const int64_t row0 = segs_h[1 + 3 * q], rows = segs_h[2 + 3 * q];
        std::vector<double> co(static_cast<size_t>(rows * CD));
        for (int64_t ch = 0; ch < CD; ++ch) {
          std::vector<double> win(static_cast<size_t>(K - 1));
          for (int64_t j = 0; j < K - 1; ++j) win[size_t(j)] = cs[q][size_t(j * CD + ch)];
          for (int64_t t = 0; t < rows; ++t) {
            const double x = src[size_t((row0 + t) * ld + at(ch))];
            double acc = w[size_t(ch * K + K - 1)] * x;
            for (int64_t j = 0; j < K - 1; ++j) acc += w[size_t(ch * K + j)] * win[size_t(j)];
            co[size_t(t * CD + ch)] = silu(acc);
            win.erase(win.begin()), win.push_back(x);
          }
          for (int64_t j = 0; j < K - 1; ++j) cs[q][size_t(j * CD + ch)] = win[size_t(j)];
        }
        for (int64_t h = 0; h < nv; ++h) {
          const int64_t kh = h / r, j = h % r;
          double* S = &rs[q][size_t(h * dk * dv)];
          for (int64_t t = 0; t < rows; ++t) {
            const int64_t row = row0 + t;
            std::vector<double> qv(static_cast<size_t>(dk)), kv(static_cast<size_t>(dk));
            double qq = 0, kk = 0;
            for (int64_t i = 0; i < dk; ++i) {
              qv[size_t(i)] = co[size_t(t * CD + kh * dk + i)], kv[size_t(i)] = co[size_t(t * CD + KD + kh * dk + i)];
              qq += qv[size_t(i)] * qv[size_t(i)], kk += kv[size_t(i)] * kv[size_t(i)];
            }
            for (int64_t i = 0; i < dk; ++i) qv[size_t(i)] /= std::sqrt(qq + 1e-6) * std::sqrt(double(dk)), kv[size_t(i)] /= std::sqrt(kk + 1e-6);
            const double b = ba[size_t(row * 2 * nv + kh * 2 * r + j)], a = ba[size_t(row * 2 * nv + kh * 2 * r + r + j)] + dtb[size_t(h)];
            const double beta = 1 / (1 + std::exp(-b)), d = std::exp(aneg[size_t(h)] * std::log1p(std::exp(a)));
            std::vector<double> o(static_cast<size_t>(dv));
            double oo = 0;
            for (int64_t c = 0; c < dv; ++c) {
              double sk = 0, sq = 0;
              for (int64_t i = 0; i < dk; ++i) sk += S[i * dv + c] * kv[size_t(i)], sq += S[i * dv + c] * qv[size_t(i)];
              double qk = 0;
              for (int64_t i = 0; i < dk; ++i) qk += qv[size_t(i)] * kv[size_t(i)];
              const double delta = beta * (co[size_t(t * CD + 2 * KD + h * dv + c)] - d * sk);
              o[size_t(c)] = d * sq + qk * delta;
              for (int64_t i = 0; i < dk; ++i) S[i * dv + c] = d * S[i * dv + c] + kv[size_t(i)] * delta;
              oo += o[size_t(c)] * o[size_t(c)];
            }
            for (int64_t c = 0; c < dv; ++c) {
              const double zv = fused ? src[size_t(row * ld + kh * (2 * dk + 2 * r * dv) + 2 * dk + r * dv + j * dv + c)]
                                      : zsep[size_t(row * VD + h * dv + c)];
              want[size_t(row * VD + h * dv + c)] = o[size_t(c)] / std::sqrt(oo / double(dv) + 1e-6) * nw[size_t(c)] * silu(zv);
            }
          }
        }
      }
      const double e = max_err(got, want);
      EXPECT_LT(e, 2e-5) << "fused " << fused << " step " << step;
      // Step 2 continues both sequences: neither is fresh now.
      const int32_t again[] = {2, 0, 5, 0, 5, 3, 0};
      dseg.upload(again, 7);
    }
    // The states the kernels left against the reference's.
    const auto rec_got = download(drec0, rec0.size());
    std::vector<float> r0(rec_got.begin() + slot * nv * dk * dv, rec_got.begin() + (slot + 1) * nv * dk * dv);
    EXPECT_LT(max_err(r0, rs[0]), 2e-5) << "fused " << fused;
    const auto conv_got = download(dconv1, conv1.size());
    std::vector<float> c1(conv_got.begin() + slot * (K - 1) * CD, conv_got.begin() + (slot + 1) * (K - 1) * CD);
    EXPECT_LT(max_err(c1, cs[1]), 1e-6) << "fused " << fused;
  }
}

// cuBLAS's products (opened at run time): bf16 and fp32 against double sums of the same values, with a row stride.
TEST(CudaBlas, ProductsMatchTheHost) {
  NEED_GPU();
  std::string why;
  Blas* blas = Blas::get(&why);
  if (!blas) GTEST_SKIP() << "no cuBLAS: " << why;
  Stream s;
  const int64_t rows = 45, cols = 72, n = 19, ldy = 50;
  auto w = randoms(size_t(rows * cols), 15), x = randoms(size_t(n * cols), 16);
  std::vector<uint16_t> wb(w.size()), xb(x.size());
  for (size_t i = 0; i < w.size(); ++i) wb[i] = quant::f32_to_bf16(w[i]), w[i] = quant::bf16_to_f32(wb[i]);
  for (size_t i = 0; i < x.size(); ++i) xb[i] = quant::f32_to_bf16(x[i]);
  DeviceArray<float> dw, dx, dy;
  DeviceArray<uint16_t> dwb, dxb;
  dw.upload(w.data(), w.size()), dx.upload(x.data(), x.size()), dwb.upload(wb.data(), wb.size());
  dxb.upload(xb.data(), xb.size());
  dy.resize(size_t(n * ldy));
  for (const bool bf16 : {false, true}) {
    if (bf16) blas->gemm_bf16(dwb.data(), rows, cols, dxb.data(), n, dy.data(), ldy, s.get());
    else blas->gemm_f32(dw.data(), rows, cols, dx.data(), n, dy.data(), ldy, s.get());
    s.sync("cuBLAS");
    std::vector<float> xr = x;  // the values the product saw
    if (bf16)
      for (size_t i = 0; i < xr.size(); ++i) xr[i] = quant::bf16_to_f32(xb[i]);
    EXPECT_LT(product_error(download(dy, size_t(n * ldy)), ldy, w, xr, rows, cols, n), 1e-5) << (bf16 ? "bf16" : "f32");
  }
}

TEST(CudaDevice, ErrorsAreGenesisErrors) {
  std::string why;
  if (device_count(&why) == 0) {
    EXPECT_FALSE(why.empty());
    EXPECT_THROW(use_device(0), Error);
    return;
  }
  EXPECT_THROW(use_device(1000), Error);
}

}  // namespace
}  // namespace genesis::cuda
