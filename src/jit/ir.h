// The JIT's intermediate representation: a kernel is a flat list of instructions (plus loop markers). Each
// instruction records its opcode, operands and what it reads and writes (registers, memory streams, flags), so that
// def_use() can give the dependency graph and is_legal_order() can tell whether a reorder keeps every RAW, WAR and
// WAW order. What an instruction *does* on x86 lives only in emit.cpp.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace genesis::jit {

// Register ids in one namespace: vector 0..31, general purpose 32..47, flags 63.
inline constexpr int kGprBase = 32;
inline constexpr int kFlags = 63;
inline int gpr(int x86_index) { return kGprBase + x86_index; }  // x86 encoding index: rax=0 ... r15=15

enum class Gpr : uint8_t { rax = 0, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15 };

enum class Op : uint8_t {
  // vector loads (memory operand = source)
  vload,        // vmovdqu8/vmovups v, [m]  (width bytes)
  vzx_b2d,      // vpmovzxbd zmm, [m]       (16 bytes -> 16 dwords)
  vzx_b2w,      // vpmovzxbw zmm, [m]       (32 bytes -> 32 words)
  vbcast_d,     // vpbroadcastd zmm, [m]
  vbcast_w,     // vpbroadcastw v, [m]       (2 bytes to every word)
  vbcast_q,     // vpbroadcastq v, [m]       (8 bytes to every qword)
  vbcast_64x4,  // vbroadcasti64x4 zmm, [m]  (32 bytes to both halves)
  vsx_b2w,      // vpmovsxbw v, [m]          (width/2 bytes -> words, sign-extended)
  vsx_b2d,      // vpmovsxbd v, [m]          (width/4 bytes -> dwords, sign-extended)
  // vector ALU (dst, src1, src2|mem)
  vpandd,
  vpxord,       // with dst==src1==src2: zeroing idiom (reads nothing)
  vpsrld_imm,   // dst = src1 >> imm (dwords)
  vpsrlw_imm,   // dst = src1 >> imm (words)
  vpshufb,      // dst = shuffle(table=src1, idx=src2)
  vpermps,      // dst = table(src2)[idx(src1)]
  vpermw,       // dst = table(src2)[idx(src1)]
  vpermb,       // dst = table(src2)[idx(src1)] (bytes, 6-bit index)
  vpaddd,
  vpaddw,       // words, wrapping
  vaddps,
  vmulps,       // src2 may be a broadcast memory operand
  vcvtdq2ps,    // dst = float(src1)
  vcvtph2ps,    // dst (width) = float(half src1), src1 read at half the width
  vpsllw_imm,   // dst = src1 << imm (words)
  vpsraw_imm,   // dst = src1 >> imm (words, arithmetic)
  vpsrlvw,      // dst = src1 >> src2|mem (per-word counts)
  vpmullw,      // dst = low16(src1 * src2|mem) (words)
  vpmaddubsw,   // dst = sat16(u8 src1 * s8 src2|mem, adjacent pairs summed)
  vpmaddwd,     // dst = s16 src1 * s16 src2|mem, adjacent pairs summed to dwords
  // accumulate (dst is read and written)
  vpdpbusd,     // dst += dot4(u8 src1, s8 src2|mem)
  vdpbf16ps,    // dst += dot2(bf16 src1, bf16 src2|mem)
  vfmadd231ps,  // dst += src1 * src2|mem
  vfnmadd231ps, // dst -= src1 * src2|mem
  vpdpwssd,     // dst += dot2(s16 src1, s16 src2|mem)
  vpternlogd,   // dst = f_imm(dst, src1, src2|mem), bitwise (imm 0xF8: dst | (src1 & src2))
  // stores (memory operand = destination)
  vstore,       // vmovups [m], src1
  // scalar
  add_imm,      // gpr += imm (writes flags)
  add_reg,      // gpr += gpr(src1) (writes flags)
  mov_load,     // gpr = qword [m]
  mov_reg,      // gpr = gpr(src1)
  mov_imm,      // gpr = imm
  // hints: change no architectural state
  prefetch_t0,
  prefetch_t1,
  prefetch_t2,
  prefetch_nta,
  nop,          // multi-byte nop, length = imm
  // test-only fault injection (the factory's planted faulty kernels)
  ud2,          // illegal instruction
  // structure
  loop_begin,   // label; align = imm (0 = none); counter = dst (gpr id)
  loop_end,     // dec counter; jnz label
  // appended (enum values are ids: keep the ones above)
  vpor,         // dst = src1 | src2|mem (vpor at ymm/xmm width with registers 0..15, else vpord)
  vpabsb,       // dst = |src1| (bytes; -128 stays 0x80)
  vpsignb,      // dst = src1 negated where src2|mem < 0, zero where it is 0 (bytes; AVX2, no EVEX form)
  vshufi64x2,   // dst 128-bit lanes 0, 1 from src1, lanes 2, 3 from src2, each chosen by 2 bits of imm (zmm only)
};

