// Loading a model's tensors from a TensorSource into Weights, checking every shape against config.json.
// Experts come per expert (experts.{e}.gate_proj / Mixtral w1, w3, w2) or fused 3-D (experts.gate_up_proj).
#include "runtime/model/weights.h"

#include "common/progress.h"
#include "runtime/io/bnb.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include <sys/mman.h>

#include "common/error.h"
#include "quant/ggml.h"
#include "quant/half.h"
#include "kernels/kq_gemv/kq_gemv.h"
#include "runtime/model/expert_pack.h"
#include "runtime/model/linear_policy.h"

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
  fail("--experts '{}': expected stored, nf4 (kernels), nf4-reference or f32", name);
}

const char* dense_nf4_name(DenseNf4 d) {
  switch (d) {
    case DenseNf4::off: return "off";
    case DenseNf4::low_bit: return "low-bit";
    case DenseNf4::all: return "all";
  }
  return "?";
}

const char* kv_type_name(KvType t) { return t == KvType::f16 ? "f16" : "f32"; }

KvType parse_kv_type(const std::string& name) {
  if (name == "f16") return KvType::f16;
  if (name == "f32") return KvType::f32;
  fail("unknown KV cache type '{}' (choose f16 or f32)", name);
}

void set_expert_mode(const std::string& name, LoadOptions& opt) {
  opt.experts_stored = name == "stored";
  opt.experts = opt.experts_stored ? ExpertMode::nf4_kernel : expert_mode_from_name(name);
}

void set_dense_mode(const std::string& mode, LoadOptions& opt) {
  opt.dense_q8 = false;
  opt.dense_stored = false;
  if (mode == "stored") opt.keep_bf16 = true, opt.dense_nf4 = DenseNf4::off, opt.dense_q8 = true, opt.dense_stored = true;
  else if (mode == "q8") opt.keep_bf16 = true, opt.dense_nf4 = DenseNf4::off, opt.dense_q8 = true;
  else if (mode == "bf16") opt.keep_bf16 = true, opt.dense_nf4 = DenseNf4::off;
  else if (mode == "f32") opt.keep_bf16 = false, opt.dense_nf4 = DenseNf4::off;
  else if (mode == "nf4") opt.keep_bf16 = true, opt.dense_nf4 = DenseNf4::low_bit;
  else if (mode == "nf4-all") opt.keep_bf16 = true, opt.dense_nf4 = DenseNf4::all;
  else fail("--dense '{}': expected stored, q8, bf16, f32, nf4 or nf4-all", mode);
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
    for (const Expert& e : l.experts) n += e.gate_up.bytes() + e.down.bytes();
  return n;
}

namespace {

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

}  // namespace

