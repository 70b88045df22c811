// bitsandbytes NF4 weights as transformers saves them (Params4bit + packed QuantState), read and written; MoE expert
// weights in every layout Genesis loads (per-expert 2-D, Mixtral w1/w3/w2, fused 3-D), as NF4 matrices.
// Not here: the kernels' packed layouts (kernels/), what the weights mean in the forward pass (model/).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "quant/nf4.h"
#include "runtime/io/safetensors.h"
#include "runtime/tensor.h"

namespace genesis::runtime {

// The tensors bitsandbytes stores for a 4-bit weight W (names are W's name plus a suffix):
//   W                                   U8 [ceil(numel/2), 1]  packed codes, high nibble first
//   W.absmax                            F32 [blocks], or U8 [blocks] when double-quantized
//   W.quant_map                         F32 [16]   the NF4 code book
//   W.nested_absmax                     F32 [ceil(blocks/nested_blocksize)]   (double quant only)
//   W.nested_quant_map                  F32 [256]  dynamic 8-bit map          (double quant only)
//   W.quant_state.bitsandbytes__nf4     U8 [len]   JSON {quant_type, blocksize, dtype, shape, nested_blocksize,
//                                                  nested_dtype, nested_offset}
inline constexpr const char* kBnbQuantStateNf4 = ".quant_state.bitsandbytes__nf4";
inline constexpr const char* kBnbQuantStateFp4 = ".quant_state.bitsandbytes__fp4";

// Loads W as an NF4 matrix [out, in] (the quant state's shape) with fp32 absmax (double quant decoded). Returns
// nullopt when W carries no bitsandbytes quant state (a plain weight). Every size is checked against the quant-state
// JSON; fp4, a foreign code book, or any inconsistency is a genesis::Error naming the tensor and its file.
std::optional<quant::Nf4Matrix> load_bnb_nf4(const TensorSource& src, const std::string& weight_name);

// W as NF4: the bitsandbytes tensors when present, else a 2-D F32/F16/BF16 weight [out, in] quantized now.
quant::Nf4Matrix load_linear_nf4(const TensorSource& src, const std::string& weight_name,
                                 int blocksize = quant::kNf4DefaultBlocksize);

// The exact bytes of the quant-state JSON for m, as bitsandbytes' pack_dict_to_tensor writes it (Python json.dumps
// with the same key order). `dtype` is the torch dtype name of the original weight ("bfloat16", "float16", ...).
std::string bnb_quant_state_json(const quant::Nf4Matrix& m, const std::string& dtype,
                                 const quant::Nf4DoubleQuant* dq);

// Tensor specs write_bnb_nf4 will write for a [rows, cols] weight, in its write order. The quant-state JSON of a
// double-quantized weight holds nested_offset as text whose length depends on the value, so its tensor is declared
// with room for the longest float and the JSON is padded with trailing spaces (json.loads ignores them).
std::vector<TensorSpec> bnb_nf4_specs(const std::string& weight_name, int64_t rows, int64_t cols, int blocksize,
                                      bool double_quant, const std::string& dtype = "bfloat16");

// Writes m under weight_name (tensors declared with bnb_nf4_specs, same dtype). With double_quant the absmax is encoded with
// quant::encode_double_quant (bitsandbytes' compress_statistics).
void write_bnb_nf4(SafetensorsWriter& w, const std::string& weight_name, const quant::Nf4Matrix& m,
                   bool double_quant, const std::string& dtype = "bfloat16");
void write_bnb_nf4(ShardedSafetensorsWriter& w, const std::string& weight_name, const quant::Nf4Matrix& m,
                   bool double_quant, const std::string& dtype = "bfloat16");

// Fused 3-D experts, as transformers stores them: `experts.gate_up_proj` [E, 2*inter, hidden] (gate rows first, then
// up rows) and `experts.down_proj` [E, hidden, inter]. Each expert slice fused3d[e] is [out, in] (y = W x, the
// nn.functional.linear convention), so rows [row_begin, row_begin + rows) of fused3d[expert] become an NF4 matrix
// [rows, in] with blocks running over that slice flattened: gate = rows [0, inter), up = rows [inter, 2*inter).
quant::Nf4Matrix quantize_expert_slice(const TensorView& fused3d, int expert, int64_t row_begin, int64_t rows,
                                       int blocksize = quant::kNf4DefaultBlocksize);

// One expert's three projections as NF4 [out, in]: gate and up [inter, hidden], down [hidden, inter].
struct ExpertNf4 {
  quant::Nf4Matrix gate, up, down;
};

// Finds expert `expert` under `moe_prefix` (e.g. "model.layers.3.mlp" or "model.layers.3.block_sparse_moe") in any
// of the layouts: experts.{e}.{gate_proj,up_proj,down_proj}.weight (bnb NF4 or float), experts.{e}.{w1,w3,w2}.weight
// (Mixtral), or fused experts.gate_up_proj / experts.down_proj (float, quantized now with `blocksize`).
ExpertNf4 load_expert_nf4(const TensorSource& src, const std::string& moe_prefix, int expert,
                          int blocksize = quant::kNf4DefaultBlocksize);

}  // namespace genesis::runtime
