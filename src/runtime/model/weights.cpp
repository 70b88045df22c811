// Loading a model's tensors from a TensorSource into Weights, checking every shape against config.json.
// Experts come per expert (experts.{e}.gate_proj / Mixtral w1, w3, w2) or fused 3-D (experts.gate_up_proj).
#include "runtime/model/weights.h"

#include "common/progress.h"
#include "runtime/io/bnb.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "quant/ggml.h"
#include "runtime/model/expert_pack.h"

namespace genesis::runtime {

const char* expert_mode_name(ExpertMode m) {
  switch (m) {
    case ExpertMode::f32: return "f32";
    case ExpertMode::nf4_reference: return "nf4-reference";
    case ExpertMode::nf4_kernel: return "nf4-kernel";
  }
  return "?";
}

ExpertMode expert_mode_from_name(const std::string& name) {
  if (name == "nf4") return ExpertMode::nf4_kernel;
  if (name == "nf4-reference") return ExpertMode::nf4_reference;
  if (name == "f32") return ExpertMode::f32;
  fail("--experts '{}': expected nf4 (kernels), nf4-reference or f32", name);
}

size_t ExpertMatrix::bytes(ExpertMode m) const {
  if (gq) return gq->bytes.size() + (gq2 ? gq2->bytes.size() : 0);
  if (m == ExpertMode::f32) return f32.size() * sizeof(float);
  if (m == ExpertMode::nf4_kernel && packed) return packed->bytes();
  return nf4.packed.size() + nf4.absmax.size() * sizeof(float);
}

const char* dense_nf4_name(DenseNf4 d) {
  switch (d) {
    case DenseNf4::off: return "off";
    case DenseNf4::low_bit: return "low-bit";
    case DenseNf4::all: return "all";
  }
  return "?";
}

void set_dense_mode(const std::string& mode, LoadOptions& opt) {
  opt.dense_q8 = false;
  if (mode == "q8") opt.keep_bf16 = true, opt.dense_nf4 = DenseNf4::off, opt.dense_q8 = true;
  else if (mode == "bf16") opt.keep_bf16 = true, opt.dense_nf4 = DenseNf4::off;
  else if (mode == "f32") opt.keep_bf16 = false, opt.dense_nf4 = DenseNf4::off;
  else if (mode == "nf4") opt.keep_bf16 = true, opt.dense_nf4 = DenseNf4::low_bit;
  else if (mode == "nf4-all") opt.keep_bf16 = true, opt.dense_nf4 = DenseNf4::all;
  else fail("--dense '{}': expected q8, bf16, f32, nf4 or nf4-all", mode);
}

size_t Dense::bytes() const {
  return w.size() * 4 + w16.size() * 2 + bias.size() * 4 + (nf4 ? nf4->bytes() : 0) + (gq ? gq->bytes.size() : 0) +
         (q8 ? q8->bytes() : 0);
}

void Dense::row_f32(int64_t r, float* out) const {
  if (is_nf4()) fail("Dense::row_f32: an NF4 matrix has no row lookup (embeddings are never NF4)");
  if (is_gq()) {
    quant::ggml_dequantize(gq->type, gq->bytes.data() + size_t(r) * gq->row_bytes, out, cols);
    return;
  }
  if (is_q8()) {
    kernels::q8_gemv::dequantize_row(*q8, r, out);
    return;
  }
  if (!bf16()) {
    std::memcpy(out, &w[size_t(r * cols)], size_t(cols) * 4);
    return;
  }
  for (int64_t c = 0; c < cols; ++c) {
    const uint32_t u = uint32_t(w16[size_t(r * cols + c)]) << 16;
    std::memcpy(&out[c], &u, 4);
  }
}

size_t Weights::dense_bytes() const {
  size_t n = embed.bytes() + lm_head.bytes() + final_norm.size() * 4;
  for (const Layer& l : layers) {
    n += (l.input_norm.size() + l.post_norm.size() + l.q_norm.size() + l.k_norm.size() + l.conv_w.size() +
          l.dt_bias.size() + l.a_neg.size() + l.gated_norm.size()) * 4;
    for (const Dense* d : l.matrices()) n += d->bytes();
  }
  return n;
}

size_t Weights::expert_bytes() const {
  size_t n = 0;
  for (const Layer& l : layers)
    for (const Expert& e : l.experts) n += e.gate_up.bytes(expert_mode) + e.down.bytes(expert_mode);
  return n;
}

namespace {

float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h >> 15) << 31;
  uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalize
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) man <<= 1, --exp;
      u = sign | (exp << 23) | ((man & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7F800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

void check_nf4_shape(const quant::Nf4Matrix& q, int64_t rows, int64_t cols, const std::string& name,
                     const std::string& origin) {
  if (q.rows != rows || q.cols != cols)
    fail("expert matrix {} is [{}, {}], but {} implies [{}, {}]", name, q.rows, q.cols, origin, rows, cols);
}

// gate rows then up rows as one NF4 matrix: rows are whole blocks (cols % blocksize == 0), so the packed codes and
// the absmax concatenate.
quant::Nf4Matrix stack_rows(quant::Nf4Matrix a, const quant::Nf4Matrix& b) {
  if (a.cols % a.blocksize != 0 || a.cols != b.cols || a.blocksize != b.blocksize)
    fail("cannot stack NF4 matrices [{}, {}] (blocksize {}) and [{}, {}] (blocksize {})", a.rows, a.cols, a.blocksize,
         b.rows, b.cols, b.blocksize);
  a.packed.insert(a.packed.end(), b.packed.begin(), b.packed.end());
  a.absmax.insert(a.absmax.end(), b.absmax.begin(), b.absmax.end());
  a.rows += b.rows;
  return a;
}

// fn(0..n-1) over `threads` workers (0: the cores this process may use); the first error is rethrown.
void parallel_for(int64_t n, int threads, const std::function<void(int64_t)>& fn) {
  int t = threads > 0 ? threads : int(std::thread::hardware_concurrency());
  t = int(std::max<int64_t>(1, std::min<int64_t>(t, n)));
  if (t == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mu;
  auto work = [&] {
    for (int64_t i; !failed && (i = next++) < n;) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < t; ++i) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

// keep_quant: expert e as the file stores it, when its three matrices are in formats ggml_gemv multiplies. Gate and
// up become one [2 * inter, hidden] matrix (gate rows first) when they share a format, else two.
bool keep_expert(const TensorSource& src, const std::string& m, int64_t e, int64_t I, int64_t H, Expert& out) {
  namespace gg = kernels::ggml_gemv;
  const std::string x = fmt::format("{}experts.{}.", m, e);
  uint32_t tg = 0, tu = 0, td = 0;
  std::vector<int64_t> sg, su, sd;
  std::vector<uint8_t> bg, bu, bd;
  if (!src.read_ggml(x + "gate_proj.weight", tg, sg, bg) || !src.read_ggml(x + "up_proj.weight", tu, su, bu) ||
      !src.read_ggml(x + "down_proj.weight", td, sd, bd))
    return false;
  if (!gg::supported(tg) || !gg::supported(tu) || !gg::supported(td)) return false;
  if (sg != std::vector<int64_t>{I, H} || su != sg || sd != std::vector<int64_t>{H, I})
    fail("{}: expert shapes gate {}, up {}, down {} do not match the config's [{}, {}] / [{}, {}]", src.describe(x),
         shape_str(sg), shape_str(su), shape_str(sd), I, H, H, I);
  out.gate_up.rows = 2 * I, out.gate_up.cols = H;
  if (tg == tu) {
    bg.insert(bg.end(), bu.begin(), bu.end());
    out.gate_up.gq = std::make_shared<const gg::GgmlMatrix>(gg::make_matrix(tg, 2 * I, H, bg.data(), bg.size()));
  } else {
    out.gate_up.gq = std::make_shared<const gg::GgmlMatrix>(gg::make_matrix(tg, I, H, bg.data(), bg.size()));
    out.gate_up.gq2 = std::make_shared<const gg::GgmlMatrix>(gg::make_matrix(tu, I, H, bu.data(), bu.size()));
  }
  out.down.rows = H, out.down.cols = I;
  out.down.gq = std::make_shared<const gg::GgmlMatrix>(gg::make_matrix(td, H, I, bd.data(), bd.size()));
  return true;
}

class Loader {
 public:
  Loader(const ModelConfig& c, const TensorSource& src, const std::string& config_origin, const LoadOptions& opt)
      : c_(c), src_(src), origin_(config_origin), keep_bf16_(opt.keep_bf16), opt_(opt) {}

  bool has(const std::string& name) const { return src_.contains(name); }

  const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const {
    const TensorView* t = src_.find(name);
    if (!t) fail("tensor \"{}\" is missing from the checkpoint (needed by the {} architecture of {})", name,
                 arch_name(c_.arch), origin_);
    if (t->shape != shape)
      fail("tensor \"{}\" in {} has shape {}, but {} implies {}", name, src_.describe(name), shape_str(t->shape),
           origin_, shape_str(shape));
    return *t;
  }

  std::vector<float> vec(const std::string& name, int64_t n) const {
    return tensor_to_f32(get(name, {n}), src_.describe(name));
  }

  // An RMSNorm weight as applied: 1 + w where the checkpoint stores w (Qwen3-Next), else as stored.
  std::vector<float> norm(const std::string& name, int64_t n) const {
    std::vector<float> w = vec(name, n);
    if (c_.norm_add_one)
      for (float& x : w) x = 1.0f + x;
    return w;
  }

  // A tensor of one of several shapes (a checkpoint's [C, 1, K] conv1d weight, a GGUF file's [C, K]).
  std::vector<float> any_shape(const std::string& name, const std::vector<std::vector<int64_t>>& shapes) const {
    const TensorView* t = src_.find(name);
    if (!t) get(name, shapes[0]);  // the usual "missing" error
    for (const auto& s : shapes)
      if (t->shape == s) return tensor_to_f32(*t, src_.describe(name));
    return tensor_to_f32(get(name, shapes[0]), src_.describe(name));  // the usual shape error
  }

  // nf4_ok: the matrix may become NF4 (LoadOptions::dense_nf4); the embedding and the router never do.
  Dense dense(const std::string& prefix, int64_t rows, int64_t cols, bool bias, bool nf4_ok = false) const {
    Dense d;
    d.rows = rows, d.cols = cols;
    const std::string wn = prefix + ".weight";
    if (nf4_ok && opt_.keep_quant) {
      uint32_t type = 0;
      std::vector<int64_t> shape;
      std::vector<uint8_t> bytes;
      if (src_.read_ggml(wn, type, shape, bytes) && kernels::ggml_gemv::supported(type)) {
        if (shape != std::vector<int64_t>{rows, cols})
          fail("tensor \"{}\" in {} has shape {}, but {} implies {}", wn, src_.describe(wn), shape_str(shape),
               origin_, shape_str({rows, cols}));
        d.gq = std::make_shared<const kernels::ggml_gemv::GgmlMatrix>(
            kernels::ggml_gemv::make_matrix(type, rows, cols, bytes.data(), bytes.size()));
        if (bias) d.bias = vec(prefix + ".bias", rows);
        return d;
      }
    }
    if (nf4_ok && opt_.dense_q8 && !opt_.keep_quant && src_.block_quantized(wn) &&
        cols % kernels::q8_gemv::kBlock == 0) {
      std::vector<float> f;
      const auto shape = src_.read_f32(wn, f);
      if (shape != std::vector<int64_t>{rows, cols})
        fail("tensor \"{}\" in {} has shape {}, but {} implies {}", wn, src_.describe(wn), shape_str(shape), origin_,
             shape_str({rows, cols}));
      d.q8 = std::make_shared<const kernels::q8_gemv::Q8Matrix>(kernels::q8_gemv::quantize(f.data(), rows, cols));
      if (bias) d.bias = vec(prefix + ".bias", rows);
      return d;
    }
    if (nf4_ok && want_nf4(wn, rows, cols)) {
      if (!src_.contains(wn)) get(wn, {rows, cols});  // the usual "missing" error
      std::vector<float> f;
      const auto shape = src_.read_f32(wn, f);
      if (shape != std::vector<int64_t>{rows, cols})
        fail("tensor \"{}\" in {} has shape {}, but {} implies {}", wn, src_.describe(wn), shape_str(shape), origin_,
             shape_str({rows, cols}));
      d.nf4 = pack_expert(quant::quantize_nf4(f, rows, cols, opt_.nf4_blocksize), opt_.kernel_path());
      if (bias) d.bias = vec(prefix + ".bias", rows);
      return d;
    }
    const TensorView& t = get(wn, {rows, cols});
    if (keep_bf16_ && t.dtype == Dtype::bf16) {
      d.w16.resize(size_t(rows * cols));
      std::memcpy(d.w16.data(), t.data, d.w16.size() * 2);  // views may be unaligned
    } else {
      d.w = tensor_to_f32(t, src_.describe(wn));
    }
    if (bias) d.bias = vec(prefix + ".bias", rows);
    return d;
  }

  // One expert's [rows, cols] matrix from a per-expert tensor or a slice of a fused [E, R, cols] tensor.
  std::vector<float> expert_part(const std::string& name, int64_t rows, int64_t cols) const {
    return tensor_to_f32(get(name, {rows, cols}), src_.describe(name));
  }

  bool want_nf4(const std::string& name, int64_t rows, int64_t cols) const {
    if (opt_.experts != ExpertMode::nf4_kernel || opt_.dense_nf4 == DenseNf4::off) return false;
    if (name == "model.embed_tokens.weight") return false;  // row lookups: never NF4
    if (cols % opt_.nf4_blocksize != 0 || rows % 16 != 0) return false;  // the kernels' blocks and row groups
    return opt_.dense_nf4 == DenseNf4::all || src_.low_bit(name);
  }

  const ModelConfig& c_;
  const TensorSource& src_;
  const std::string& origin_;
  bool keep_bf16_;
  const LoadOptions& opt_;
};

// 1 + the highest N of the checkpoint's model.layers.N.* tensors (0 when it has none).
int64_t layers_held(const TensorSource& src) {
  const std::string prefix = "model.layers.";
  int64_t held = 0;
  for (const std::string& n : src.names()) {
    if (n.compare(0, prefix.size(), prefix) != 0) continue;
    const char *b = n.data() + prefix.size(), *e = n.data() + n.size();
    int64_t l = -1;
    if (auto [p, ec] = std::from_chars(b, e, l); ec == std::errc() && p != b && p != e && *p == '.')
      held = std::max(held, l + 1);
  }
  return held;
}

}  // namespace

std::vector<float> tensor_to_f32(const TensorView& t, const std::string& where) {
  const int64_t n = t.numel();
  std::vector<float> out(static_cast<size_t>(n));
  switch (t.dtype) {
    case Dtype::f32:
      std::memcpy(out.data(), t.data, size_t(n) * 4);
      break;
    case Dtype::bf16: {
      // Views may be unaligned (safetensors does not pad offsets): read through memcpy.
      const auto* p = static_cast<const uint8_t*>(t.data);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[size_t(i)] = bf16_to_f32(h);
      }
      break;
    }
    case Dtype::f16: {
      const auto* p = static_cast<const uint8_t*>(t.data);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[size_t(i)] = f16_to_f32(h);
      }
      break;
    }
    default:
      fail("tensor \"{}\" ({}) has dtype {}; only F32, BF16 and F16 weights are supported here", t.name, where,
           dtype_name(t.dtype));
  }
  return out;
}

Weights load_weights(const ModelConfig& c, const TensorSource& src, const LoadOptions& opt,
                     const std::string& config_origin) {
  // Before anything is sized by the layer count: a config claiming more layers than the checkpoint holds.
  if (const int64_t held = layers_held(src); c.num_layers > held)
    fail("{}: num_hidden_layers = {}, but the checkpoint holds tensors for {} layers (model.layers.0 to {})",
         config_origin, c.num_layers, held, held - 1);
  Loader L(c, src, config_origin, opt);
  Weights w;
  w.expert_mode = opt.experts;
  w.path = opt.kernel_path();
  w.nf4_blocksize = opt.nf4_blocksize;
  const int64_t H = c.hidden_size;
  // The embedding may stay as stored (keep_quant) or become int8 blocks (dense_q8: a tied output reads it whole).
  w.embed = L.dense("model.embed_tokens", c.vocab_size, H, false, opt.keep_quant || opt.dense_q8);
  w.final_norm = L.norm("model.norm.weight", H);
  if (!c.tie_word_embeddings) w.lm_head = L.dense("lm_head", c.vocab_size, H, false, true);
  src.release("model.embed_tokens.");
  src.release("lm_head.");

  ExpertPacker packer(opt, c);
  int blocksize_seen = 0;  // the experts' NF4 blocksize as loaded
  w.layers.resize(size_t(c.num_layers));
  std::unique_ptr<Progress> progress;
  if (opt.show_progress) progress = std::make_unique<Progress>("loading layers", double(c.num_layers), "layers");
  for (int64_t li = 0; li < c.num_layers; ++li) {
    Layer& l = w.layers[size_t(li)];
    const std::string p = fmt::format("model.layers.{}.", li);
    l.input_norm = L.norm(p + "input_layernorm.weight", H);
    l.post_norm = L.norm(p + "post_attention_layernorm.weight", H);
    const MixerKind mixer = c.layers[size_t(li)].mixer;
    if (mixer == MixerKind::gated_deltanet) {
      const std::string a = p + "linear_attn.";
      const int64_t nv = c.linear_num_value_heads, K = c.linear_conv_kernel, CD = c.linear_conv_dim();
      if (!L.has(a + "in_proj_qkvz.weight") && L.has(a + "in_proj_qkv.weight")) {
        l.in_qkv = L.dense(a + "in_proj_qkv", CD, H, false, true);
        l.in_z = L.dense(a + "in_proj_z", c.linear_value_dim(), H, false, true);
      } else {
        l.in_qkvz = L.dense(a + "in_proj_qkvz", 2 * c.linear_key_dim() + 2 * c.linear_value_dim(), H, false, true);
      }
      l.in_ba = L.dense(a + "in_proj_ba", 2 * nv, H, false);
      l.conv_w = L.any_shape(a + "conv1d.weight", {{CD, 1, K}, {CD, K}});
      l.dt_bias = L.vec(a + "dt_bias", nv);
      if (!L.has(a + "A_log") && L.has(a + "A")) {
        l.a_neg = L.vec(a + "A", nv);  // GGUF ssm_a: -exp(A_log) as stored
      } else {
        l.a_neg = L.vec(a + "A_log", nv);
        for (float& x : l.a_neg) x = -std::exp(x);
      }
      l.gated_norm = L.vec(a + "norm.weight", c.linear_value_head_dim);
      l.out_proj = L.dense(a + "out_proj", H, c.linear_value_dim(), false, true);
    } else {
      const std::string a = p + "self_attn.";
      const int64_t qrows = mixer == MixerKind::gated_attention ? 2 * c.q_dim() : c.q_dim();
      l.q = L.dense(a + "q_proj", qrows, H, c.attention_bias, true);
      l.k = L.dense(a + "k_proj", c.kv_dim(), H, c.attention_bias, true);
      l.v = L.dense(a + "v_proj", c.kv_dim(), H, c.attention_bias, true);
      l.o = L.dense(a + "o_proj", H, c.q_dim(), c.o_bias, true);
      if (c.qk_norm == QkNorm::per_head) {
        l.q_norm = L.norm(a + "q_norm.weight", c.head_dim);
        l.k_norm = L.norm(a + "k_norm.weight", c.head_dim);
      } else if (c.qk_norm == QkNorm::whole) {
        l.q_norm = L.norm(a + "q_norm.weight", c.q_dim());
        l.k_norm = L.norm(a + "k_norm.weight", c.kv_dim());
      }
    }
    l.moe = c.layer_is_moe(li);
    if (c.layers[size_t(li)].mlp == MlpKind::moe_shared) {
      const std::string s = p + "mlp.shared_expert.";
      const int64_t SI = c.shared_expert_intermediate_size;
      l.shared_gate_proj = L.dense(s + "gate_proj", SI, H, false, true);
      l.shared_up = L.dense(s + "up_proj", SI, H, false, true);
      l.shared_down = L.dense(s + "down_proj", H, SI, false, true);
      l.shared_gate = L.dense(p + "mlp.shared_expert_gate", 1, H, false);
    }
    if (!l.moe) {
      const int64_t I = c.intermediate_size;
      l.gate = L.dense(p + "mlp.gate_proj", I, H, c.mlp_bias, true);
      l.up = L.dense(p + "mlp.up_proj", I, H, c.mlp_bias, true);
      l.down = L.dense(p + "mlp.down_proj", H, I, c.mlp_bias, true);
      src.release(p);
      if (progress) progress->add(1);
      continue;
    }
    const int64_t E = c.num_experts, I = c.moe_intermediate_size;
    std::string m = p + "mlp.";
    if (c.arch == Arch::mixtral && (L.has(p + "block_sparse_moe.gate.weight"))) m = p + "block_sparse_moe.";
    l.router = L.dense(m + "gate", E, H, false);
    l.experts.resize(size_t(E));
    if (opt.experts != ExpertMode::f32) {
      // NF4 as stored (bitsandbytes) or quantized now from a float checkpoint, one expert per worker at a time: no
      // fp32 copy of a layer's experts is ever held. Experts are independent; workers take the next index.
      std::vector<int> blocksizes(size_t(E), 0);
      std::atomic<int64_t> kept{0};
      parallel_for(E, opt.load_threads, [&](int64_t e) {
        if (opt.keep_quant && keep_expert(src, m, e, I, H, l.experts[size_t(e)])) {
          ++kept;
          return;
        }
        ExpertNf4 x = load_expert_nf4(src, m.substr(0, m.size() - 1), int(e), opt.nf4_blocksize);
        const std::string name = fmt::format("{}experts.{}", m, e);
        check_nf4_shape(x.gate, I, H, name + " gate", config_origin);
        check_nf4_shape(x.up, I, H, name + " up", config_origin);
        check_nf4_shape(x.down, H, I, name + " down", config_origin);
        for (const auto* q : {&x.up, &x.down})
          if (q->blocksize != x.gate.blocksize)
            fail("{}: NF4 blocksizes differ within the expert ({} and {}); one blocksize per model", name,
                 x.gate.blocksize, q->blocksize);
        blocksizes[size_t(e)] = x.gate.blocksize;
        Expert& ex = l.experts[size_t(e)];
        ex.gate_up = packer.make_nf4(stack_rows(std::move(x.gate), x.up), name + ".gate_up");
        ex.down = packer.make_nf4(std::move(x.down), name + ".down_proj");
      });
      w.experts_kept += kept;
      for (int64_t e = 0; e < E; ++e) {
        if (blocksizes[size_t(e)] == 0) continue;  // kept as stored
        if (blocksize_seen == 0) blocksize_seen = blocksizes[size_t(e)];
        if (blocksizes[size_t(e)] != blocksize_seen)
          fail("{}experts.{}: NF4 blocksize {} differs from the {} of the other experts; one blocksize per model", m,
               e, blocksizes[size_t(e)], blocksize_seen);
      }
      src.release(p);
      if (progress) progress->add(1);
      continue;
    }
    const std::string fused_gu = m + "experts.gate_up_proj", fused_down = m + "experts.down_proj";
    const bool fused = L.has(fused_gu);
    std::vector<float> fgu, fdown;
    if (fused) {
      fgu = tensor_to_f32(L.get(fused_gu, {E, 2 * I, H}), src.describe(fused_gu));
      fdown = tensor_to_f32(L.get(fused_down, {E, H, I}), src.describe(fused_down));
    }
    for (int64_t e = 0; e < E; ++e) {
      std::vector<float> gu, down;  // sized once the tensors' shapes confirmed I and H
      if (fused) {
        gu.assign(fgu.begin() + e * 2 * I * H, fgu.begin() + (e + 1) * 2 * I * H);
        down.assign(fdown.begin() + e * H * I, fdown.begin() + (e + 1) * H * I);
      } else {
        const std::string x = fmt::format("{}experts.{}.", m, e);
        const bool mixtral_names = c.arch == Arch::mixtral && L.has(x + "w1.weight");
        const std::string gn = x + (mixtral_names ? "w1" : "gate_proj") + ".weight";
        const std::string un = x + (mixtral_names ? "w3" : "up_proj") + ".weight";
        const std::string dn = x + (mixtral_names ? "w2" : "down_proj") + ".weight";
        std::vector<float> g = L.expert_part(gn, I, H), u = L.expert_part(un, I, H);
        gu.resize(size_t(2 * I * H));
        std::memcpy(gu.data(), g.data(), g.size() * 4);
        std::memcpy(gu.data() + I * H, u.data(), u.size() * 4);
        down = L.expert_part(dn, H, I);
      }
      Expert& ex = l.experts[size_t(e)];
      ex.gate_up = packer.make(std::move(gu), 2 * I, H, fmt::format("{}experts.{}.gate_up", m, e));
      ex.down = packer.make(std::move(down), H, I, fmt::format("{}experts.{}.down_proj", m, e));
    }
    src.release(p);
    if (progress) progress->add(1);
  }
  if (blocksize_seen) w.nf4_blocksize = blocksize_seen;  // a bitsandbytes checkpoint brings its own
  return w;
}

}  // namespace genesis::runtime
