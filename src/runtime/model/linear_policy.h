// The policy: which kernel family holds each non-expert matrix, decided once at load from LoadOptions and what the
// file stores, behind the Linear seam (kernels/linear.h). The step never asks again. A new format touches its family
// folder and this file.
//
//   --keep-quant and a GGUF block format ggml_gemv multiplies  -> ggml_gemv (as stored, fp32 activations)
//   --dense stored and a block format kq_gemv runs             -> kq_gemv (as stored, int8 activations;
//                                                                 knowledge-base genome)
//   --dense q8 and a GGUF block format of 8 bits or fewer      -> q8_gemv (int8 blocks)
//   --dense nf4 / nf4-all and an eligible matrix               -> nf4_gemv (JIT kernels; knowledge-base genome)
//   bf16 in the file and keep_bf16                             -> float_dense bf16
//   anything else                                              -> float_dense fp32
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/kq_gemv/kq_gemv.h"
#include "kernels/linear.h"
#include "kernels/nf4_gemv/nf4_gemv.h"
#include "runtime/model/weights.h"
#include "runtime/tensor.h"

namespace genesis::runtime {

// What a matrix is for: the embedding (row lookups; a tied output reads it whole) and the router never become NF4;
// the router stays in the file's float format (it decides which experts run).
enum class MatrixRole { embedding, router, weight };

class LinearPolicy {
 public:
  // origin names the config in messages; arch for "needed by the ... architecture".
  LinearPolicy(const TensorSource& src, const LoadOptions& opt, std::string origin, std::string arch);
  // The matrix `name` (a tensor name, e.g. "model.layers.0.self_attn.q_proj.weight") of [rows, cols]. Throws
  // genesis::Error naming the tensor when it is missing or has another shape.
  std::shared_ptr<const kernels::Linear> choose(const std::string& name, int64_t rows, int64_t cols,
                                                MatrixRole role) const;
  // GGUF blocks of `ggml_type` [rows, cols] as stored on kq_gemv, on the knowledge base's genome for its format and
  // shape when it has one (looked up once per format and shape), else the baseline. Experts (--experts stored) too.
  // With dst, the records go there (kq_gemv::make_matrix_in; `keep` keeps that memory alive).
  std::shared_ptr<const kernels::Linear> kq_linear(uint32_t ggml_type, int64_t rows, int64_t cols,
                                                   const std::vector<uint8_t>& bytes, uint8_t* dst = nullptr,
                                                   std::shared_ptr<const void> keep = nullptr) const;
  // The checked tensor view (missing / wrong shape: an error naming the tensor, its file, and the shape expected).
  const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const;

 private:
  bool want_nf4(const std::string& name, int64_t rows, int64_t cols) const;
  std::vector<float> read_f32(const std::string& name, int64_t rows, int64_t cols) const;
  // NF4 kernels of a shape: one row on the knowledge base's genome when it has one, eight rows on the baseline;
  // built once per shape.
  std::shared_ptr<const kernels::nf4_gemv::KernelSet> nf4_kernels(int64_t rows, int64_t cols) const;

  const TensorSource& src_;
  const LoadOptions& opt_;
  std::string origin_, arch_, kb_path_;
  mutable std::mutex mu_;
  mutable std::map<std::pair<int64_t, int64_t>, std::shared_ptr<const kernels::nf4_gemv::KernelSet>> nf4_sets_;
  mutable std::map<std::tuple<int, int64_t, int64_t>, kernels::kq_gemv::Genome> kq_genomes_;  // (format, rows, cols)
};

// The knowledge base's best genome for one row of this NF4 shape on `path` (kb_path empty: none), or that of the
// nearest shape it holds for `path` (kb::nearest_genome_text), else the baseline; `tuned` says which.
// ("Knowledge-base genome, else baseline", written once.)
kernels::nf4_gemv::Genome genome_for(const kernels::nf4_gemv::Problem& pr, kernels::nf4_gemv::Path path,
                                     const std::string& kb_path, bool* tuned = nullptr);
// The same for kq_gemv: one activation row of a [rows, cols] matrix of format `f` on `path` (knowledge-base path key
// "<path>/<format>", as `genome evolve --family kq_gemv` stores it). A format with no record takes the one-row
// prefetch genes (pf, pfk, pfr) of another format's record on the same path (of this shape if one has it, else of
// the first format in kFormats' order that has one), its other genes the baseline's (`tuned` false).
kernels::kq_gemv::Genome genome_for(kernels::kq_gemv::Format f, int64_t rows, int64_t cols, kernels::kq_gemv::Path path,
                                    const std::string& kb_path, bool* tuned = nullptr);
// The knowledge base the options name ("" when use_kb is off).
std::string kb_path_of(const LoadOptions& opt);

std::string shape_str(const std::vector<int64_t>& s);

}  // namespace genesis::runtime
