// Unit tests of the model runtime: config parsing and its errors, weight loading errors, ops (router, rope, norm),
// the sampler, generation limits, and the NF4 reference path against fp32 experts holding the same values.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "common/error.h"
#include "cpu/thread_pool.h"
#include "quant/half.h"
#include "quant/nf4.h"
#include "runtime/model/forward.h"
#include "runtime/model/generate.h"
#include "runtime/model/memory_source.h"
#include "runtime/model/ops.h"
#include "runtime/model/sampler.h"

namespace genesis::runtime {
namespace {

using nlohmann::json;

json tiny_moe_config() {
  return json{{"model_type", "qwen3_moe"}, {"vocab_size", 40},      {"hidden_size", 64},
              {"num_hidden_layers", 2},    {"num_attention_heads", 4}, {"num_key_value_heads", 2},
              {"head_dim", 16},            {"intermediate_size", 64},  {"moe_intermediate_size", 64},
              {"num_experts", 4},          {"num_experts_per_tok", 2}, {"norm_topk_prob", true},
              {"max_position_embeddings", 32}, {"rms_norm_eps", 1e-6}, {"hidden_act", "silu"},
              {"rope_theta", 10000.0}};
}

// A random model with every tensor the config asks for (names as transformers saves them).
std::unique_ptr<MemoryTensorSource> random_source(const ModelConfig& c, uint64_t seed) {
  auto src = std::make_unique<MemoryTensorSource>("random");
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.15f);
  auto rnd = [&](std::vector<int64_t> shape, float base = 0.0f) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = base + nd(rng);
    return v;
  };
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float base = 0.0f) {
    src->add_f32(name, shape, rnd(shape, base));
  };
  const int64_t H = c.hidden_size;
  add("model.embed_tokens.weight", {c.vocab_size, H});
  add("model.norm.weight", {H}, 1.0f);
  add("lm_head.weight", {c.vocab_size, H});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {H}, 1.0f);
    add(p + "post_attention_layernorm.weight", {H}, 1.0f);
    add(p + "self_attn.q_proj.weight", {c.q_dim(), H});
    add(p + "self_attn.k_proj.weight", {c.kv_dim(), H});
    add(p + "self_attn.v_proj.weight", {c.kv_dim(), H});
    add(p + "self_attn.o_proj.weight", {H, c.q_dim()});
    add(p + "self_attn.q_norm.weight", {c.head_dim}, 1.0f);
    add(p + "self_attn.k_norm.weight", {c.head_dim}, 1.0f);
    add(p + "mlp.gate.weight", {c.num_experts, H});
    for (int64_t e = 0; e < c.num_experts; ++e) {
      const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
      add(x + "gate_proj.weight", {c.moe_intermediate_size, H});
      add(x + "up_proj.weight", {c.moe_intermediate_size, H});
      add(x + "down_proj.weight", {H, c.moe_intermediate_size});
    }
  }
  return src;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Config, ParsesQwen3Moe) {
  const ModelConfig c = parse_config(tiny_moe_config(), "config.json");
  EXPECT_EQ(c.arch, Arch::qwen3_moe);
  EXPECT_EQ(c.qk_norm, QkNorm::per_head);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(c.layers, std::vector<LayerKind>(2, LayerKind{MixerKind::attention, MlpKind::moe}));
  EXPECT_EQ(c.rope.type, RopeType::default_);
}

TEST(Config, RefusesUnsupportedInputByName) {
  json j = tiny_moe_config();
  j["model_type"] = "gpt2";
  EXPECT_NE(error_of([&] { parse_config(j, "x/config.json"); }).find("model_type \"gpt2\" is not supported"),
            std::string::npos);
  j = tiny_moe_config();
  j["rope_scaling"] = {{"rope_type", "longrope"}, {"factor", 2.0}};
  EXPECT_NE(error_of([&] { parse_config(j, "x/config.json"); }).find("rope type \"longrope\""), std::string::npos);
  j = tiny_moe_config();
  j["hidden_act"] = "gelu";
  EXPECT_NE(error_of([&] { parse_config(j, "x/config.json"); }).find("hidden_act \"gelu\""), std::string::npos);
  j = tiny_moe_config();
  j.erase("hidden_size");
  EXPECT_NE(error_of([&] { parse_config(j, "x/config.json"); }).find("x/config.json: required field \"hidden_size\""),
            std::string::npos);
  j = tiny_moe_config();
  j["num_key_value_heads"] = 3;
  EXPECT_NE(error_of([&] { parse_config(j, "x/config.json"); }).find("not a multiple"), std::string::npos);
}

