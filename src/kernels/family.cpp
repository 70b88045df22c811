// The family registry (see family.h): each entry built from the family's own public interface.
#include "kernels/family.h"

#include <cctype>

#include "kernels/ggml_gemv/ggml_gemv.h"
#include "kernels/kq_gemv/kq_gemv.h"
#include "kernels/nf4_gemv/nf4_gemv.h"
#include "kernels/q8_gemv/q8_gemv.h"
#include "quant/ggml.h"

namespace genesis::kernels {
namespace {

std::string upper(std::string s) {
  for (auto& c : s) c = char(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

FamilyInfo nf4() {
  namespace nf = nf4_gemv;
  FamilyInfo f;
  f.name = "nf4_gemv";
  f.summary = "fused NF4 dequantize + product, 1..16 activation rows";
  f.formats = {"NF4"};
  for (const auto& p : nf::path_info()) {
    FamilyPath fp;
    fp.name = std::string(nf::path_name(p.path));
    fp.needs = p.needs;
    fp.usable = p.usable;
    fp.jit = nf::path_is_jit(p.path);
    fp.error_bound = p.bound;
    f.paths.push_back(fp);
  }
  f.path = nf::path_name(nf::best_path());
  f.bytes = "packed codes and absmax in the path's layout, plus the prepared activations";
  f.benchmarked = true;
  return f;
}

FamilyInfo kq() {
  namespace kq = kq_gemv;
  FamilyInfo f;
  f.name = "kq_gemv";
  f.summary = "GGUF block formats as stored (or rearranged at equal size), int8 activations, 1..16 activation rows";
  for (kq::Format x : kq::kFormats) f.formats.push_back(kq::format_name(x));
  const auto avail = kq::available_paths();
  auto usable = [&](kq::Path p) {
    for (auto q : avail)
      if (q == p) return true;
    return false;
  };
  f.paths.push_back({"avx512vnni", "AVX512-F/BW/VNNI", usable(kq::Path::avx512vnni), true, kq::error_bound_text()});
  f.paths.push_back({"avx2vnni", "AVX2, FMA, F16C, AVX-VNNI", usable(kq::Path::avx2vnni), true, kq::error_bound_text()});
  f.paths.push_back({"avx2", "AVX2, FMA, F16C", usable(kq::Path::avx2), true, kq::error_bound_text()});
  f.paths.push_back({"scalar", "any x86-64", true, false, kq::error_bound_text()});
  f.path = kq::path_name(kq::best_path());
  f.bytes = "the matrix's records (Q6_K, Q8_0, Q4_0, Q4_1: the file's bytes; Q4_K/Q5_K +4 bytes per 256 weights) plus "
            "320 bytes per unit and activation row";
  f.benchmarked = true;
  return f;
}

FamilyInfo ggml() {
  namespace gg = ggml_gemv;
  FamilyInfo f;
  f.name = "ggml_gemv";
  f.summary = "GGUF blocks as stored, dequantized as ggml does, fp32 activations (--keep-quant)";
  using quant::GgmlType;
  for (GgmlType t : {GgmlType::q4_0, GgmlType::q4_1, GgmlType::q5_0, GgmlType::q5_1, GgmlType::q8_0, GgmlType::q4_k,
                     GgmlType::q5_k, GgmlType::q6_k})
    if (gg::supported(uint32_t(t))) f.formats.push_back(quant::ggml_type_name(uint32_t(t)));
  const bool wide = gg::best_path() == gg::Path::avx512;
  f.paths.push_back({"avx512", "AVX512-F", wide, false, "fp32 accumulation of the dequantized weights times x"});
  f.paths.push_back({"scalar", "any x86-64", true, false, "the family's reference (fp64 accumulation)"});
  f.path = gg::path_name(gg::best_path());
  f.bytes = "the file's bytes";
  return f;
}

FamilyInfo q8() {
  namespace q = q8_gemv;
  FamilyInfo f;
  f.name = "q8_gemv";
  f.summary = "int8 blocks of 32 with fp32 scales (--dense q8), int8 activations";
  f.formats = {"int8 blocks"};
  const bool vnni = q::best_path() == q::Path::avx512vnni;
  const std::string bound = "sum_b scale_b sum_k |q_k| sx_b / 2 + 1e-6 sum |w x| (vs exact fp32 x)";
  f.paths.push_back({"avx512vnni", "AVX512-F/BW/VNNI", vnni, false, bound});
  f.paths.push_back({"scalar", "any x86-64", true, false, bound});
  f.path = q::path_name(q::best_path());
  f.bytes = "1 byte per weight plus one fp32 scale per 32";
  return f;
}

}  // namespace

std::vector<FamilyInfo> families() { return {nf4(), kq(), ggml(), q8()}; }

std::optional<FamilyInfo> bench_family_for(const std::string& format) {
  const std::string u = upper(format);
  for (auto& f : families())
    if (f.benchmarked)
      for (const auto& x : f.formats)
        if (upper(x) == u) return f;
  return std::nullopt;
}

std::string bench_formats() {
  std::string s;
  for (auto& f : families())
    if (f.benchmarked)
      for (const auto& x : f.formats) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace genesis::kernels
