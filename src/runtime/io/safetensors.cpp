// Safetensors reader (mmap + complete header validation) and streaming writers. See safetensors.h.
#include "runtime/io/safetensors.h"

#include "runtime/io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "common/error.h"
#include "quant/half.h"

namespace genesis::runtime {
using quant::bf16_to_f32;
using quant::f16_to_f32;
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A header larger than this is not a real checkpoint (the reference implementation uses the same bound); refusing
// it early keeps a lying length from making us allocate gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

uint64_t checked_numel(const std::vector<int64_t>& shape, const std::string& where) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("{}: negative dimension {} in shape", where, d);
    if (__builtin_mul_overflow(n, uint64_t(d), &n)) fail("{}: shape overflows 64 bits", where);
  }
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

struct Entry {
  TensorView view;
  size_t file = 0;
};

class SafetensorsSource final : public TensorSource {
 public:
  explicit SafetensorsSource(std::string label) : label_(std::move(label)) {}

  void add_file(const std::string& path, const std::set<std::string>* only) {
    auto f = std::make_unique<MappedFile>(path);
    std::map<std::string, std::string> meta;
    std::vector<TensorView> views = parse_safetensors_buffer(f->data(), f->size(), path, &meta);
    const size_t idx = files_.size();
    for (auto& v : views) {
      if (only != nullptr && only->count(v.name) == 0) continue;
      auto [it, inserted] = tensors_.try_emplace(v.name, Entry{v, idx});
      if (!inserted)
        fail("tensor '{}' appears both in {} and in {}", v.name, files_[it->second.file]->path(), path);
      order_.push_back(v.name);
    }
    files_.push_back(std::move(f));
    metadata_.push_back(std::move(meta));
  }

  const TensorView* find(const std::string& name) const override {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second.view;
  }
  std::vector<std::string> names() const override { return order_; }
  std::string describe(const std::string& name) const override {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) return label_;
    const std::string& p = files_[it->second.file]->path();
    if (files_.size() == 1) return p;
    return fmt::format("{} (shard {} of {})", p, it->second.file + 1, files_.size());
  }
  const std::map<std::string, std::string>* metadata_of(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &metadata_[it->second.file];
  }
  size_t num_files() const { return files_.size(); }

  void release(const std::string& prefix) const override {
    const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
    for (const auto& [name, e] : tensors_) {
      if (name.compare(0, prefix.size(), prefix) != 0 || e.view.nbytes == 0) continue;
      // Whole pages inside the tensor only: a page shared with a neighbour may still be needed.
      const uintptr_t b = (uintptr_t(e.view.data) + page - 1) & ~(page - 1);
      const uintptr_t end = (uintptr_t(e.view.data) + e.view.nbytes) & ~(page - 1);
      if (end > b) ::madvise(reinterpret_cast<void*>(b), end - b, MADV_DONTNEED);
    }
  }

 private:
  std::string label_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::vector<std::map<std::string, std::string>> metadata_;
  std::unordered_map<std::string, Entry> tensors_;
  std::vector<std::string> order_;
};

std::unique_ptr<TensorSource> open_index(const fs::path& index_path) {
  const std::string ip = index_path.string();
  json index;
  {
    MappedFile f(ip);
    try {
      index = json::parse(f.data(), f.data() + f.size());
    } catch (const json::exception& e) {
      fail("{}: not valid JSON: {}", ip, e.what());
    }
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail("{}: expected a JSON object with a \"weight_map\" object", ip);
  std::map<std::string, std::set<std::string>> by_shard;
  for (auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) fail("{}: weight_map entry for tensor '{}' is not a file name", ip, name);
    const std::string file = shard.get<std::string>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
      fail("{}: tensor '{}' names shard '{}', which is not a plain file name in the same directory", ip, name, file);
    by_shard[file].insert(name);
  }
  if (by_shard.empty()) fail("{}: weight_map is empty", ip);
  auto src = std::make_unique<SafetensorsSource>(ip);
  for (auto& [file, names] : by_shard) {
    const fs::path shard_path = index_path.parent_path() / file;
    if (!fs::exists(shard_path))
      fail("{}: tensor '{}' is mapped to shard {}, which does not exist", ip, *names.begin(), shard_path.string());
    src->add_file(shard_path.string(), &names);
    for (const auto& n : names)
      if (src->find(n) == nullptr)
        fail("{}: tensor '{}' is mapped to {}, but that shard does not contain it", ip, n, shard_path.string());
  }
  return src;
}

void check_range(const TensorView& t, int64_t elem_begin, int64_t count) {
  const int64_t n = t.numel();
  if (elem_begin < 0 || count < 0 || elem_begin > n || count > n - elem_begin)
    fail("tensor '{}': elements [{}, {}) are outside its {} elements", t.name, elem_begin, elem_begin + count, n);
}

}  // namespace