TEST(Weights, MissingOrMisshapenTensorIsNamed) {
  const ModelConfig c = parse_config(tiny_moe_config(), "config.json");
  auto src = random_source(c, 1);
  src->remove("model.layers.1.mlp.experts.3.up_proj.weight");
  LoadOptions opt;
  opt.experts = ExpertMode::f32;
  std::string e = error_of([&] { Model::from_source(c, *src, opt, "m/config.json"); });
  EXPECT_NE(e.find("\"model.layers.1.mlp.experts.3.up_proj.weight\" is missing"), std::string::npos) << e;
  src = random_source(c, 1);
  src->add_f32("model.layers.0.self_attn.k_proj.weight", {64, 64}, std::vector<float>(64 * 64));
  e = error_of([&] { Model::from_source(c, *src, opt, "m/config.json"); });
  EXPECT_NE(e.find("\"model.layers.0.self_attn.k_proj.weight\" in random has shape [64, 64], but m/config.json "
                   "implies [32, 64]"),
            std::string::npos)
      << e;
}

TEST(Session, PromptLongerThanContextAndBadTokenAreErrors) {
  const ModelConfig c = parse_config(tiny_moe_config(), "config.json");
  auto src = random_source(c, 2);
  LoadOptions opt;
  opt.experts = ExpertMode::f32;
  auto m = Model::from_source(c, *src, opt, "config.json");
  Session s(*m, 8, nullptr);
  std::vector<int32_t> prompt(9, 1);
  EXPECT_NE(error_of([&] { generate(s, prompt, {}, nullptr); }).find("longer than the context of 8"),
            std::string::npos);
  std::vector<int32_t> bad = {1, 40};
  EXPECT_NE(error_of([&] { s.forward(bad, nullptr); }).find("token id 40 is outside the vocabulary"),
            std::string::npos);
  // Generation stops at a full context instead of overflowing.
  Session s2(*m, 6, nullptr);
  GenerateOptions go;
  go.max_new_tokens = 10;
  std::vector<int32_t> out;
  const auto st = generate(s2, std::vector<int32_t>{1, 2, 3}, go, nullptr, &out);
  EXPECT_EQ(st.stop_reason, "context full");
  EXPECT_EQ(out.size(), 4u);  // 3 prompt + 3 fed back fill 6 positions; the 4th token needs no forward
}

TEST(Generate, StopsAtStopTokenAndStreams) {
  const ModelConfig c = parse_config(tiny_moe_config(), "config.json");
  auto src = random_source(c, 3);
  LoadOptions opt;
  opt.experts = ExpertMode::f32;
  auto m = Model::from_source(c, *src, opt, "config.json");
  Session s(*m, 0, nullptr);
  std::vector<int32_t> greedy;
  generate(s, std::vector<int32_t>{1, 2}, GenerateOptions{5, {}, {}, {}}, nullptr, &greedy);
  ASSERT_EQ(greedy.size(), 5u);
  Session s2(*m, 0, nullptr);
  GenerateOptions go{5, {}, {greedy[1]}, {}};
  std::vector<int32_t> streamed;
  const auto st = generate(s2, std::vector<int32_t>{1, 2}, go, [&](int32_t t) {
    streamed.push_back(t);
    return true;
  });
  EXPECT_EQ(st.stop_reason, "stop token");
  EXPECT_EQ(streamed, std::vector<int32_t>(greedy.begin(), greedy.begin() + 2));
}

