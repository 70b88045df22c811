// Checkpoint quantization; see quantize.h.
#include "runtime/model/quantize.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "common/error.h"
#include "common/progress.h"
#include "common/util.h"
#include "quant/nf4.h"
#include "runtime/io/bnb.h"
#include "runtime/io/safetensors.h"
#include "runtime/model/config.h"

namespace genesis::runtime {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* torch_dtype(Dtype d) {
  switch (d) {
    case Dtype::bf16: return "bfloat16";
    case Dtype::f16: return "float16";
    default: return "float32";
  }
}

bool is_float(Dtype d) { return d == Dtype::f32 || d == Dtype::bf16 || d == Dtype::f16; }

// One output tensor: copied from the source, or one expert projection quantized (from a 2-D tensor, or from rows
// [row0, row0 + rows) of expert `e` of a fused 3-D tensor).
struct Out {
  std::string name;  // output name (the weight's name for NF4)
  const TensorView* src = nullptr;
  bool nf4 = false;
  int expert = -1;
  int64_t row0 = 0, rows = 0, cols = 0;
};

}  // namespace

QuantizeResult quantize_model(const QuantizeOptions& opt) {
  const double t0 = now_seconds();
  quant::check_nf4_blocksize(opt.blocksize);
  const fs::path in(opt.in), out(opt.out);
  if (!fs::is_directory(in)) fail("model directory {} does not exist", opt.in);
  const fs::path cfg_path = in / "config.json";
  if (!fs::exists(cfg_path)) fail("{} has no config.json", opt.in);
  json cfg;
  {
    std::ifstream f(cfg_path);
    cfg = json::parse(f, nullptr, false);
    if (cfg.is_discarded() || !cfg.is_object()) fail("{}: not a valid JSON object", cfg_path.string());
  }
  const ModelConfig c = parse_config(cfg, cfg_path.string());
  if (!c.is_moe()) fail("{} is a dense {} model: quantize converts MoE experts to NF4", opt.in, arch_name(c.arch));
  if (cfg.contains("quantization_config")) fail("{} is already quantized (config.json has quantization_config)", opt.in);
  if (fs::exists(out) && !(fs::is_directory(out) && fs::is_empty(out)))
    fail("{} exists and is not an empty directory; choose a new --out", opt.out);

  auto src = open_safetensors(opt.in);
  const std::regex per_expert(R"(^(.*\.experts\.\d+\.(gate_proj|up_proj|down_proj|w1|w2|w3)\.weight)$)");
  const std::regex fused(R"(^(.*\.experts\.)(gate_up_proj|down_proj)$)");
  std::vector<Out> outs;
  std::vector<TensorSpec> specs;
  json skip = json::array();
  std::string dtype_name;
  QuantizeResult res;
  for (const auto& name : src->names()) {
    const TensorView* t = src->find(name);
    res.bytes_in += t->nbytes;
    if (name.find(".absmax") != std::string::npos || name.find(".quant_state.") != std::string::npos)
      fail("{}: tensor {} is already bitsandbytes-quantized", src->describe(name), name);
    std::smatch m;
    auto add_nf4 = [&](const std::string& n, int e, int64_t r0, int64_t rows, int64_t cols) {
      if (cols % opt.blocksize != 0)
        fail("{}: {} has {} in-features, not a multiple of the blocksize {}", src->describe(name), n, cols,
             opt.blocksize);
      outs.push_back({n, t, true, e, r0, rows, cols});
      for (auto& s : bnb_nf4_specs(n, rows, cols, opt.blocksize, opt.double_quant, torch_dtype(t->dtype)))
        specs.push_back(s);
      if (dtype_name.empty()) dtype_name = torch_dtype(t->dtype);
    };
    if (is_float(t->dtype) && t->shape.size() == 2 && std::regex_match(name, m, per_expert)) {
      add_nf4(name, -1, 0, t->shape[0], t->shape[1]);
    } else if (is_float(t->dtype) && t->shape.size() == 3 && std::regex_match(name, m, fused)) {
      // Fused [E, rows, cols] -> per-expert tensors, the layout bitsandbytes' Linear4bit modules load.
      const std::string base = m[1].str();
      const int64_t E = t->shape[0], R = t->shape[1], K = t->shape[2];
      for (int64_t e = 0; e < E; ++e) {
        if (m[2].str() == "gate_up_proj") {
          add_nf4(fmt::format("{}{}.gate_proj.weight", base, e), int(e), 0, R / 2, K);
          add_nf4(fmt::format("{}{}.up_proj.weight", base, e), int(e), R / 2, R / 2, K);
        } else {
          add_nf4(fmt::format("{}{}.down_proj.weight", base, e), int(e), 0, R, K);
        }
      }
    } else {
      outs.push_back({name, t, false});
      specs.push_back({name, t->dtype, t->shape});
      // Linear layers transformers would otherwise convert (embeddings and norms are not Linear).
      if (t->shape.size() == 2 && name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 &&
          name.find("embed_tokens") == std::string::npos)
        skip.push_back(name.substr(0, name.size() - 7));
    }
  }
  if (dtype_name.empty()) fail("{}: no expert weights found to quantize", opt.in);

  fs::create_directories(out);
  for (const auto& e : fs::directory_iterator(in)) {  // tokenizer, generation config, chat template, ...
    const auto fn = e.path().filename().string();
    if (!e.is_regular_file() || fn == "config.json" || fn == "model.safetensors.index.json" ||
        e.path().extension() == ".safetensors")
      continue;
    fs::copy_file(e.path(), out / fn, fs::copy_options::overwrite_existing);
  }
  cfg["quantization_config"] = {{"quant_method", "bitsandbytes"},
                                {"_load_in_4bit", true},
                                {"load_in_4bit", true},
                                {"load_in_8bit", false},
                                {"bnb_4bit_quant_type", "nf4"},
                                {"bnb_4bit_use_double_quant", opt.double_quant},
                                {"bnb_4bit_compute_dtype", dtype_name},
                                {"bnb_4bit_quant_storage", "uint8"},
                                {"llm_int8_skip_modules", skip}};
  {
    std::ofstream f(out / "config.json");
    f << cfg.dump(2) << "\n";
    if (!f) fail("cannot write {}", (out / "config.json").string());
  }

  uint64_t total = 0;
  for (const auto& s : specs) total += s.nbytes();
  ShardedSafetensorsWriter w(opt.out, specs, opt.shard_bytes, {{"format", "pt"}});
  Progress bar("quantize", double(total), "B", opt.progress);
  for (const Out& o : outs) {
    bar.set_detail(o.name);
    if (!o.nf4) {
      w.write(o.name, o.src->data, o.src->nbytes);
      ++res.copied;
    } else {
      quant::Nf4Matrix q = o.expert < 0 ? quant::quantize_nf4(to_f32(*o.src), o.rows, o.cols, opt.blocksize)
                                        : quantize_expert_slice(*o.src, o.expert, o.row0, o.rows, opt.blocksize);
      write_bnb_nf4(w, o.name, q, opt.double_quant, torch_dtype(o.src->dtype));
      ++res.quantized;
    }
    bar.set(double(w.bytes_written()));
  }
  w.finish();
  bar.finish();
  res.bytes_out = w.bytes_written();
  res.seconds = now_seconds() - t0;
  return res;
}

}  // namespace genesis::runtime