Dtype parse_dtype(const std::string& name, const std::string& where) {
  static const std::map<std::string, Dtype> kNames = {
      {"F32", Dtype::f32}, {"F16", Dtype::f16}, {"BF16", Dtype::bf16}, {"U8", Dtype::u8},     {"I8", Dtype::i8},
      {"I32", Dtype::i32}, {"I64", Dtype::i64}, {"F64", Dtype::f64},   {"BOOL", Dtype::bool_}};
  auto it = kNames.find(name);
  if (it == kNames.end())
    fail("{}: unsupported dtype \"{}\" (known: F32, F16, BF16, U8, I8, I32, I64, F64, BOOL)", where, name);
  return it->second;
}

std::vector<TensorView> parse_safetensors_buffer(const uint8_t* bytes, size_t size, const std::string& label,
                                                 std::map<std::string, std::string>* metadata) {
  if (size < 8) fail("{}: truncated: {} bytes, a safetensors file starts with an 8-byte header length", label, size);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little endian
  if (header_len > size - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes): truncated or not safetensors", label,
         header_len, size);
  if (header_len > kMaxHeaderBytes) fail("{}: header length {} exceeds the {} byte limit", label, header_len,
                                         kMaxHeaderBytes);
  const uint8_t* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON: {}", label, e.what());
  }
  if (!header.is_object()) fail("{}: header is not a JSON object", label);

  std::vector<TensorView> views;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::vector<size_t> range_owner;
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) fail("{}: __metadata__ is not an object", label);
      for (auto& [k, v] : info.items()) {
        if (!v.is_string()) fail("{}: __metadata__ value for '{}' is not a string", label, k);
        if (metadata != nullptr) (*metadata)[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = fmt::format("{}: tensor '{}'", label, name);
    if (!info.is_object()) fail("{}: entry is not an object", where);
    auto dt = info.find("dtype");
    auto sh = info.find("shape");
    auto off = info.find("data_offsets");
    if (dt == info.end() || !dt->is_string()) fail("{}: missing string \"dtype\"", where);
    if (sh == info.end() || !sh->is_array()) fail("{}: missing array \"shape\"", where);
    if (off == info.end() || !off->is_array() || off->size() != 2)
      fail("{}: \"data_offsets\" must be an array [begin, end]", where);
    TensorView v;
    v.name = name;
    v.dtype = parse_dtype(dt->get<std::string>(), where);
    for (auto& d : *sh) {
      if (!d.is_number_unsigned()) fail("{}: shape entries must be non-negative integers, got {}", where, d.dump());
      const uint64_t u = d.get<uint64_t>();
      if (u > uint64_t(INT64_MAX)) fail("{}: dimension {} is too large", where, u);
      v.shape.push_back(int64_t(u));
    }
    for (auto& o : *off)
      if (!o.is_number_unsigned()) fail("{}: data_offsets must be non-negative integers, got {}", where, o.dump());
    const uint64_t begin = (*off)[0].get<uint64_t>(), end = (*off)[1].get<uint64_t>();
    if (begin > end) fail("{}: data_offsets [{}, {}] run backwards", where, begin, end);
    if (end > data_size)
      fail("{}: data_offsets [{}, {}] run past the data area ({} bytes): file truncated or header wrong", where,
           begin, end, data_size);
    const uint64_t numel = checked_numel(v.shape, where);
    uint64_t expect = 0;
    if (__builtin_mul_overflow(numel, uint64_t(dtype_size(v.dtype)), &expect) || expect != end - begin)
      fail("{}: shape {} of {} needs {} bytes but data_offsets [{}, {}] hold {}", where, shape_str(v.shape),
           dtype_name(v.dtype), numel * dtype_size(v.dtype), begin, end, end - begin);
    v.data = data + begin;
    v.nbytes = size_t(end - begin);
    ranges.emplace_back(begin, end);
    range_owner.push_back(views.size());
    views.push_back(std::move(v));
  }
  // Overlapping tensors would alias each other's bytes: a broken (or malicious) writer, never a real checkpoint.
  std::vector<size_t> order(ranges.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  uint64_t prev_end = 0;
  size_t prev = SIZE_MAX;
  for (size_t i : order) {
    if (ranges[i].first == ranges[i].second) continue;
    if (prev != SIZE_MAX && ranges[i].first < prev_end)
      fail("{}: tensor '{}' (bytes [{}, {})) overlaps tensor '{}' (ending at {})", label,
           views[range_owner[i]].name, ranges[i].first, ranges[i].second, views[range_owner[prev]].name, prev_end);
    prev_end = ranges[i].second;
    prev = i;
  }
  return views;
}

std::unique_ptr<TensorSource> open_safetensors(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  if (!fs::exists(p, ec)) fail("{}: no such file or directory", path);
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "model.safetensors.index.json")) return open_index(p / "model.safetensors.index.json");
    fs::path single = p / "model.safetensors";
    if (!fs::exists(single)) {
      std::vector<fs::path> found;
      for (auto& e : fs::directory_iterator(p, ec))
        if (e.path().extension() == ".safetensors") found.push_back(e.path());
      if (found.size() != 1)
        fail("{}: expected model.safetensors, model.safetensors.index.json or a single *.safetensors file; found {} "
             ".safetensors files and no index",
             path, found.size());
      single = found[0];
    }
    auto src = std::make_unique<SafetensorsSource>(single.string());
    src->add_file(single.string(), nullptr);
    return src;
  }
  if (p.filename() == "model.safetensors.index.json" || p.extension() == ".json") return open_index(p);
  auto src = std::make_unique<SafetensorsSource>(path);
  src->add_file(path, nullptr);
  return src;
}

