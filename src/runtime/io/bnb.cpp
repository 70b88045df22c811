// bitsandbytes NF4 reader/writer and expert-layout resolution. See bnb.h for the tensor set.
#include "runtime/io/bnb.h"

#include <cmath>
#include <cstring>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace genesis::runtime {
namespace {

using nlohmann::json;

// Longest text Python's repr can give a float: "-1.2345678901234567e-308" is 24 characters.
constexpr size_t kMaxFloatRepr = 24;

const TensorView& need(const TensorSource& src, const std::string& name, const std::string& weight) {
  const TensorView* t = src.find(name);
  if (t == nullptr)
    fail("{}: weight '{}' has a bitsandbytes quant state but tensor '{}' is missing", src.describe(weight), weight,
         name);
  return *t;
}

// Shortest text that reads back as the same double, formatted the way Python's float repr is.
std::string python_float(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  std::string s = fmt::format("{}", v);
  // Python always shows a fractional part or an exponent ("1.0", "1e-05").
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

int64_t json_int(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) fail("{}: quant state JSON lacks integer \"{}\"", where, key);
  return it->get<int64_t>();
}

template <typename Writer>
void write_bnb_impl(Writer& w, const std::string& name, const quant::Nf4Matrix& m, bool double_quant,
                    const std::string& dtype) {
  const int64_t blocks = m.num_blocks();
  if (int64_t(m.packed.size()) != (m.numel() + 1) / 2 || int64_t(m.absmax.size()) != blocks)
    fail("write_bnb_nf4('{}'): matrix [{}, {}] has {} packed bytes and {} absmax values", name, m.rows, m.cols,
         m.packed.size(), m.absmax.size());
  w.write(name, m.packed.data(), m.packed.size());
  std::string state;
  if (double_quant) {
    const quant::Nf4DoubleQuant dq = quant::encode_double_quant(m.absmax);
    w.write(name + ".absmax", dq.q.data(), dq.q.size());
    w.write(name + ".quant_map", quant::kNf4Codes.data(), 16 * sizeof(float));
    w.write(name + ".nested_absmax", dq.nested_absmax.data(), dq.nested_absmax.size() * sizeof(float));
    w.write(name + ".nested_quant_map", dq.nested_quant_map.data(), 256 * sizeof(float));
    state = bnb_quant_state_json(m, dtype, &dq);
  } else {
    w.write(name + ".absmax", m.absmax.data(), m.absmax.size() * sizeof(float));
    w.write(name + ".quant_map", quant::kNf4Codes.data(), 16 * sizeof(float));
    state = bnb_quant_state_json(m, dtype, nullptr);
  }
  const auto specs = bnb_nf4_specs(name, m.rows, m.cols, m.blocksize, double_quant, dtype);
  const uint64_t room = specs.back().nbytes();
  if (state.size() > room) fail("write_bnb_nf4('{}'): quant state JSON of {} bytes exceeds {}", name, state.size(),
                                room);
  state.resize(size_t(room), ' ');
  w.write(name + kBnbQuantStateNf4, state.data(), state.size());
}

}  // namespace

std::string bnb_quant_state_json(const quant::Nf4Matrix& m, const std::string& dtype,
                                 const quant::Nf4DoubleQuant* dq) {
  std::string s = fmt::format(R"({{"quant_type": "nf4", "blocksize": {}, "dtype": "{}", "shape": [{}, {}])",
                              m.blocksize, dtype, m.rows, m.cols);
  if (dq != nullptr)
    s += fmt::format(R"(, "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {})",
                     dq->nested_blocksize, python_float(double(dq->offset)));
  return s + "}";
}