TEST(Forward, BatchedPrefillEqualsTokenByToken) {
  const ModelConfig c = parse_config(tiny_moe_config(), "config.json");
  auto src = random_source(c, 4);
  LoadOptions opt;
  opt.experts = ExpertMode::f32;
  auto m = Model::from_source(c, *src, opt, "config.json");
  std::vector<int32_t> toks = {3, 1, 4, 1, 5, 9, 2, 6};
  Session a(*m, 0, nullptr), b(*m, 0, nullptr);
  const auto all = a.forward_all(toks);
  std::vector<float> one(size_t(c.vocab_size));
  for (size_t i = 0; i < toks.size(); ++i) {
    b.forward(std::span(toks).subspan(i, 1), one.data());
    for (int64_t v = 0; v < c.vocab_size; ++v)
      EXPECT_NEAR(one[size_t(v)], all[i * size_t(c.vocab_size) + size_t(v)], 1e-4) << i;
  }
}

// Decode attention splits long contexts into spans of positions per (row, KV head) task and merges their partial
// softmaxes; it must agree with the prefill's blocked attention over the same positions, with several threads.
TEST(Forward, DecodeAttentionSpansEqualPrefill) {
  json j = tiny_moe_config();
  j["max_position_embeddings"] = 512;
  const ModelConfig c = parse_config(j, "config.json");
  auto src = random_source(c, 6);
  LoadOptions opt;
  opt.experts = ExpertMode::f32;
  auto m = Model::from_source(c, *src, opt, "config.json");
  std::vector<int32_t> toks(300);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t((i * 7 + 3) % size_t(c.vocab_size));
  cpu::ThreadPool pool(8);  // 8 threads: several spans per KV head from 128 positions on
  Session a(*m, 512, &pool), b(*m, 512, &pool);
  const auto all = a.forward_all(toks);
  b.forward(std::span(toks).first(toks.size() - 3), nullptr);
  std::vector<float> one(size_t(c.vocab_size));
  for (size_t i = toks.size() - 3; i < toks.size(); ++i) {
    b.forward(std::span(toks).subspan(i, 1), one.data());
    for (int64_t v = 0; v < c.vocab_size; ++v)
      EXPECT_NEAR(one[size_t(v)], all[i * size_t(c.vocab_size) + size_t(v)], 1e-4) << i;
  }
}

TEST(Forward, Nf4ReferenceEqualsF32ExpertsWithDequantizedValues) {
  // The NF4 reference path must equal fp32 experts holding the dequantized NF4 values.
  const ModelConfig c = parse_config(tiny_moe_config(), "config.json");
  auto src = random_source(c, 5);
  auto deq = random_source(c, 5);
  for (const auto& name : src->names()) {
    if (name.find(".experts.") == std::string::npos) continue;
    const TensorView* t = src->find(name);
    std::vector<float> w(static_cast<const float*>(t->data), static_cast<const float*>(t->data) + t->numel());
    const auto q = quant::dequantize_nf4(quant::quantize_nf4(w, t->shape[0], t->shape[1], 64));
    deq->add_f32(name, t->shape, q);
  }
  LoadOptions nf4;
  nf4.experts = ExpertMode::nf4_reference;
  LoadOptions f32;
  f32.experts = ExpertMode::f32;
  auto a = Model::from_source(c, *src, nf4, "config.json");
  auto b = Model::from_source(c, *deq, f32, "config.json");
  std::vector<int32_t> toks = {7, 3, 11, 2};
  Session sa(*a, 0, nullptr), sb(*b, 0, nullptr);
  const auto la = sa.forward_all(toks), lb = sb.forward_all(toks);
  for (size_t i = 0; i < la.size(); ++i) EXPECT_NEAR(la[i], lb[i], 1e-4);
  EXPECT_LT(a->weights().expert_bytes() * 6, b->weights().expert_bytes());  // ~4.5 bits vs 32 per weight
}

TEST(Ops, RouterTopKWithAndWithoutRenormalization) {
  const float logits[4] = {1.0f, 3.0f, 2.0f, 0.0f};
  const auto raw = route_top_k(logits, 4, 2, false);
  const double z = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + 1.0;
  ASSERT_EQ(raw.size(), 2u);
  EXPECT_EQ(raw[0].first, 1);
  EXPECT_EQ(raw[1].first, 2);
  EXPECT_NEAR(raw[0].second, std::exp(3.0) / z, 1e-6);
  const auto norm = route_top_k(logits, 4, 2, true);
  EXPECT_NEAR(norm[0].second + norm[1].second, 1.0, 1e-6);
  EXPECT_NEAR(norm[0].second, std::exp(3.0) / (std::exp(3.0) + std::exp(2.0)), 1e-6);
}