std::map<std::string, std::string> safetensors_metadata(const TensorSource& src, const std::string& tensor_name) {
  const auto* s = dynamic_cast<const SafetensorsSource*>(&src);
  if (s == nullptr) return {};
  const auto* m = s->metadata_of(tensor_name);
  return m == nullptr ? std::map<std::string, std::string>{} : *m;
}

void to_f32(const TensorView& t, int64_t elem_begin, int64_t count, float* out) {
  check_range(t, elem_begin, count);
  const auto* base = static_cast<const uint8_t*>(t.data);
  switch (t.dtype) {
    case Dtype::f32:
      std::memcpy(out, base + size_t(elem_begin) * 4, size_t(count) * 4);
      return;
    case Dtype::bf16:
    case Dtype::f16: {
      const uint8_t* p = base + size_t(elem_begin) * 2;
      const bool bf = t.dtype == Dtype::bf16;
      for (int64_t i = 0; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, p + size_t(i) * 2, 2);
        out[i] = bf ? bf16_to_f32(h) : f16_to_f32(h);
      }
      return;
    }
    default:
      fail("tensor '{}' has dtype {}; expected a floating-point tensor (F32, F16 or BF16)", t.name,
           dtype_name(t.dtype));
  }
}

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> out(size_t(t.numel()));
  to_f32(t, 0, t.numel(), out.data());
  return out;
}

std::vector<float> to_f32_rows(const TensorView& t, int64_t row_begin, int64_t rows) {
  if (t.shape.empty()) fail("tensor '{}' is a scalar; it has no rows", t.name);
  const int64_t n_rows = t.shape[0];
  if (row_begin < 0 || rows < 0 || row_begin > n_rows || rows > n_rows - row_begin)
    fail("tensor '{}': rows [{}, {}) are outside its {} rows", t.name, row_begin, row_begin + rows, n_rows);
  const int64_t row_elems = n_rows == 0 ? 0 : t.numel() / n_rows;
  std::vector<float> out(size_t(rows * row_elems));
  to_f32(t, row_begin * row_elems, rows * row_elems, out.data());
  return out;
}

// ---------------------------------------------------------------------------------------------------- writers

uint64_t TensorSpec::nbytes() const { return checked_numel(shape, "tensor '" + name + "'") * dtype_size(dtype); }

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<TensorSpec> tensors,
                                     const std::map<std::string, std::string>& metadata)
    : path_(std::move(path)), tensors_(std::move(tensors)) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::set<std::string> seen;
  for (const auto& t : tensors_) {
    if (t.name.empty() || t.name == "__metadata__") fail("{}: invalid tensor name '{}'", path_, t.name);
    if (!seen.insert(t.name).second) fail("{}: tensor '{}' declared twice", path_, t.name);
    const uint64_t n = t.nbytes();
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  total_bytes_ = 8 + text.size() + offset;
  file_ = std::fopen(path_.c_str(), "wb");
  if (file_ == nullptr) fail("cannot create {}: {}", path_, std::strerror(errno));
  std::setvbuf(file_, nullptr, _IOFBF, 1 << 20);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));
  put(len, 8);
  put(text.data(), text.size());
  while (current_ < tensors_.size() && tensors_[current_].nbytes() == 0) ++current_;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (file_ != nullptr) {
    std::fclose(file_);
    if (!finished_) std::remove(path_.c_str());
  }
}

void SafetensorsWriter::put(const void* data, size_t n) {
  if (n != 0 && std::fwrite(data, 1, n, file_) != n) fail("writing {} failed: {}", path_, std::strerror(errno));
  bytes_written_ += n;
}

