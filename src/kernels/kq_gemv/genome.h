// A kq_gemv schedule as data, so that the factory can search it: software prefetch (distance and locality), the
// unit loop's alignment, and the driver's blocking (rows per kernel call; the L1 budget that sets how many units a
// column chunk spans). baseline() is the hand-tuned default; validate() names the first gene out of range.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace genesis::kernels::kq_gemv {

enum class PrefetchKind : uint8_t { t0, t1, t2, nta };

// Test-only switches that plant a faulty product, so that the factory's sandbox and gates can be tested on this
// family (as nf4_gemv's Fault). Never produced by the factory's mutation operators; run_rows() refuses a genome that
// carries one unless the caller allows faults (only the factory's sandboxed tests do).
enum class Fault : uint8_t { none, wrong_result, crash, hang, illegal_instruction };

struct Genome {
  // bytes ahead of the record being decoded; 0 = none; multiple of 64, <= 65536. 4096 measured on the 2-core Zen 5
  // machine, 1 thread, cold 14336x4096: Q4_K 26 -> 31 GB/s, Q6_K 27 -> 31 GB/s against 0 (8192 alike); no cost hot.
  int pf_dist = 4096;
  // The same for passes of more than one activation row ("pfm"): measured apart because the two want different
  // distances (stop 27, 2-core Intel Xeon with AMX, cold, 2 threads: Q4_K 14336x4096 one row 14.0 GB/s at 4096 and
  // 18.9 at 1024, but four rows 12.1 at 4096 and 8.5 at 1024).
  int pf_multi = 4096;
  // Into L2 (prefetcht2), not L1: an L1 prefetch holds one of the core's few L1 fill buffers until its line
  // arrives, so the core has fewer misses in flight than its L2 queue allows, and a 4-bit kernel, whose compute then
  // does not overlap its reads, ran at 55-65% of the bus. Stop 29, the 2-core Intel Xeon with AMX, cold, 2 threads,
  // 14336x4096 / 2048x7168, t0 -> t2: Q4_K 59/57 -> 84/84%, Q5_K 61/54 -> 83/79%, Q6_K 64/55 -> 86/86%, Q4_0 64/63
  // -> 87/85%, Q4_1 65/54 -> 84/76%, Q8_0 95/90 -> 96/94%; one thread alike; hot and the 4-row passes unchanged.
  PrefetchKind pf_kind = PrefetchKind::t2;
  // The two-row kernels (several activation rows, Q4_K / Q6_K): they prefetch the next pair's two rows at the record
  // being decoded plus pfp bytes, not pfm bytes ahead in memory. Their walk is row pair by row pair over a column
  // chunk, so the next pair's same records are what they read next; a linear distance lands in the pair's own second
  // row (a row is 2-8 KB) and left half the rows unprefetched.
  int pf_pair = 0;
  // Bytes of a call's row range prefetched (pfk) before its first kernel starts ("pfr"; 0 = none; multiple of 64,
  // <= 65536). The kernels prefetch pf / pfm bytes ahead of the record they decode, so a range's first pf bytes
  // were demand misses, a few in flight at a time; a decode step's dense products are hundreds of such ranges of
  // 5-100 KB (tasks of 4-16 per thread), each starting there. Baseline 0: on the 16-core host (SmolLM2 shape, 16
  // threads, alternated rounds against 0) 4096 took the 8-stream step from 4.24 / 4.31 / 4.42 to 3.94 / 4.04 / 4.27 ms
  // in one call and from 4.39 / 5.75 / 4.72 / 4.36 to 4.96 / 5.87 / 4.88 / 4.47 in a later one; neutral on the 30B
  // shape at 8 threads and on the 2-core Zen 4 VM: no effect that holds. The factory searches it.
  int pf_ramp = 0;
  int loop_align = 64;                   // unit loop alignment: 0, 16, 32 or 64
  int row_chunk = 64;                    // rows per kernel call (their fp32 lanes stay in L1/L2): 1..256
  int x_budget_kb = 24;                  // activation records of one column chunk: 1..1024 KB
  // Activation rows one kernel pass takes (1..16); more rows go in balanced passes over each chunk of rows (the
  // chunk's weights are then re-read from L2, not memory). 8: with 16 rows one pass runs out of registers (one temp
  // set, constants from memory) and two passes of 8 were faster (Q6_K 2048x768 16 rows 265 -> 201 us).
  int rows_per_pass = 8;
  // A permutation of the unit loop's canonical body (build.h: canonical_body()), empty = canonical. Checked against
  // the body's def/use edges when the kernel is built (jit::is_legal_order): an illegal order is a genesis::Error.
  // The body depends on the format and the activation rows of a pass: an order fits one (format, rows) pair.
  std::vector<uint16_t> order;
  Fault fault = Fault::none;

  static Genome baseline() { return Genome{}; }
  int pf_for(int tokens) const { return tokens > 1 ? pf_multi : pf_dist; }  // the prefetch distance of a pass
  void validate() const;                 // throws genesis::Error naming the gene and its range
  // "pf=4096 pfm=4096 pfp=0 pfr=0 pfk=t2 align=64 rows=64 xkb=24 pass=8" (+ " order=3,0,1,2..." if any, + " fault=crash"
  // if any)
  std::string serialize() const;
  static Genome parse(const std::string& text);  // inverse of serialize(); genesis::Error on bad text
  uint64_t hash() const;                 // FNV-1a of serialize(): the knowledge base's dedupe key
  // The genes that shape the generated code ("pf4096m4096p0t2a64", + "o<hash>" with an order): the kernel id and cache
  // key.
  std::string code_key() const;
  friend bool operator==(const Genome&, const Genome&) = default;
};

}  // namespace genesis::kernels::kq_gemv