const char* op_name(Op op);

struct Mem {
  int base = -1;       // register id (gpr)
  int32_t disp = 0;
  int stream = -1;     // memory stream id (family-defined), -1 for none (e.g. hints)
  bool bcast = false;  // {1to16} embedded broadcast of a dword
};

struct Instr {
  Op op = Op::nop;
  int width = 64;  // vector width in bytes: 16, 32, 64 (xmm, ymm, zmm)
  int dst = -1, src1 = -1, src2 = -1;  // register ids
  bool has_mem = false;
  Mem mem;
  int64_t imm = 0;
  // vpdpbusd / vpdpwssd: the VEX encoding (AVX-VNNI, ymm/xmm, registers 0..15) instead of EVEX (AVX512-VNNI).
  // Other opcodes are VEX-encoded wherever the operands allow (width <= 32, registers 0..15, no broadcast).
  bool vex = false;
  // Filled by finalize(): register bit sets and memory streams read and written.
  uint64_t reads = 0, writes = 0;
  uint32_t mem_reads = 0, mem_writes = 0;

  bool is_hint() const;
  bool is_load() const;
  bool is_structure() const { return op == Op::loop_begin || op == Op::loop_end; }
  // Same-class id: instructions of one class may replace each other where the family offers an equivalent.
  int cls() const;
  std::string text() const;  // Intel-like text for logs and dumps
};

// Same-class equivalents: an instruction that may replace `in` with the same registers read and written (and so the
// same dependencies): prefetch locality t0 -> t1 -> t2 -> nta -> t0; vpsrlw <-> vpsrld (equal wherever the consumer
// reads only the low nibble of each byte or each word's low byte, which holds for every table lookup the families
// emit). has_alternative() is false for anything else.
bool has_alternative(const Instr& in);
Instr alternative(const Instr& in);

// Computes reads/writes from the opcode and operands. Every Instr added to a program goes through this.
Instr finalize(Instr in);

// Constructors that keep operand roles consistent.
Instr make_load(Op op, int dst, Mem m, int width = 64);
Instr make_alu(Op op, int dst, int src1, int src2, int width = 64);
Instr make_alu_mem(Op op, int dst, int src1, Mem m, int width = 64);
Instr make_shift(Op op, int dst, int src1, int imm, int width = 64);
Instr make_store(int src, Mem m, int width = 64);
Instr make_hint(Op op, Mem m);  // prefetch
Instr make_nop(int bytes);
Instr make_gpr(Op op, int dst, int src1, int64_t imm, Mem m = {});

struct DepGraph {
  std::vector<std::vector<int>> preds;  // preds[j]: instructions that must stay before j
  std::vector<std::vector<int>> succs;
  size_t edges = 0;
};

// Dependencies of a straight-line body: RAW, WAR, WAW through registers, flags and memory streams (a write to a
// stream orders it against every other access of that stream). Hints depend only on their address register.
DepGraph def_use(std::span<const Instr> body);

// order[p] = index (in body) of the instruction placed at position p. Legal iff it is a permutation and keeps
// every edge of def_use(body). `why` names the first violated edge.
bool is_legal_order(std::span<const Instr> body, std::span<const uint16_t> order, std::string* why = nullptr);
// body permuted by a legal order (empty: unchanged); an illegal one is a genesis::Error "<what>: illegal order for
// this body (n instructions): <why>" (what names the kernel).
void apply_order(std::vector<Instr>& body, std::span<const uint16_t> order, const std::string& what);

// A whole kernel: straight-line code with loop markers; [hot_begin, hot_end) is the innermost loop's body — the
// region a genome may reorder and insert hints into.
struct Program {
  std::vector<Instr> code;
  size_t hot_begin = 0, hot_end = 0;
  std::vector<int> saved_gprs;  // callee-saved registers the kernel uses (pushed / popped by the emitter)
  std::string name;             // kernel id, for dumps
};

}  // namespace genesis::jit
