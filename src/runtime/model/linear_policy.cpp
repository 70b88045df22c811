// The policy choosing a family per matrix; see linear_policy.h.
#include "runtime/model/linear_policy.h"

#include <fmt/format.h>

#include <cstring>
#include <optional>

#include "common/error.h"
#include "kb/kb.h"
#include "kernels/float_dense/float_dense.h"
#include "kernels/ggml_gemv/ggml_gemv.h"
#include "kernels/kq_gemv/kq_gemv.h"
#include "kernels/q8_gemv/q8_gemv.h"
#include "quant/nf4.h"
#include "runtime/model/expert_pack.h"

namespace genesis::runtime {

namespace nk = kernels::nf4_gemv;

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::string kb_path_of(const LoadOptions& opt) {
  return !opt.use_kb ? "" : opt.kb_path.empty() ? kb::default_path() : opt.kb_path;
}

namespace {

// "Knowledge-base genome, else baseline", once for every family: the best genome of this CPU and build for one
// activation row of (family, path key, shape), or of the nearest shape the knowledge base holds for that family and
// path key (the gate checked it on shapes its search never saw), parsed by the family's genome type.
template <class G>
G tuned_or_baseline(const std::string& kb_path, const std::string& family, const std::string& path,
                    const std::string& shape, const G& baseline, bool* tuned) {
  std::optional<std::string> text;
  if (!kb_path.empty()) text = kb::nearest_genome_text(kb_path, family, path, shape, 1);
  if (tuned) *tuned = text.has_value();
  if (!text) return baseline;
  try {
    return G::parse(*text);
  } catch (const Error& e) {
    fail("knowledge base {}: best genome for {} {} {} is invalid: {}", kb_path, family, path, shape, e.what());
  }
}

}  // namespace

nk::Genome genome_for(const nk::Problem& pr, nk::Path path, const std::string& kb_path, bool* tuned) {
  return tuned_or_baseline(kb_path, "nf4_gemv", std::string(nk::path_name(path)), pr.shape(),
                           nk::Genome::baseline(path), tuned);
}

kernels::kq_gemv::Genome genome_for(kernels::kq_gemv::Format f, int64_t rows, int64_t cols,
                                    kernels::kq_gemv::Path path, const std::string& kb_path, bool* tuned) {
  namespace kg = kernels::kq_gemv;
  const std::string shape = fmt::format("{}x{}", rows, cols);
  bool own = false;
  kg::Genome g = tuned_or_baseline(kb_path, "kq_gemv", fmt::format("{}/{}", kg::path_name(path), kg::format_name(f)),
                                   shape, kg::Genome::baseline(), &own);
  if (tuned) *tuned = own;
  if (own || kb_path.empty()) return g;
  // No record of this format on this path: the baseline with the one-row prefetch genes (distance, kind, ramp) of
  // another format's record on the same path: a record of this very shape if one format has it, else the nearest
  // shape's of the first format in kFormats' order that has one. They fit this machine's memory system rather than a
  // format: on the 2-core Zen 4 VM (stop 36) independent cold one-thread searches of Q4_K and Q6_K both chose
  // pf=12288 (1.37x and 1.27x on held-out shapes). The other genes (several-row prefetch, order, blocking) stay the
  // baseline's; a record that does not parse is passed over (it is another format's).
  std::optional<kg::Genome> exact, first;
  for (kg::Format other : kg::kFormats) {
    if (other == f) continue;
    std::string from;
    const auto text = kb::nearest_genome_text(
        kb_path, "kq_gemv", fmt::format("{}/{}", kg::path_name(path), kg::format_name(other)), shape, 1, &from);
    if (!text) continue;
    try {
      const kg::Genome r = kg::Genome::parse(*text);
      if (from == shape && !exact) exact = r;
      if (!first) first = r;
    } catch (const Error&) {
    }
  }
  if (const auto& r = exact ? exact : first) g.pf_dist = r->pf_dist, g.pf_kind = r->pf_kind, g.pf_ramp = r->pf_ramp;
  return g;
}

std::shared_ptr<const kernels::Linear> LinearPolicy::kq_linear(uint32_t type, int64_t rows, int64_t cols,
                                                               const std::vector<uint8_t>& bytes, uint8_t* dst,
                                                               std::shared_ptr<const void> keep) const {
  namespace kg = kernels::kq_gemv;
  auto m = std::make_shared<const kg::Matrix>(
      dst ? kg::make_matrix_in(type, rows, cols, bytes.data(), bytes.size(), dst, std::move(keep))
          : kg::make_matrix(type, rows, cols, bytes.data(), bytes.size()));
  kg::Genome g;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = kq_genomes_.find({int(m->format), rows, cols});
    if (it == kq_genomes_.end())
      it = kq_genomes_.emplace(std::make_tuple(int(m->format), rows, cols),
                               genome_for(m->format, rows, cols, kg::best_path(), kb_path_))
               .first;
    g = it->second;
  }
  return kg::make_linear(std::move(m), g);
}