// The vector exp (softmax, SwiGLU, decode attention) within a few ulp of the C library's, its edges (underflow to 0,
// large arguments finite), odd lengths (masked tails), SwiGLU over any split of a row the same bits; the decode
// attention's group products against fp64.
TEST(Ops, VectorExpSwigluAndGroupProductsMatchReferences) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> wide(-100.0f, 88.0f), unit(-1.0f, 1.0f);
  for (int64_t n : {1, 7, 8, 15, 16, 17, 33, 1000}) {
    std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
    for (float& v : x) v = wide(rng);
    if (n > 2) x[0] = -200.0f, x[1] = 89.5f;  // 88.0 after the shift: the largest inputs, 2^127
    y = x;
    const double sum = exp_shift_sum(y.data(), n, 1.5f);
    double want_sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double want = std::exp(double(x[size_t(i)] - 1.5f));  // the shift is subtracted in fp32, as before
      want_sum += double(float(want));
      if (want < 1e-37) EXPECT_LE(y[size_t(i)], 1e-36f) << x[size_t(i)];
      else EXPECT_NEAR(y[size_t(i)], want, 4e-7 * want) << x[size_t(i)];
      EXPECT_TRUE(std::isfinite(y[size_t(i)]));
    }
    EXPECT_NEAR(sum, want_sum, 1e-6 * want_sum);
    std::vector<float> g(static_cast<size_t>(n)), u(static_cast<size_t>(n)), o(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) g[size_t(i)] = 20.0f * unit(rng), u[size_t(i)] = unit(rng);
    if (n > 2) g[0] = -150.0f, g[1] = 150.0f;
    swiglu(g.data(), u.data(), o.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double gv = g[size_t(i)], want = gv / (1.0 + std::exp(-gv)) * u[size_t(i)];
      EXPECT_NEAR(o[size_t(i)], want, 1e-6 * std::abs(want) + 1e-30) << gv;
    }
    // Any split of the row gives every value the whole row's bits (dense_swiglu runs rows in task ranges).
    for (int64_t cut : {int64_t(1), int64_t(3), int64_t(12), n / 2}) {
      if (cut <= 0 || cut >= n) continue;
      std::vector<float> parts(static_cast<size_t>(n));
      swiglu(g.data(), u.data(), parts.data(), cut);
      swiglu(g.data() + cut, u.data() + cut, parts.data() + cut, n - cut);
      EXPECT_EQ(parts, o) << "n " << n << " cut at " << cut;
    }
    std::vector<float> sl = g;  // silu in place: swiglu without the up factor
    silu(sl.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double gv = g[size_t(i)], want = gv / (1.0 + std::exp(-gv));
      EXPECT_NEAR(sl[size_t(i)], want, 1e-6 * std::abs(want) + 1e-30) << gv;
    }
  }
  for (int64_t d : {5, 8, 16, 24, 64, 128, 144, 200, 256}) {
    // every remainder of the 4-head blocks (scores) and the 4-head passes (values), keys short of a block of 4, and
    // several value blocks (kValueBlock = 32)
    for (auto [G, cnt] : {std::pair<int64_t, int64_t>{1, 37}, {2, 70}, {3, 37}, {3, 3}, {4, 37}, {5, 37}, {6, 70},
                          {7, 37}, {8, 37}, {8, 2}}) {
      std::vector<float> q(size_t(G * d)), k(size_t(cnt * d)), v(size_t(cnt * d)), p(size_t(G * cnt));
      for (float& e : q) e = unit(rng);
      for (float& e : k) e = unit(rng);
      for (float& e : v) e = unit(rng);
      for (float& e : p) e = unit(rng);
      // The binary16 cache's form: keys and values rounded to binary16; the products must equal those of the
      // rounded values widened (the same fp32 arithmetic up to summation order).
      std::vector<uint16_t> kh(k.size()), vh(v.size());
      to_f16_saturated(k.data(), kh.data(), int64_t(k.size()));
      to_f16_saturated(v.data(), vh.data(), int64_t(v.size()));
      std::vector<float> kw(k.size()), vw(v.size());
      from_f16(kh.data(), kw.data(), int64_t(k.size()));
      from_f16(vh.data(), vw.data(), int64_t(v.size()));
      for (size_t i = 0; i < k.size(); ++i) {
        ASSERT_EQ(kh[i], quant::f32_to_f16(k[i])) << i;
        ASSERT_EQ(kw[i], quant::f16_to_f32(kh[i])) << i;
      }
      std::vector<float> s(size_t(G * cnt)), o(size_t(G * (d + 3))), sh(s.size()), oh(o.size());
      group_scores(q.data(), G, k.data(), cnt, d, 0.5f, s.data());
      group_weighted_sum(p.data(), G, v.data(), cnt, d, o.data(), d + 3);
      group_scores(q.data(), G, kh.data(), cnt, d, 0.5f, sh.data());
      group_weighted_sum(p.data(), G, vh.data(), cnt, d, oh.data(), d + 3);
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t j = 0; j < cnt; ++j) {
          double want = 0.0, want_h = 0.0;
          for (int64_t i = 0; i < d; ++i) {
            want += double(q[size_t(g * d + i)]) * k[size_t(j * d + i)];
            want_h += double(q[size_t(g * d + i)]) * kw[size_t(j * d + i)];
          }
          EXPECT_NEAR(s[size_t(g * cnt + j)], 0.5 * want, 1e-5) << d << " " << G;
          EXPECT_NEAR(sh[size_t(g * cnt + j)], 0.5 * want_h, 1e-5) << d << " " << G;
        }
        for (int64_t i = 0; i < d; ++i) {
          double want = 0.0, want_h = 0.0;
          for (int64_t j = 0; j < cnt; ++j) {
            want += double(p[size_t(g * cnt + j)]) * v[size_t(j * d + i)];
            want_h += double(p[size_t(g * cnt + j)]) * vw[size_t(j * d + i)];
          }
          EXPECT_NEAR(o[size_t(g * (d + 3) + i)], want, 1e-5) << d << " " << G;
          EXPECT_NEAR(oh[size_t(g * (d + 3) + i)], want_h, 1e-5) << d << " " << G;
        }
      }
    }
  }
}