ExpertArena::ExpertArena(int64_t n, Part gu, Part d) : experts(n), gate_up(gu), down(d) {
  gate_up.offset = 0;
  down.offset = size_t(n) * gate_up.expert_bytes;
  bytes = down.offset + size_t(n) * down.expert_bytes;
  void* p = mmap(nullptr, bytes + 64, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    fail("cannot map {:.2f} GiB for a layer's experts: {}", double(bytes) / double(1ull << 30), std::strerror(errno));
  madvise(p, bytes + 64, MADV_HUGEPAGE);  // fewer TLB misses for the kernels' streams (a hint; may be refused)
  data = static_cast<uint8_t*>(p);
}

ExpertArena::~ExpertArena() {
  if (data) munmap(data, bytes + 64);
}

namespace {

// A layer's arena, mapped by the first expert that reaches it (its formats decide the arena's).
struct ArenaSlot {
  std::mutex mu;
  std::shared_ptr<ExpertArena> arena;
  bool tried = false;
};

// keep_quant: expert e as the file stores it, when its three matrices are in formats ggml_gemv multiplies. Gate and
// up become one [2 * inter, hidden] matrix (gate rows first) when they share a format, else two.
// kq: on kq_gemv (experts_stored) instead of ggml_gemv (keep_quant).
// With `slot` (kq only), gate_up and down's records go to the layer's arena when their formats are its formats.
bool keep_expert(const TensorSource& src, const std::string& m, int64_t e, int64_t E, int64_t I, int64_t H, bool kq,
                 const LinearPolicy& policy, Expert& out, ArenaSlot* slot) {
  namespace gg = kernels::ggml_gemv;
  namespace kg = kernels::kq_gemv;
  const std::string x = fmt::format("{}experts.{}.", m, e);
  uint32_t tg = 0, tu = 0, td = 0;
  std::vector<int64_t> sg, su, sd;
  std::vector<uint8_t> bg, bu, bd;
  if (!src.read_ggml(x + "gate_proj.weight", tg, sg, bg) || !src.read_ggml(x + "up_proj.weight", tu, su, bu) ||
      !src.read_ggml(x + "down_proj.weight", td, sd, bd))
    return false;
  auto runs = [&](uint32_t t) { return kq ? kg::format_of(t).has_value() : gg::supported(t); };
  if (!runs(tg) || !runs(tu) || !runs(td)) return false;
  if (sg != std::vector<int64_t>{I, H} || su != sg || sd != std::vector<int64_t>{H, I})
    fail("{}: expert shapes gate {}, up {}, down {} do not match the config's [{}, {}] / [{}, {}]", src.describe(x),
         shape_str(sg), shape_str(su), shape_str(sd), I, H, H, I);
  std::shared_ptr<ExpertArena> arena;
  if (kq && slot && tg == tu) {
    std::lock_guard<std::mutex> lock(slot->mu);
    if (!slot->tried) {
      slot->tried = true;
      try {
        slot->arena = std::make_shared<ExpertArena>(
            E, ExpertArena::Part{tg, 2 * I, H, 0, kg::record_bytes_of(tg, 2 * I, H)},
            ExpertArena::Part{td, H, I, 0, kg::record_bytes_of(td, H, I)});
      } catch (const Error&) {
        // No mapping this large: each expert keeps its own records (the GPU's prefill then stages the file's blocks).
      }
    }
    if (slot->arena && slot->arena->gate_up.type == tg && slot->arena->down.type == td) arena = slot->arena;
  }
  auto linear = [&](uint32_t type, int64_t rows, int64_t cols, const std::vector<uint8_t>& b,
                    const ExpertArena::Part* part) {
    if (kq && arena && part)
      return policy.kq_linear(type, rows, cols, b, arena->data + part->offset + size_t(e) * part->expert_bytes, arena);
    return kq ? policy.kq_linear(type, rows, cols, b)
              : gg::make_linear(std::make_shared<const gg::GgmlMatrix>(gg::make_matrix(type, rows, cols, b.data(), b.size())));
  };
  out.gate_up.rows = 2 * I, out.gate_up.cols = H;
  if (tg == tu) {
    bg.insert(bg.end(), bu.begin(), bu.end());
    out.gate_up.op = linear(tg, 2 * I, H, bg, arena ? &arena->gate_up : nullptr);
  } else {
    out.gate_up.op = kernels::make_stacked(linear(tg, I, H, bg, nullptr), linear(tu, I, H, bu, nullptr));
  }
  out.down.rows = H, out.down.cols = I;
  out.down.op = linear(td, H, I, bd, arena ? &arena->down : nullptr);
  if (arena) ++arena->placed;
  return true;
}

class Loader {
 public:
  Loader(const ModelConfig& c, const TensorSource& src, const std::string& config_origin, const LoadOptions& opt)
      : c_(c), src_(src), origin_(config_origin), opt_(opt), policy_(src, opt, config_origin, arch_name(c.arch)) {}

  bool has(const std::string& name) const { return src_.contains(name); }

  const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const {
    return policy_.get(name, shape);
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

  // The matrix prefix.weight [rows, cols] in the family the policy chooses (linear_policy.h), with prefix.bias.
  Dense dense(const std::string& prefix, int64_t rows, int64_t cols, bool bias,
              MatrixRole role = MatrixRole::weight) const {
    return Dense(policy_.choose(prefix + ".weight", rows, cols, role),
                 bias ? vec(prefix + ".bias", rows) : std::vector<float>{});
  }

  // One expert's [rows, cols] matrix from a per-expert tensor or a slice of a fused [E, R, cols] tensor.
  std::vector<float> expert_part(const std::string& name, int64_t rows, int64_t cols) const {
    return tensor_to_f32(get(name, {rows, cols}), src_.describe(name));
  }

  const ModelConfig& c_;
  const TensorSource& src_;
  const std::string& origin_;
  const LoadOptions& opt_;
  LinearPolicy policy_;
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
        out[size_t(i)] = quant::bf16_to_f32(h);
      }
      break;
    }
    case Dtype::f16: {
      const auto* p = static_cast<const uint8_t*>(t.data);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[size_t(i)] = quant::f16_to_f32(h);
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
  w.embed = L.dense("model.embed_tokens", c.vocab_size, H, false, MatrixRole::embedding);
  w.final_norm = L.norm("model.norm.weight", H);
  if (!c.tie_word_embeddings) w.lm_head = L.dense("lm_head", c.vocab_size, H, false);
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
        l.in_qkv = L.dense(a + "in_proj_qkv", CD, H, false);
        l.in_z = L.dense(a + "in_proj_z", c.linear_value_dim(), H, false);
      } else {
        l.in_qkvz = L.dense(a + "in_proj_qkvz", 2 * c.linear_key_dim() + 2 * c.linear_value_dim(), H, false);
      }
      l.in_ba = L.dense(a + "in_proj_ba", 2 * nv, H, false, MatrixRole::router);  // stays in float: it sets beta and the decay
      l.conv_w = L.any_shape(a + "conv1d.weight", {{CD, 1, K}, {CD, K}});
      l.dt_bias = L.vec(a + "dt_bias", nv);
      if (!L.has(a + "A_log") && L.has(a + "A")) {
        l.a_neg = L.vec(a + "A", nv);  // GGUF ssm_a: -exp(A_log) as stored
      } else {
        l.a_neg = L.vec(a + "A_log", nv);
        for (float& x : l.a_neg) x = -std::exp(x);
      }
      l.gated_norm = L.vec(a + "norm.weight", c.linear_value_head_dim);
      l.out_proj = L.dense(a + "out_proj", H, c.linear_value_dim(), false);
    } else {
      const std::string a = p + "self_attn.";
      const int64_t qrows = mixer == MixerKind::gated_attention ? 2 * c.q_dim() : c.q_dim();
      l.q = L.dense(a + "q_proj", qrows, H, c.attention_bias);
      l.k = L.dense(a + "k_proj", c.kv_dim(), H, c.attention_bias);
      l.v = L.dense(a + "v_proj", c.kv_dim(), H, c.attention_bias);
      l.o = L.dense(a + "o_proj", H, c.q_dim(), c.o_bias);
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
      l.shared_gate_proj = L.dense(s + "gate_proj", SI, H, false);
      l.shared_up = L.dense(s + "up_proj", SI, H, false);
      l.shared_down = L.dense(s + "down_proj", H, SI, false);
      l.shared_gate = L.dense(p + "mlp.shared_expert_gate", 1, H, false, MatrixRole::router);
    }
    if (!l.moe) {
      const int64_t I = c.intermediate_size;
      l.gate = L.dense(p + "mlp.gate_proj", I, H, c.mlp_bias);
      l.up = L.dense(p + "mlp.up_proj", I, H, c.mlp_bias);
      l.down = L.dense(p + "mlp.down_proj", H, I, c.mlp_bias);
      src.release(p);
      if (progress) progress->add(1);
      continue;
    }
    const int64_t E = c.num_experts, I = c.moe_intermediate_size;
    std::string m = p + "mlp.";
    if (c.arch == Arch::mixtral && (L.has(p + "block_sparse_moe.gate.weight"))) m = p + "block_sparse_moe.";
    l.router = L.dense(m + "gate", E, H, false, MatrixRole::router);
    l.experts.resize(size_t(E));
    if (opt.experts != ExpertMode::f32) {
      // NF4 as stored (bitsandbytes) or quantized now from a float checkpoint, one expert per worker at a time: no
      // fp32 copy of a layer's experts is ever held. Experts are independent; workers take the next index.
      std::vector<int> blocksizes(size_t(E), 0);
      std::atomic<int64_t> kept{0};
      ArenaSlot arena_slot;
      parallel_for(E, opt.load_threads, [&](int64_t e) {
        if ((opt.keep_quant || opt.experts_stored) &&
            keep_expert(src, m, e, E, I, H, !opt.keep_quant, L.policy_, l.experts[size_t(e)], &arena_slot)) {
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
      l.expert_arena = std::move(arena_slot.arena);
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
