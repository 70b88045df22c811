// bf16 non-expert matrices: the product equals the fp32 product of the same (widened) values up to summation order,
// with and without threads, for 1 and several tokens; a bf16 checkpoint gives the logits of its fp32 widening.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "cpu/isa.h"
#include "cpu/thread_pool.h"
#include "common/error.h"
#include "kernels/float_dense/float_dense.h"
#include "kernels/kq_gemv/kq_gemv.h"
#include "kernels/q8_gemv/q8_gemv.h"
#include "runtime/model/dense.h"
#include "runtime/model/stages.h"
#include "runtime/model/forward.h"
#include "runtime/model/memory_source.h"
#include "runtime/model/ops.h"

namespace genesis::runtime {
namespace {

uint16_t bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

TEST(DenseBf16, MatchesFp32OfTheSameValues) {
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  cpu::ThreadPool pool(2);
  for (int64_t rows : {1, 63, 200}) {
    for (int64_t cols : {7, 64, 333}) {
      std::vector<uint16_t> w16;
      std::vector<float> w32, bias;
      for (int64_t i = 0; i < rows * cols; ++i) {
        w16.push_back(bf16(g(rng)));
        const uint32_t u = uint32_t(w16.back()) << 16;
        float v;
        std::memcpy(&v, &u, 4);
        w32.push_back(v);
      }
      for (int64_t r = 0; r < rows; ++r) bias.push_back(g(rng));
      const Dense b(kernels::float_dense::make_bf16(rows, cols, w16), bias),
          f(kernels::float_dense::make_f32(rows, cols, w32), bias);
      for (int64_t n : {1, 5, 17}) {
        std::vector<float> x(size_t(n * cols)), yb(size_t(n * rows)), yf(size_t(n * rows)), yp(size_t(n * rows)),
            yfp(size_t(n * rows));
        for (auto& v : x) v = g(rng);
        dense_product(b, x.data(), yb.data(), n, nullptr);
        dense_product(b, x.data(), yp.data(), n, &pool);
        dense_product(f, x.data(), yf.data(), n, nullptr);
        dense_product(f, x.data(), yfp.data(), n, &pool);
        for (size_t i = 0; i < yf.size(); ++i) {
          EXPECT_NEAR(yb[i], yf[i], 1e-4 * (1 + std::fabs(yf[i]))) << rows << "x" << cols << " n=" << n;
          // The register tiles give each output the same sum whatever the split; OpenBLAS's sgemm (from 16 rows of x)
          // may sum an edge tile in another order.
          if (n < kernels::kGemmRows) {
            EXPECT_EQ(yb[i], yp[i]) << "threads change nothing";
            // fp32 on our tiles (AVX2 or AVX-512); OpenBLAS's sgemv, where no tile serves, sums by its own blocks.
            if (cpu::mayiuse(cpu::Isa::avx2) && cpu::mayiuse(cpu::Isa::fma)) {
              EXPECT_EQ(yf[i], yfp[i]) << "threads change nothing (fp32)";
            }
          } else {
            EXPECT_NEAR(yb[i], yp[i], 1e-5 * (1 + std::fabs(yf[i])));
          }
        }
      }
    }
  }
}

// One region over several matrices (q, k, v) gives each matrix's own product, bit for bit below 16 rows of x, for bf16, fp32, int8
// blocks and a mix of families (each activation kind prepared once), for few rows and for the widened-GEMM rows.
TEST(DenseProducts, FusedRegionEqualsOneProductEach) {
  std::mt19937 rng(9);
  std::normal_distribution<float> g;
  cpu::ThreadPool pool(2);
  enum Kind { kBf16, kF32, kQ8, kMixed };
  for (Kind kind : {kBf16, kF32, kQ8, kMixed}) {
    std::vector<Dense> ds(3);
    const int64_t cols = 96, rows[3] = {80, 16, 33};
    for (int i = 0; i < 3; ++i) {
      std::vector<float> w(size_t(rows[i] * cols)), bias;
      for (auto& v : w) v = g(rng);
      if (i == 1)
        for (int64_t r = 0; r < rows[i]; ++r) bias.push_back(g(rng));
      const Kind k = kind == kMixed ? Kind(i) : kind;
      std::vector<uint16_t> w16;
      for (float v : w) w16.push_back(bf16(v));
      if (k == kQ8)
        ds[size_t(i)] = Dense(kernels::q8_gemv::make_linear(std::make_shared<const kernels::q8_gemv::Q8Matrix>(
                                  kernels::q8_gemv::quantize(w.data(), rows[i], cols))),
                              bias);
      else if (k == kF32)
        ds[size_t(i)] = Dense(kernels::float_dense::make_f32(rows[i], cols, w), bias);
      else
        ds[size_t(i)] = Dense(kernels::float_dense::make_bf16(rows[i], cols, w16), bias);
    }
    for (int64_t n : {1, 3, 20}) {
      std::vector<float> x(size_t(n * cols));
      for (auto& v : x) v = g(rng);
      std::vector<std::vector<float>> fused(3), alone(3);
      std::vector<DenseJob> jobs;
      for (int i = 0; i < 3; ++i) {
        fused[size_t(i)].resize(size_t(n * rows[i]));
        alone[size_t(i)].resize(size_t(n * rows[i]));
        jobs.push_back({&ds[size_t(i)], fused[size_t(i)].data()});
        dense_product(ds[size_t(i)], x.data(), alone[size_t(i)].data(), n, &pool);
      }
      dense_products(jobs, x.data(), n, &pool);
      for (int i = 0; i < 3; ++i) {
        if (n < kernels::kGemmRows) {
          EXPECT_EQ(fused[size_t(i)], alone[size_t(i)]) << "kind " << kind << " n " << n << " matrix " << i;
          continue;
        }
        for (size_t j = 0; j < alone[size_t(i)].size(); ++j)  // sgemm: edge tiles may sum in another order
          EXPECT_NEAR(fused[size_t(i)][j], alone[size_t(i)][j], 1e-5 * (1 + std::fabs(alone[size_t(i)][j])));
      }
    }
  }
}

// dense_swiglu (gate and up products with SwiGLU applied per task range, one region) gives the bits of the products
// then swiglu per row: int8 blocks (q8_gemv) and bf16 matrices, few rows (tasks by bytes) and, within sgemm's
// summation order, GEMM rows (a range per thread), with and without threads; with a bias too.
TEST(DenseSwiglu, EqualsTheProductsThenSwiglu) {
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  cpu::ThreadPool pool(2);
  for (int64_t rows : {40, 300}) {
    const int64_t cols = 256;
    std::vector<float> wg(size_t(rows * cols)), wu(size_t(rows * cols)), bias(static_cast<size_t>(rows));
    for (auto& v : wg) v = g(rng);
    for (auto& v : wu) v = g(rng);
    for (auto& v : bias) v = g(rng);
    std::vector<uint16_t> bg, bu;
    for (float v : wg) bg.push_back(bf16(v));
    for (float v : wu) bu.push_back(bf16(v));
    const Dense q_gate(kernels::q8_gemv::make_linear(std::make_shared<const kernels::q8_gemv::Q8Matrix>(
                  kernels::q8_gemv::quantize(wg.data(), rows, cols)))),
        q_up(kernels::q8_gemv::make_linear(std::make_shared<const kernels::q8_gemv::Q8Matrix>(
            kernels::q8_gemv::quantize(wu.data(), rows, cols)))),
        b_gate(kernels::float_dense::make_bf16(rows, cols, bg)), b_up(kernels::float_dense::make_bf16(rows, cols, bu)),
        b_gate_bias(kernels::float_dense::make_bf16(rows, cols, bg), bias);
    const std::pair<const Dense*, const Dense*> pairs[] = {{&q_gate, &q_up}, {&b_gate, &b_up}, {&b_gate_bias, &b_up}};
    for (const auto& [gate, up] : pairs)
      for (int64_t n : {1, 6, 20}) {
        std::vector<float> x(size_t(n * cols));
        for (auto& v : x) v = g(rng);
        for (cpu::ThreadPool* p : {static_cast<cpu::ThreadPool*>(nullptr), &pool}) {
          std::vector<float> g1(size_t(n * rows)), u1(size_t(n * rows)), g2(size_t(n * rows)), u2(size_t(n * rows));
          const DenseJob jobs[] = {{gate, g1.data()}, {up, u1.data()}};
          dense_products(jobs, x.data(), n, p);
          for (int64_t t = 0; t < n; ++t) swiglu(&g1[size_t(t * rows)], &u1[size_t(t * rows)], &g1[size_t(t * rows)], rows);
          dense_swiglu(*gate, *up, x.data(), g2.data(), u2.data(), n, p);
          const std::string what = std::to_string(rows) + " rows, n " + std::to_string(n) + (p ? ", 2 threads" : "") +
                                   (gate->bias.empty() ? "" : ", bias");
          if (n < kernels::kGemmRows || !p) {
            EXPECT_EQ(g1, g2) << what;
          } else {  // sgemm over other row ranges (one per thread, not per matrix) may sum an edge tile in another order
            for (size_t i = 0; i < g1.size(); ++i) EXPECT_NEAR(g1[i], g2[i], 1e-4 * (1 + std::fabs(g1[i]))) << what;
          }
        }
      }
  }
}

// GGUF-block matrices (kq_gemv) of random blocks: Q8_0 / Q4_0 (the four-unit kernels' grouped activations) and Q4_K.
Dense random_kq(uint32_t ggml_type, int64_t rows, int64_t cols, std::mt19937& rng) {
  const size_t block = ggml_type == 12 ? 144 : ggml_type == 8 ? 34 : 18, per = ggml_type == 12 ? 256 : 32;
  std::vector<uint8_t> b(size_t(rows * cols) / per * block);
  for (auto& v : b) v = uint8_t(rng());
  for (size_t i = 0; i < b.size(); i += block)
    for (int h = 0; h < (ggml_type == 12 ? 2 : 1); ++h) {  // d (and Q4_K's dmin): halves about 2^-7
      const uint16_t half = uint16_t(((7 + rng() % 3) << 10) | (rng() & 0x3ff));
      std::memcpy(&b[i + 2 * size_t(h)], &half, 2);
    }
  return Dense(kernels::kq_gemv::make_linear(std::make_shared<const kernels::kq_gemv::Matrix>(
      kernels::kq_gemv::make_matrix(ggml_type, rows, cols, b.data(), b.size()))));
}

// A few-row product's activations converted by its region's tasks, row by row (RowPrep: Linear::prepare_shape /
// prepare_rows), give the bits of the caller's conversion (no pool); dense_products, dense_product and dense_swiglu,
// 2..13 rows of x; a non-finite value in one row is an error from the region, not a hang of the waiting tasks.
TEST(DenseKq, RowsConvertedInTheRegionGiveTheCallersBits) {
  std::mt19937 rng(9);
  std::normal_distribution<float> g;
  cpu::ThreadPool pool(2);
  for (uint32_t type : {8u, 2u, 12u}) {  // Q8_0, Q4_0, Q4_K
    const int64_t cols = type == 12 ? 512 : 576, rows = 200;
    const Dense a = random_kq(type, rows, cols, rng), b = random_kq(type, 96, cols, rng),
                c = random_kq(type, rows, cols, rng);
    for (int64_t n : {2, 5, 8, 13}) {
      std::vector<float> x(size_t(n * cols));
      for (auto& v : x) v = g(rng);
      std::vector<float> ya[2], yb[2], yg[2], yu[2], yc[2];
      for (int k = 0; k < 2; ++k) {
        cpu::ThreadPool* p = k ? &pool : nullptr;
        ya[k].resize(size_t(n * rows)), yb[k].resize(size_t(n * 96)), yc[k].resize(size_t(n * rows));
        yg[k].resize(size_t(n * rows)), yu[k].resize(size_t(n * rows));
        const DenseJob jobs[] = {{&a, ya[k].data()}, {&b, yb[k].data()}};
        dense_products(jobs, x.data(), n, p);
        dense_product(c, x.data(), yc[k].data(), n, p);
        dense_swiglu(a, c, x.data(), yg[k].data(), yu[k].data(), n, p);
      }
      const std::string what = "type " + std::to_string(type) + ", n " + std::to_string(n);
      EXPECT_EQ(ya[0], ya[1]) << what;
      EXPECT_EQ(yb[0], yb[1]) << what;
      EXPECT_EQ(yc[0], yc[1]) << what;
      EXPECT_EQ(yg[0], yg[1]) << what;
      x[size_t(cols + 5)] = std::nanf("");  // row 1
      EXPECT_THROW(dense_product(c, x.data(), yc[1].data(), n, &pool), Error) << what;
      EXPECT_THROW(dense_swiglu(a, c, x.data(), yg[1].data(), yu[1].data(), n, &pool), Error) << what;
    }
  }
}

// DenseStage: the same products as stages of one region (stages.h), x written by an earlier stage of the region and
// the activations shaped in its after(): the bits of dense_products / dense_swiglu on the caller; 1..13 rows of x, 2
// and 3 threads; a non-finite value in one row is an error from the region (Stages::run), not a hang.
TEST(DenseKq, StagesGiveTheBitsOfTheProducts) {
  std::mt19937 rng(10);
  std::normal_distribution<float> g;
  for (int threads : {2, 3}) {
    cpu::ThreadPool pool(threads);
    Profile prof;
    ProfileClock clock(prof, &pool);
    clock.start();
    Stages st;
    for (uint32_t type : {8u, 2u, 12u}) {  // Q8_0, Q4_0, Q4_K
      const int64_t cols = type == 12 ? 512 : 576, rows = 200;
      const Dense a = random_kq(type, rows, cols, rng), b = random_kq(type, 96, cols, rng),
                  c = random_kq(type, rows, cols, rng);
      for (int64_t n : {1, 2, 5, 13}) {
        std::vector<float> x0(size_t(n * cols)), x(x0.size());
        for (auto& v : x0) v = g(rng);
        std::vector<float> ya(size_t(n * rows)), yb(size_t(n * 96)), yg(size_t(n * rows)), yu(size_t(n * rows));
        const DenseJob jobs[] = {{&a, ya.data()}, {&b, yb.data()}};
        dense_products(jobs, x0.data(), n, nullptr);
        dense_swiglu(a, c, x0.data(), yg.data(), yu.data(), n, nullptr);
        for (bool bad : {false, true}) {
          if (bad) x0[size_t((n - 1) * cols + 7)] = std::nanf("");
          std::vector<float> sa(ya.size()), sb(yb.size()), sg(yg.size()), su(yu.size());
          const DenseJob sjobs[] = {{&a, sa.data()}, {&b, sb.data()}};
          DenseStage products(sjobs, x.data(), n, threads), swi(a, c, x.data(), sg.data(), su.data(), n, threads);
          auto copy = [&](int64_t t) {  // x written by the first stage
            std::copy_n(&x0[size_t(t * cols)], cols, &x[size_t(t * cols)]);
          };
          // One activation kind, one container: swi is shaped after the products' row ranges are done.
          auto shape = [&] { products.shape(); };
          auto swi_shape = [&] { swi.shape(); };
          st.add(Op::elementwise, n, copy, shape);
          products.add_to(st, Op::dense, swi_shape);
          swi.add_to(st, Op::dense);
          const std::string what = "type " + std::to_string(type) + ", n " + std::to_string(n) + ", threads " +
                                   std::to_string(threads);
          if (bad) {
            EXPECT_THROW(st.run(&pool, clock), Error) << what;
            continue;
          }
          st.run(&pool, clock);
          EXPECT_EQ(sa, ya) << what;
          EXPECT_EQ(sb, yb) << what;
          EXPECT_EQ(sg, yg) << what;
          EXPECT_EQ(su, yu) << what;
        }
      }
    }
  }
}

TEST(DenseBf16, Bf16CheckpointGivesTheLogitsOfItsWidening) {
  // A small qwen3-style dense model with bf16 tensors, loaded keeping bf16 and widened to fp32.
  ModelConfig c;
  c.arch = Arch::qwen3;
  c.vocab_size = 96, c.hidden_size = 64, c.num_layers = 2, c.num_heads = 4, c.num_kv_heads = 2, c.head_dim = 16;
  c.intermediate_size = 96, c.max_position_embeddings = 64, c.qk_norm = QkNorm::per_head;
  c.layers.assign(2, LayerKind{});
  MemoryTensorSource src("bf16-model");
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 0.1f);
  auto add = [&](const std::string& n, std::vector<int64_t> shape, bool ones = false) {
    int64_t k = 1;
    for (auto d : shape) k *= d;
    std::vector<uint16_t> v(static_cast<size_t>(k));
    for (auto& e : v) e = bf16(ones ? 1.0f : g(rng));
    src.add(n, Dtype::bf16, shape, v.data(), v.size() * 2);
  };
  add("model.embed_tokens.weight", {96, 64});
  add("lm_head.weight", {96, 64});
  add("model.norm.weight", {64}, true);
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {64}, true);
    add(p + "post_attention_layernorm.weight", {64}, true);
    add(p + "self_attn.q_proj.weight", {64, 64});
    add(p + "self_attn.k_proj.weight", {32, 64});
    add(p + "self_attn.v_proj.weight", {32, 64});
    add(p + "self_attn.o_proj.weight", {64, 64});
    add(p + "self_attn.q_norm.weight", {16}, true);
    add(p + "self_attn.k_norm.weight", {16}, true);
    add(p + "mlp.gate_proj.weight", {96, 64});
    add(p + "mlp.up_proj.weight", {96, 64});
    add(p + "mlp.down_proj.weight", {64, 96});
  }
  LoadOptions keep, widen;
  widen.keep_bf16 = false;
  auto mk = Model::from_source(c, src, keep, "bf16-model");
  auto mw = Model::from_source(c, src, widen, "bf16-model");
  EXPECT_EQ(mk->weights().layers[0].q.format(), "bf16");
  EXPECT_EQ(mw->weights().layers[0].q.format(), "f32");
  EXPECT_LT(mk->weights().dense_bytes(), mw->weights().dense_bytes() * 6 / 10);
  cpu::ThreadPool pool(2);
  Session a(*mk, 16, &pool), b(*mw, 16, nullptr);
  const std::vector<int32_t> ids = {3, 50, 7, 91, 12};
  const auto la = a.forward_all(ids), lb = b.forward_all(ids);
  double mx = 0, ref = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    mx = std::max(mx, double(std::fabs(la[i] - lb[i])));
    ref = std::max(ref, double(std::fabs(lb[i])));
  }
  EXPECT_LE(mx / ref, 1e-5);
}

}  // namespace
}  // namespace genesis::runtime
