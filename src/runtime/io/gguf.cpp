// GGUF reader; see gguf.h. Parsing goes through a bounds-checked cursor: no read past the end, no length or count
// trusted before it is checked against the bytes left.
#include "runtime/io/gguf.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "quant/ggml.h"
#include "runtime/io/mapped_file.h"

namespace genesis::runtime {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr int kMaxDims = 4;              // GGML_MAX_DIMS
constexpr uint64_t kMaxArrayNesting = 4;

enum VType : uint32_t { U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 };

class Cursor {
 public:
  Cursor(const uint8_t* p, size_t n, const std::string& label) : p_(p), n_(n), label_(label) {}
  size_t pos() const { return pos_; }
  size_t left() const { return n_ - pos_; }
  template <class T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    const uint64_t len = get<uint64_t>(what);
    need(len, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
    pos_ += size_t(len);
    return s;
  }
  [[noreturn]] void bad(const std::string& msg) const { fail("{}: {} (at byte {})", label_, msg, pos_); }
  void need(uint64_t bytes, const char* what) const {
    if (bytes > left()) bad(fmt::format("{} needs {} bytes but the file has {} left", what, bytes, left()));
  }

 private:
  const uint8_t* p_;
  size_t n_, pos_ = 0;
  const std::string& label_;
};

size_t scalar_size(uint32_t t) {
  switch (t) {
    case U8: case I8: case BOOL: return 1;
    case U16: case I16: return 2;
    case U32: case I32: case F32: return 4;
    case U64: case I64: case F64: return 8;
    default: return 0;
  }
}

nlohmann::json value(Cursor& c, uint32_t t, const std::string& key, int depth) {
  switch (t) {
    case U8: return c.get<uint8_t>("u8");
    case I8: return c.get<int8_t>("i8");
    case U16: return c.get<uint16_t>("u16");
    case I16: return c.get<int16_t>("i16");
    case U32: return c.get<uint32_t>("u32");
    case I32: return c.get<int32_t>("i32");
    case F32: return double(c.get<float>("f32"));
    case BOOL: {
      const uint8_t b = c.get<uint8_t>("bool");
      if (b > 1) c.bad(fmt::format("metadata {}: bool value {}", key, b));
      return b == 1;
    }
    case STR: return c.str("string");
    case U64: return c.get<uint64_t>("u64");
    case I64: return c.get<int64_t>("i64");
    case F64: return c.get<double>("f64");
    case ARR: {
      if (depth >= int(kMaxArrayNesting)) c.bad(fmt::format("metadata {}: arrays nested too deep", key));
      const uint32_t et = c.get<uint32_t>("array type");
      const uint64_t n = c.get<uint64_t>("array length");
      // Each element takes at least its scalar size (8 for a string's length, 12 for a nested array's header).
      const uint64_t min = et == STR ? 8 : et == ARR ? 12 : scalar_size(et);
      if (min == 0) c.bad(fmt::format("metadata {}: unknown array element type {}", key, et));
      if (n > c.left() / min) c.bad(fmt::format("metadata {}: array of {} elements cannot fit", key, n));
      nlohmann::json a = nlohmann::json::array();
      for (uint64_t i = 0; i < n; ++i) a.push_back(value(c, et, key, depth + 1));
      return a;
    }
    default: c.bad(fmt::format("metadata {}: unknown value type {}", key, t));
  }
}

}  // namespace

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (auto d : ne) n *= d;
  return n;
}

GgufFile::~GgufFile() = default;

std::unique_ptr<GgufFile> GgufFile::open(const std::string& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->label_ = path;
  f->map_ = std::make_unique<MappedFile>(path);
  f->parse_all(f->map_->data(), f->map_->size());
  return f;
}

std::unique_ptr<GgufFile> GgufFile::parse(const uint8_t* bytes, size_t size, const std::string& label) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->label_ = label;
  f->parse_all(bytes, size);
  return f;
}

