// The schedule of one nf4_gemv kernel: parameter genes, the order of the hot loop's instructions, and inserted
// hints. Pure data: validate(), baseline(), text form, hash. What a genome *means* for the code is decided in
// make_conf() (conf.cpp); the search mutates only this struct.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace genesis::kernels::nf4_gemv {

// Data paths. Each has its own packed weight layout and error bound (family.cpp).
enum class Path : uint8_t {
  scalar,       // portable C++ (fp32), any x86-64
  avx2,         // compiled AVX2+FMA intrinsics (fp32), for CPUs without AVX-512
  avx512_fp32,  // JIT: codes through a register table (vpermps), fp32 FMA — exact fp32
  avx512_bf16,  // JIT: codes to bf16 (vpermw), activations rounded to bf16, vdpbf16ps
  avx512_vnni,  // JIT: codes to int8 round(127*code) (vpshufb), activations int8 per block, vpdpbusd
  // appended (values are stored ids): the int8 layout and activations of avx512_vnni in ymm registers, VEX only
  avx2_int8,    // JIT, AVX2+FMA: signed codes (vpshufb), vpsignb + vpmaddubsw + vpmaddwd
  avx2_vnni,    // JIT, AVX2+FMA+AVX-VNNI: u8 codes as avx512_vnni, {vex} vpdpbusd
};
inline constexpr Path kAllPaths[] = {Path::scalar,      Path::avx2,      Path::avx512_fp32, Path::avx512_bf16,
                                     Path::avx512_vnni, Path::avx2_int8, Path::avx2_vnni};
// Paths on the int8 layout (8 k per step) with int8 activations per block.
inline bool int8_layout(Path p) { return p == Path::avx512_vnni || p == Path::avx2_int8 || p == Path::avx2_vnni; }
inline bool is_avx2_jit(Path p) { return p == Path::avx2_int8 || p == Path::avx2_vnni; }

std::string_view path_name(Path p);                     // "scalar", "avx2", "avx512fp32", "avx512bf16", "avx512vnni"
std::optional<Path> parse_path(std::string_view name);  // nullopt for an unknown name
bool path_is_jit(Path p);

enum class HintKind : uint8_t { prefetch_t0, prefetch_t1, prefetch_t2, prefetch_nta, nop };
std::string_view hint_name(HintKind k);  // "t0", "t1", "t2", "nta", "nop"

// Streams a hint may point into (prefetch), in the order the kernel reads them.
enum class Stream : uint8_t { weights, scales, activations };

struct Hint {
  int pos = 0;  // insert before body instruction `pos` (after reordering); pos == body size appends
  HintKind kind = HintKind::prefetch_t0;
  Stream stream = Stream::weights;
  int offset = 0;  // prefetch: bytes ahead of the current position of the stream; nop: length 1..15
  bool operator==(const Hint&) const = default;
};

// Test-only switches that plant a faulty kernel, so the factory's sandbox and gates can be tested. Never produced
// by mutation operators; a genome carrying one is refused unless the caller allows faults.
enum class Fault : uint8_t { none, wrong_result, crash, hang, illegal_instruction };

struct Genome {
  Path path = Path::scalar;
  int row_groups = 1;  // 16-row groups per tile sharing one activation fetch: 1, 2, 4
  int accs = 1;        // independent int/fp accumulators per (group, token) to hide FMA/dot latency: 1, 2, 4
  int unroll = 0;      // steps per inner-loop iteration; 0 = one whole quantization block per iteration
  int pf_dist = 0;     // automatic weight prefetch distance in bytes (0 = none); one per 64-byte line
  HintKind pf_kind = HintKind::prefetch_t0;
  bool bcast_reg = false;  // activations broadcast into a register once per step instead of as memory operands
  // int8 path only: code lookup with vpermb (AVX512-VBMI, 6-bit index: no nibble masks) instead of vpshufb + vpandd
  bool lut_permb = false;
  int loop_align = 0;      // alignment of the hot loop's head: 0 (none), 16, 32, 64
  // Same-class replacements: indices (in the canonical loop body) of instructions replaced by the family's
  // equivalent (jit::alternative(): vpsrlw <-> vpsrld where only the low nibble is used, prefetcht0 <-> t1 <-> t2 <->
  // nta). Same registers read and written, so every order stays legal. Applied before `order`.
  std::vector<uint16_t> alt;
  std::vector<uint16_t> order;  // permutation of the canonical loop body; empty = canonical order
  std::vector<Hint> hints;      // inserted after reordering
  Fault fault = Fault::none;

  // The hand-written schedule of a path.
  static Genome baseline(Path p);

  // Structural checks that need no problem or CPU (ranges, permutation shape). Throws genesis::Error.
  void validate() const;

  // One line of text, e.g. "path=avx512vnni rg=1 acc=2 unroll=0 pf=0:t0 bc=0 align=0 order=- hints=-".
  std::string serialize() const;
  static Genome parse(std::string_view text);  // throws genesis::Error naming the bad field

  uint64_t hash() const;  // FNV-1a of serialize()
  std::string short_hash() const;  // 6 hex digits
  bool operator==(const Genome&) const = default;
};

// Canonical kernel identity, used alike in logs, knowledge-base keys, JIT dumps and test names:
// "nf4_gemv__avx512vnni__3fa1c2".
std::string kernel_id(const Genome& g);

}  // namespace genesis::kernels::nf4_gemv