std::vector<TensorSpec> bnb_nf4_specs(const std::string& name, int64_t rows, int64_t cols, int blocksize,
                                      bool double_quant, const std::string& dtype) {
  quant::check_nf4_blocksize(blocksize);
  const int64_t numel = rows * cols;
  const int64_t blocks = (numel + blocksize - 1) / blocksize;
  std::vector<TensorSpec> specs;
  specs.push_back({name, Dtype::u8, {(numel + 1) / 2, 1}});
  quant::Nf4Matrix shape_only;
  shape_only.rows = rows;
  shape_only.cols = cols;
  shape_only.blocksize = blocksize;
  size_t state_len;
  if (double_quant) {
    const int64_t nested = (blocks + quant::kNf4NestedBlocksize - 1) / quant::kNf4NestedBlocksize;
    specs.push_back({name + ".absmax", Dtype::u8, {blocks}});
    specs.push_back({name + ".quant_map", Dtype::f32, {16}});
    specs.push_back({name + ".nested_absmax", Dtype::f32, {nested}});
    specs.push_back({name + ".nested_quant_map", Dtype::f32, {256}});
    quant::Nf4DoubleQuant dq;
    dq.offset = 0.0f;  // "0.0": 3 characters; the longest value needs kMaxFloatRepr
    state_len = bnb_quant_state_json(shape_only, dtype, &dq).size() - 3 + kMaxFloatRepr;
  } else {
    specs.push_back({name + ".absmax", Dtype::f32, {blocks}});
    specs.push_back({name + ".quant_map", Dtype::f32, {16}});
    state_len = bnb_quant_state_json(shape_only, dtype, nullptr).size();
  }
  specs.push_back({name + kBnbQuantStateNf4, Dtype::u8, {int64_t(state_len)}});
  return specs;
}

void write_bnb_nf4(SafetensorsWriter& w, const std::string& name, const quant::Nf4Matrix& m, bool double_quant,
                   const std::string& dtype) {
  write_bnb_impl(w, name, m, double_quant, dtype);
}
void write_bnb_nf4(ShardedSafetensorsWriter& w, const std::string& name, const quant::Nf4Matrix& m,
                   bool double_quant, const std::string& dtype) {
  write_bnb_impl(w, name, m, double_quant, dtype);
}