LinearPolicy::LinearPolicy(const TensorSource& src, const LoadOptions& opt, std::string origin, std::string arch)
    : src_(src), opt_(opt), origin_(std::move(origin)), arch_(std::move(arch)), kb_path_(kb_path_of(opt)) {}

const TensorView& LinearPolicy::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorView* t = src_.find(name);
  if (!t)
    fail("tensor \"{}\" is missing from the checkpoint (needed by the {} architecture of {})", name, arch_, origin_);
  if (t->shape != shape)
    fail("tensor \"{}\" in {} has shape {}, but {} implies {}", name, src_.describe(name), shape_str(t->shape),
         origin_, shape_str(shape));
  return *t;
}

std::vector<float> LinearPolicy::read_f32(const std::string& name, int64_t rows, int64_t cols) const {
  if (!src_.contains(name)) get(name, {rows, cols});  // the usual "missing" error
  std::vector<float> f;
  const auto shape = src_.read_f32(name, f);
  if (shape != std::vector<int64_t>{rows, cols})
    fail("tensor \"{}\" in {} has shape {}, but {} implies {}", name, src_.describe(name), shape_str(shape), origin_,
         shape_str({rows, cols}));
  return f;
}

bool LinearPolicy::want_nf4(const std::string& name, int64_t rows, int64_t cols) const {
  if (opt_.experts != ExpertMode::nf4_kernel || opt_.dense_nf4 == DenseNf4::off) return false;
  if (cols % opt_.nf4_blocksize != 0 || rows % 16 != 0) return false;  // the kernels' blocks and row groups
  return opt_.dense_nf4 == DenseNf4::all || src_.low_bit(name);
}

std::shared_ptr<const nk::KernelSet> LinearPolicy::nf4_kernels(int64_t rows, int64_t cols) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto& set = nf4_sets_[{rows, cols}];
  if (!set) {
    const nk::Path path = opt_.kernel_path();
    nk::require_path(path);
    const nk::Problem one{rows, cols, 1, opt_.nf4_blocksize}, eight{rows, cols, 8, opt_.nf4_blocksize};
    auto s = std::make_shared<nk::KernelSet>();
    (*s)[1] = nk::get_kernel(one, genome_for(one, path, kb_path_));
    (*s)[8] = nk::get_kernel(eight, nk::Genome::baseline(path));
    set = std::move(s);
  }
  return set;
}

std::shared_ptr<const kernels::Linear> LinearPolicy::choose(const std::string& name, int64_t rows, int64_t cols,
                                                            MatrixRole role) const {
  namespace gg = kernels::ggml_gemv;
  namespace q8 = kernels::q8_gemv;
  namespace fd = kernels::float_dense;
  const bool eligible = role != MatrixRole::router;  // may leave the file's float format
  if (eligible && opt_.keep_quant) {
    uint32_t type = 0;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
    if (src_.read_ggml(name, type, shape, bytes) && gg::supported(type)) {
      if (shape != std::vector<int64_t>{rows, cols})
        fail("tensor \"{}\" in {} has shape {}, but {} implies {}", name, src_.describe(name), shape_str(shape),
             origin_, shape_str({rows, cols}));
      return gg::make_linear(
          std::make_shared<const gg::GgmlMatrix>(gg::make_matrix(type, rows, cols, bytes.data(), bytes.size())));
    }
  }
  if (eligible && opt_.dense_stored && !opt_.keep_quant) {
    namespace kg = kernels::kq_gemv;
    uint32_t type = 0;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
    if (src_.read_ggml(name, type, shape, bytes) && kg::format_of(type)) {
      if (shape != std::vector<int64_t>{rows, cols})
        fail("tensor \"{}\" in {} has shape {}, but {} implies {}", name, src_.describe(name), shape_str(shape),
             origin_, shape_str({rows, cols}));
      return kq_linear(type, rows, cols, bytes);
    }
  }
  if (eligible && opt_.dense_q8 && !opt_.keep_quant && src_.block_quantized(name) && cols % q8::kBlock == 0) {
    const std::vector<float> f = read_f32(name, rows, cols);
    return q8::make_linear(std::make_shared<const q8::Q8Matrix>(q8::quantize(f.data(), rows, cols)));
  }
  if (role == MatrixRole::weight && want_nf4(name, rows, cols)) {
    const std::vector<float> f = read_f32(name, rows, cols);
    return nk::make_linear(pack_expert(quant::quantize_nf4(f, rows, cols, opt_.nf4_blocksize), opt_.kernel_path()),
                           nf4_kernels(rows, cols));
  }
  const TensorView& t = get(name, {rows, cols});
  if (opt_.keep_bf16 && t.dtype == Dtype::bf16) {
    std::vector<uint16_t> w(size_t(rows * cols));
    std::memcpy(w.data(), t.data, w.size() * 2);  // views may be unaligned
    return fd::make_bf16(rows, cols, std::move(w));
  }
  return fd::make_f32(rows, cols, tensor_to_f32(t, src_.describe(name)));
}

}  // namespace genesis::runtime