void GgufFile::parse_all(const uint8_t* p, size_t n) {
  Cursor c(p, n, label_);
  if (c.get<uint32_t>("magic") != kMagic) c.bad("not a GGUF file (magic is not \"GGUF\")");
  version_ = c.get<uint32_t>("version");
  if (version_ != 2 && version_ != 3) c.bad(fmt::format("GGUF version {} (supported: 2, 3)", version_));
  const uint64_t n_tensors = c.get<uint64_t>("tensor count");
  const uint64_t n_kv = c.get<uint64_t>("metadata count");
  if (n_kv > c.left() / 12) c.bad(fmt::format("{} metadata entries cannot fit", n_kv));
  if (n_tensors > c.left() / 24) c.bad(fmt::format("{} tensor infos cannot fit", n_tensors));
  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string key = c.str("metadata key");
    const uint32_t t = c.get<uint32_t>("metadata type");
    if (meta_.contains(key)) c.bad(fmt::format("metadata key {} appears twice", key));
    meta_[key] = value(c, t, key, 0);
  }
  if (auto* a = find_meta("general.alignment")) {
    if (!a->is_number_unsigned() || a->get<uint64_t>() == 0 || (a->get<uint64_t>() & (a->get<uint64_t>() - 1)) ||
        a->get<uint64_t>() > 65536)
      c.bad(fmt::format("general.alignment {} is not a power of two up to 65536", describe_meta_value(*a)));
    alignment_ = a->get<uint64_t>();
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = c.str("tensor name");
    const uint32_t nd = c.get<uint32_t>("tensor dims");
    if (nd == 0 || nd > kMaxDims) c.bad(fmt::format("tensor {}: {} dimensions (1..{})", t.name, nd, kMaxDims));
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t v = c.get<uint64_t>("tensor dim");
      if (v == 0 || v > (uint64_t(1) << 40) || __builtin_mul_overflow(numel, v, &numel) || numel > (uint64_t(1) << 48))
        c.bad(fmt::format("tensor {}: dimension {} = {} is out of range", t.name, d, v));
      t.ne.push_back(int64_t(v));
    }
    t.type = c.get<uint32_t>("tensor type");
    const auto info = quant::ggml_type_info(t.type);
    if (!info) c.bad(fmt::format("tensor {}: unknown ggml type {}", t.name, t.type));
    const auto row = quant::ggml_row_bytes(t.type, uint64_t(t.ne[0]));
    if (!row)
      c.bad(fmt::format("tensor {}: row of {} elements is not a multiple of {}'s block of {}", t.name, t.ne[0],
                        info->name, info->block));
    if (__builtin_mul_overflow(*row, numel / uint64_t(t.ne[0]), &t.nbytes))
      c.bad(fmt::format("tensor {}: size overflows", t.name));
    t.offset = c.get<uint64_t>("tensor offset");
    if (t.offset % alignment_ != 0)
      c.bad(fmt::format("tensor {}: offset {} is not a multiple of the alignment {}", t.name, t.offset, alignment_));
    if (find(t.name)) c.bad(fmt::format("tensor {} appears twice", t.name));
    tensors_.push_back(std::move(t));
  }
  const uint64_t data_start = (uint64_t(c.pos()) + alignment_ - 1) / alignment_ * alignment_;
  if (data_start > n && !tensors_.empty()) c.bad("the data section starts past the end of the file");
  // Every tensor inside the data section, none overlapping another.
  std::vector<const GgufTensor*> by_offset;
  for (auto& t : tensors_) {
    uint64_t end = 0;
    if (__builtin_add_overflow(data_start, t.offset, &end) || __builtin_add_overflow(end, t.nbytes, &end) || end > n)
      fail("{}: tensor {} ({} bytes at data offset {}) extends past the end of the file ({} bytes)", label_, t.name,
           t.nbytes, t.offset, n);
    t.data = p + data_start + t.offset;
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i - 1]->offset + by_offset[i - 1]->nbytes > by_offset[i]->offset)
      fail("{}: tensors {} and {} overlap", label_, by_offset[i - 1]->name, by_offset[i]->name);
}

const nlohmann::json* GgufFile::find_meta(const std::string& key) const {
  auto it = meta_.find(key);
  return it == meta_.end() ? nullptr : &*it;
}

const GgufTensor* GgufFile::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

std::string describe_meta_value(const nlohmann::json& v, size_t max_chars) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > max_chars) s = s.substr(0, max_chars) + "...";
  return s;
}

std::vector<float> GgufFile::to_f32(const GgufTensor& t) const {
  std::vector<float> out(size_t(t.numel()));
  try {
    quant::ggml_dequantize(t.type, t.data, out.data(), t.numel());
  } catch (const Error& e) {
    fail("{}: tensor {}: {}", label_, t.name, e.what());
  }
  return out;
}

}  // namespace genesis::runtime