void SafetensorsWriter::write(const std::string& name, const void* data, size_t nbytes) {
  if (finished_) fail("{}: write of '{}' after finish()", path_, name);
  if (current_ >= tensors_.size()) fail("{}: tensor '{}' written after every declared tensor was complete", path_,
                                        name);
  const TensorSpec& t = tensors_[current_];
  if (t.name != name)
    fail("{}: got data for tensor '{}' while tensor '{}' is being written (tensors are written in declaration "
         "order)",
         path_, name, t.name);
  if (current_done_ + nbytes > t.nbytes())
    fail("{}: tensor '{}' is {} bytes; {} bytes were given", path_, name, t.nbytes(), current_done_ + nbytes);
  put(data, nbytes);
  current_done_ += nbytes;
  if (current_done_ == t.nbytes()) {
    current_done_ = 0;
    ++current_;
    while (current_ < tensors_.size() && tensors_[current_].nbytes() == 0) ++current_;
  }
}

void SafetensorsWriter::finish() {
  if (finished_) return;
  if (current_ < tensors_.size())
    fail("{}: tensor '{}' is incomplete ({} of {} bytes) at finish()", path_, tensors_[current_].name, current_done_,
         tensors_[current_].nbytes());
  const bool flush_ok = std::fflush(file_) == 0;
  const bool close_ok = std::fclose(file_) == 0;
  file_ = nullptr;
  if (!flush_ok || !close_ok) {
    std::remove(path_.c_str());
    fail("writing {} failed at close: {}", path_, std::strerror(errno));
  }
  finished_ = true;
}

ShardedSafetensorsWriter::ShardedSafetensorsWriter(const std::string& dir, std::vector<TensorSpec> tensors,
                                                   uint64_t max_shard_bytes,
                                                   const std::map<std::string, std::string>& metadata)
    : dir_(dir), metadata_(metadata) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (!fs::is_directory(dir_)) fail("cannot create directory {}", dir_);
  uint64_t in_shard = 0;
  for (auto& t : tensors) {
    const uint64_t n = t.nbytes();
    total_bytes_ += n;
    if (shards_.empty() || (in_shard > 0 && in_shard + n > max_shard_bytes)) {
      shards_.push_back({});
      in_shard = 0;
    }
    in_shard += n;
    if (!shard_of_.emplace(t.name, shards_.size() - 1).second) fail("{}: tensor '{}' declared twice", dir_, t.name);
    shards_.back().tensors.push_back(std::move(t));
  }
  if (shards_.empty()) shards_.push_back({});
  const size_t n = shards_.size();
  for (size_t i = 0; i < n; ++i)
    shards_[i].file =
        n == 1 ? "model.safetensors" : fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n);
  open_shard(0);
}

ShardedSafetensorsWriter::~ShardedSafetensorsWriter() = default;

void ShardedSafetensorsWriter::open_shard(size_t i) {
  open_ = i;
  writer_ = std::make_unique<SafetensorsWriter>((fs::path(dir_) / shards_[i].file).string(), shards_[i].tensors,
                                                metadata_);
}

void ShardedSafetensorsWriter::write(const std::string& name, const void* data, size_t nbytes) {
  auto it = shard_of_.find(name);
  if (it == shard_of_.end()) fail("{}: tensor '{}' was not declared", dir_, name);
  if (it->second != open_) {
    if (it->second != open_ + 1)
      fail("{}: tensor '{}' belongs to shard {} but shard {} is being written", dir_, name, it->second + 1,
           open_ + 1);
    writer_->finish();
    done_bytes_ += writer_->bytes_written();
    open_shard(open_ + 1);
  }
  writer_->write(name, data, nbytes);
}

uint64_t ShardedSafetensorsWriter::bytes_written() const {
  return done_bytes_ + (writer_ ? writer_->bytes_written() : 0);
}

void ShardedSafetensorsWriter::finish() {
  if (finished_) return;
  // Shards after the open one can only hold empty tensors; write them so every declared tensor exists.
  while (true) {
    writer_->finish();
    done_bytes_ += writer_->bytes_written();
    if (open_ + 1 >= shards_.size()) break;
    open_shard(open_ + 1);
  }
  writer_.reset();
  if (shards_.size() > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total_bytes_}};
    nlohmann::ordered_json map = nlohmann::ordered_json::object();
    for (const auto& s : shards_)
      for (const auto& t : s.tensors) map[t.name] = s.file;
    index["weight_map"] = map;
    const std::string path = (fs::path(dir_) / "model.safetensors.index.json").string();
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) fail("cannot create {}: {}", path, std::strerror(errno));
    const std::string text = index.dump(2) + "\n";
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    if (std::fclose(f) != 0 || !ok) fail("writing {} failed", path);
  }
  finished_ = true;
}

}  // namespace genesis::runtime