std::optional<quant::Nf4Matrix> load_bnb_nf4(const TensorSource& src, const std::string& name) {
  if (src.contains(name + kBnbQuantStateFp4))
    fail("{}: weight '{}' is bitsandbytes FP4; only NF4 is supported (re-quantize with bnb_4bit_quant_type=nf4)",
         src.describe(name + kBnbQuantStateFp4), name);
  const TensorView* state_t = src.find(name + kBnbQuantStateNf4);
  if (state_t == nullptr) {
    const TensorView* w = src.contains(name + ".absmax") ? src.find(name) : nullptr;
    if (w != nullptr && w->dtype == Dtype::u8)
      fail("{}: weight '{}' has bitsandbytes absmax but no quant state tensor '{}{}'", src.describe(name), name, name,
           kBnbQuantStateNf4);
    return std::nullopt;
  }
  const std::string where = fmt::format("{}: weight '{}'", src.describe(name), name);
  if (state_t->dtype != Dtype::u8) fail("{}: quant state is {}, expected U8 bytes of JSON", where,
                                        dtype_name(state_t->dtype));
  json st;
  try {
    const auto* b = static_cast<const uint8_t*>(state_t->data);
    st = json::parse(b, b + state_t->nbytes);
  } catch (const json::exception& e) {
    fail("{}: quant state is not valid JSON: {}", where, e.what());
  }
  if (!st.is_object()) fail("{}: quant state JSON is not an object", where);
  auto qt = st.find("quant_type");
  if (qt == st.end() || !qt->is_string()) fail("{}: quant state lacks \"quant_type\"", where);
  if (qt->get<std::string>() != "nf4")
    fail("{}: quant_type \"{}\" is not supported (only nf4)", where, qt->get<std::string>());
  const int64_t blocksize = json_int(st, "blocksize", where);
  if (blocksize < 1 || blocksize > quant::kNf4MaxBlocksize) fail("{}: blocksize {} is invalid", where, blocksize);
  quant::check_nf4_blocksize(int(blocksize));
  auto sh = st.find("shape");
  if (sh == st.end() || !sh->is_array() || sh->size() != 2)
    fail("{}: quant state \"shape\" must be [out, in] (got {})", where, sh == st.end() ? "nothing" : sh->dump());
  for (auto& d : *sh)
    if (!d.is_number_unsigned() || d.get<uint64_t>() == 0 || d.get<uint64_t>() > (1ull << 31))
      fail("{}: quant state shape {} is invalid", where, sh->dump());
  quant::Nf4Matrix m;
  m.rows = (*sh)[0].get<int64_t>();
  m.cols = (*sh)[1].get<int64_t>();
  m.blocksize = int(blocksize);
  const int64_t blocks = m.num_blocks();

  const TensorView& w = need(src, name, name);
  if (w.dtype != Dtype::u8) fail("{}: packed weight is {}, expected U8", where, dtype_name(w.dtype));
  if (int64_t(w.nbytes) != (m.numel() + 1) / 2)
    fail("{}: packed weight holds {} bytes; shape [{}, {}] needs {}", where, w.nbytes, m.rows, m.cols,
         (m.numel() + 1) / 2);
  m.packed.resize(w.nbytes);
  std::memcpy(m.packed.data(), w.data, w.nbytes);

  const TensorView& qmap = need(src, name + ".quant_map", name);
  if (qmap.numel() != 16) fail("{}: quant_map has {} values, expected 16", where, qmap.numel());
  const std::vector<float> codes = to_f32(qmap);
  for (int i = 0; i < 16; ++i)
    if (std::fabs(codes[size_t(i)] - quant::kNf4Codes[size_t(i)]) > 1e-6f)
      fail("{}: quant_map[{}] = {} is not the NF4 code {}; another code book is not supported", where, i,
           codes[size_t(i)], quant::kNf4Codes[size_t(i)]);

  const TensorView& absmax = need(src, name + ".absmax", name);
  if (absmax.numel() != blocks)
    fail("{}: absmax has {} values; [{}, {}] in blocks of {} needs {}", where, absmax.numel(), m.rows, m.cols,
         blocksize, blocks);
  const bool nested = st.contains("nested_blocksize") || st.contains("nested_offset");
  if (!nested) {
    if (absmax.dtype == Dtype::u8)
      fail("{}: absmax is U8 (double-quantized) but the quant state has no nested_blocksize / nested_offset", where);
    m.absmax = to_f32(absmax);
  } else {
    if (absmax.dtype != Dtype::u8)
      fail("{}: quant state is double-quantized but absmax is {}, expected U8", where, dtype_name(absmax.dtype));
    quant::Nf4DoubleQuant dq;
    const int64_t nbs = json_int(st, "nested_blocksize", where);
    if (nbs < 1 || nbs > quant::kNf4MaxBlocksize) fail("{}: nested_blocksize {} is invalid", where, nbs);
    dq.nested_blocksize = int(nbs);
    auto off = st.find("nested_offset");
    if (off == st.end() || !off->is_number()) fail("{}: quant state lacks number \"nested_offset\"", where);
    dq.offset = off->get<float>();
    dq.q.assign(static_cast<const uint8_t*>(absmax.data), static_cast<const uint8_t*>(absmax.data) + absmax.nbytes);
    const TensorView& na = need(src, name + ".nested_absmax", name);
    const int64_t need_nested = (blocks + nbs - 1) / nbs;
    if (na.numel() != need_nested)
      fail("{}: nested_absmax has {} values; {} blocks in nested blocks of {} need {}", where, na.numel(), blocks,
           nbs, need_nested);
    dq.nested_absmax = to_f32(na);
    const TensorView& nm = need(src, name + ".nested_quant_map", name);
    if (nm.numel() != 256) fail("{}: nested_quant_map has {} values, expected 256", where, nm.numel());
    const std::vector<float> map = to_f32(nm);
    std::copy(map.begin(), map.end(), dq.nested_quant_map.begin());
    m.absmax = quant::decode_double_quant(dq);
  }
  return m;
}