// One token of the gated delta rule (the recurrent form's kernel) against an fp64 evaluation of its definition, for
// head sizes that take each path (AVX-512 slabs of 64 columns, AVX2 slabs of 32, the portable loop).
TEST(Ops, DeltaRuleTokenMatchesItsDefinition) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (auto [dk, dv] : {std::pair<int64_t, int64_t>{128, 128}, {64, 64}, {16, 96}, {32, 32}, {8, 40}, {3, 5}}) {
    std::vector<float> S(static_cast<size_t>(dk * dv)), q(static_cast<size_t>(dk)), k(static_cast<size_t>(dk)),
        v(static_cast<size_t>(dv)), o(static_cast<size_t>(dv));
    for (float& e : S) e = unit(rng);
    for (float& e : q) e = unit(rng);
    for (float& e : k) e = unit(rng);
    for (float& e : v) e = unit(rng);
    const float decay = 0.9f, beta = 0.7f;
    std::vector<double> Sd(S.begin(), S.end()), sk(size_t(dv), 0.0), want_o(size_t(dv), 0.0);
    for (int64_t i = 0; i < dk; ++i)
      for (int64_t j = 0; j < dv; ++j) sk[size_t(j)] += double(k[size_t(i)]) * Sd[size_t(i * dv + j)];
    for (int64_t i = 0; i < dk; ++i)
      for (int64_t j = 0; j < dv; ++j) {
        const double delta = beta * (double(v[size_t(j)]) - decay * sk[size_t(j)]);
        Sd[size_t(i * dv + j)] = decay * Sd[size_t(i * dv + j)] + double(k[size_t(i)]) * delta;
      }
    for (int64_t i = 0; i < dk; ++i)
      for (int64_t j = 0; j < dv; ++j) want_o[size_t(j)] += double(q[size_t(i)]) * Sd[size_t(i * dv + j)];
    delta_rule_token(S.data(), dk, dv, q.data(), k.data(), v.data(), decay, beta, o.data());
    for (int64_t j = 0; j < dv; ++j) EXPECT_NEAR(o[size_t(j)], want_o[size_t(j)], 2e-5 * double(dk)) << dk << "x" << dv;
    for (size_t i = 0; i < S.size(); ++i) ASSERT_NEAR(S[i], Sd[i], 2e-5 * double(dk)) << dk << "x" << dv << " " << i;
  }
}

// The KV cache's binary16 conversion: round to nearest even as quant::f32_to_f16, saturated at +-65504 instead of
// overflowing to infinity, NaN kept; every length (the vector body and its tail).
TEST(Ops, F16CacheConversionSaturatesAndRounds) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> special = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 65520.0f, 1e6f, -1e9f, inf, -inf, nan,
                                      6e-8f, 1e-10f, 3.14159f, 1.0009765625f, 1.00048828125f, -65519.0f};
  for (int64_t n : {1, 7, 8, 9, 17}) {
    std::vector<float> x(static_cast<size_t>(n)), back(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) x[size_t(i)] = special[size_t(i) % special.size()];
    std::vector<uint16_t> h(static_cast<size_t>(n));
    to_f16_saturated(x.data(), h.data(), n);
    from_f16(h.data(), back.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const float v = x[size_t(i)];
      if (std::isnan(v)) {
        EXPECT_TRUE(std::isnan(back[size_t(i)])) << i;
      } else if (std::abs(v) >= 65504.0f) {
        EXPECT_EQ(back[size_t(i)], std::copysign(65504.0f, v)) << v;
      } else {
        EXPECT_EQ(h[size_t(i)], quant::f32_to_f16(v)) << v;
        EXPECT_EQ(back[size_t(i)], quant::f16_to_f32(h[size_t(i)])) << v;
      }
    }
  }
}

TEST(Ops, RmsNormAndRopeRotation) {
  std::vector<float> x = {1, 2, 3, 4}, w = {1, 1, 2, 1}, y(4);
  rms_norm(x.data(), w.data(), y.data(), 4, 0.0);
  const double r = std::sqrt((1 + 4 + 9 + 16) / 4.0);
  EXPECT_NEAR(y[2], 2 * 3 / r, 1e-6);
  // Rope keeps each pair's norm and rotates by pos * inv_freq.
  RopeTable t;
  t.inv_freq = {0.5f, 0.25f};
  std::vector<float> v = {1, 0, 0, 0}, cs(4);
  rope_cos_sin(2, 4, t, cs.data());
  apply_rope(v.data(), 1, 4, 4, cs.data());
  EXPECT_NEAR(v[0], std::cos(1.0), 1e-6);
  EXPECT_NEAR(v[2], std::sin(1.0), 1e-6);
}

TEST(Sampler, GreedySeededAndFiltered) {
  std::vector<float> logits = {0.1f, 2.0f, 1.9f, -1.0f, 0.5f};
  Sampler greedy(SamplerOptions{});
  EXPECT_EQ(greedy.sample(logits), 1);
  Sampler top1(SamplerOptions{1.0f, 1, 1.0f, 7});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(top1.sample(logits), 1);
  // top-p keeps the smallest most-likely prefix reaching p.
  Sampler topp(SamplerOptions{1.0f, 0, 0.6f, 1});
  const auto d = topp.distribution(logits);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].first, 1);
  EXPECT_EQ(d[1].first, 2);
  // Same seed, same draws; the draws follow the distribution.
  Sampler a(SamplerOptions{1.0f, 0, 1.0f, 42}), b(SamplerOptions{1.0f, 0, 1.0f, 42});
  std::vector<int> counts(5);
  for (int i = 0; i < 4000; ++i) {
    const int32_t x = a.sample(logits);
    EXPECT_EQ(x, b.sample(logits));
    counts[size_t(x)]++;
  }
  const auto full = a.distribution(logits);
  for (const auto& [tok, p] : full) EXPECT_NEAR(counts[size_t(tok)] / 4000.0, p, 0.03) << tok;
  EXPECT_THROW(Sampler(SamplerOptions{1.0f, 0, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler(SamplerOptions{-1.0f, 0, 1.0f, 0}), Error);
}

}  // namespace
}  // namespace genesis::runtime