quant::Nf4Matrix load_linear_nf4(const TensorSource& src, const std::string& name, int blocksize) {
  if (auto m = load_bnb_nf4(src, name)) return std::move(*m);
  thread_local std::vector<float> scratch;  // one expert's weights, reused: no fresh pages per expert
  const std::vector<int64_t> shape = src.read_f32(name, scratch);
  if (shape.size() != 2)
    fail("{}: weight '{}' has {} dimensions; a linear weight is 2-D [out, in]", src.describe(name), name,
         shape.size());
  return quant::quantize_nf4(scratch, shape[0], shape[1], blocksize);
}

quant::Nf4Matrix quantize_expert_slice(const TensorView& t, int expert, int64_t row_begin, int64_t rows,
                                       int blocksize) {
  if (t.shape.size() != 3) fail("fused expert tensor '{}' has {} dimensions, expected 3 [experts, out, in]", t.name,
                                t.shape.size());
  const int64_t e = t.shape[0], r = t.shape[1], c = t.shape[2];
  if (expert < 0 || expert >= e) fail("fused expert tensor '{}': expert {} is outside [0, {})", t.name, expert, e);
  if (row_begin < 0 || rows <= 0 || row_begin + rows > r)
    fail("fused expert tensor '{}': rows [{}, {}) are outside [0, {})", t.name, row_begin, row_begin + rows, r);
  std::vector<float> w(size_t(rows * c));
  to_f32(t, (int64_t(expert) * r + row_begin) * c, rows * c, w.data());
  return quant::quantize_nf4(w, rows, c, blocksize);
}

ExpertNf4 load_expert_nf4(const TensorSource& src, const std::string& p, int expert, int blocksize) {
  const std::string e = std::to_string(expert);
  auto has = [&](const std::string& n) {
    return src.contains(n) || src.contains(n + kBnbQuantStateNf4);
  };
  const std::string qwen = p + ".experts." + e + ".";
  if (has(qwen + "gate_proj.weight"))
    return {load_linear_nf4(src, qwen + "gate_proj.weight", blocksize),
            load_linear_nf4(src, qwen + "up_proj.weight", blocksize),
            load_linear_nf4(src, qwen + "down_proj.weight", blocksize)};
  if (has(qwen + "w1.weight"))
    return {load_linear_nf4(src, qwen + "w1.weight", blocksize), load_linear_nf4(src, qwen + "w3.weight", blocksize),
            load_linear_nf4(src, qwen + "w2.weight", blocksize)};
  const TensorView* gu = src.find(p + ".experts.gate_up_proj");
  const TensorView* dn = src.find(p + ".experts.down_proj");
  if (gu != nullptr && dn != nullptr) {
    if (gu->shape.size() != 3 || dn->shape.size() != 3 || gu->shape[1] % 2 != 0 || gu->shape[0] != dn->shape[0] ||
        gu->shape[2] != dn->shape[1] || gu->shape[1] / 2 != dn->shape[2])
      fail("{}: fused experts disagree: gate_up_proj {} and down_proj {}; expected [E, 2*inter, hidden] and "
           "[E, hidden, inter]",
           src.describe(p + ".experts.gate_up_proj"), fmt::join(gu->shape, "x"), fmt::join(dn->shape, "x"));
    const int64_t inter = gu->shape[1] / 2;
    return {quantize_expert_slice(*gu, expert, 0, inter, blocksize),
            quantize_expert_slice(*gu, expert, inter, inter, blocksize),
            quantize_expert_slice(*dn, expert, 0, dn->shape[1], blocksize)};
  }
  fail("{}: no weights for expert {} under '{}' (looked for {}gate_proj.weight, {}w1.weight and {}.experts."
       "gate_up_proj)",
       src.describe(qwen + "gate_proj.weight"), expert, p, qwen, qwen, p);
}

}  // namespace genesis::runtime
