// The GPU side of the hybrid step: the few kernels a transformer layer needs besides its routed experts, as launchers
// callable from C++ (kernels.cu). Every launcher queues work on `s` and returns; errors surface at the next
// Stream::sync. Activations are fp32 rows; weights fp32 or bf16 (DeviceMatrix). Shapes are the caller's to check
// (the runtime's GPU model checks them once at load).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace genesis::cuda {

// A weight matrix [rows, cols] in device memory, row-major, fp32 or bf16, with an optional fp32 bias [rows].
struct DeviceMatrix {
  const void* w = nullptr;
  bool bf16 = false;
  int64_t rows = 0, cols = 0;
  const float* bias = nullptr;
  // type != 0: w holds the rows as a GGUF file stores them (ggml type id, any can_dequantize() takes), row_bytes
  // each; the products dequantize them in registers (fp32, the file's exact values) and bf16 is ignored.
  uint32_t type = 0;
  int64_t row_bytes = 0;
};

// y[t * ldy + r] = sum_k W[r, k] x[t * cols + k] (+ bias[r]) for t < n, r < rows. Up to 8 rows of x share one pass
// over W (a warp per output row, 16-byte loads); more rows take several passes.
void gemv(const DeviceMatrix& W, const float* x, float* y, int64_t n, int64_t ldy, cudaStream_t s);
// Up to three products over the same x (q, k and v; gate and up) in one launch: y_i = W_i x with row stride ldy_i.
// The matrices share cols and their weight type (bf16, fp32, or GGUF blocks of any types; else they run as separate
// launches).
struct GemvJob {
  DeviceMatrix w;
  float* y = nullptr;
  int64_t ldy = 0;
};
void gemv_many(const GemvJob* jobs, int count, const float* x, int64_t n, cudaStream_t s);

// slots[i] = the device's global nanosecond clock (%globaltimer), from one thread: stamps between kernels of a CUDA
// graph time its parts where no profiler is at hand (GENESIS_CUDA_TIMES=graph).
void stamp(int64_t* slots, int64_t i, cudaStream_t s);

// Per row t < n of [H]: x[t] += (a[t] + b[t]) (either may be null; x is left alone when both are), then
// xn[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * w (also into xn_copy when given: host memory mapped for the device).
void add_rms_norm(float* x, const float* a, const float* b, const float* w, float* xn, int64_t n, int64_t H, float eps,
                  cudaStream_t s, float* xn_copy = nullptr);
// In place: `count` vectors of `dim` floats, vector i at v + i * dim, each RMS-normalized and scaled by w[dim].
void rms_norm_vectors(float* v, int64_t count, int64_t dim, const float* w, float eps, cudaStream_t s);
// v[i] = clamp(v[i], -c, c) for i < count.
void clip(float* v, int64_t count, float c, cudaStream_t s);
// Gated attention: q[t][h][d] = qg[t][h][d] for d < hd (qg's rows are per head [query hd, gate hd]).
void split_gated_q(const float* qg, float* q, int64_t n, int64_t heads, int64_t hd, cudaStream_t s);

// The KV cache of one sequence is [attention layers][kv heads][capacity][head_dim] for K and V alike; per row of the
// step the device arrays give its position and the base of its sequence's K and V caches; `layer_off` selects the
// layer within them.
struct KvRows {
  const int32_t* pos = nullptr;
  float* const* k = nullptr;
  float* const* v = nullptr;
  int64_t layer_off = 0;
  int64_t capacity = 0;
};

// Per head of q [n][heads][hd] and k [n][kv_heads][hd], in place: the per-head QK-norm (RMSNorm with q_norm / k_norm
// [hd], when given), the clip to [-clip, clip] (clip > 0; v too), the rotary embedding (NeoX pairs (i, i +
// rotary_dim / 2), cos and sin of float(pos) * inv_freq[i] times `scaling`); then k and v [n][kv_heads][hd] written
// to each row's cache slot.
struct QkPrep {
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  float eps = 1e-6f;
  float clip = 0.0f;
};
void rope_store(float* q, float* k, const float* v, int64_t n, int64_t heads, int64_t kv_heads, int64_t hd,
                int64_t rotary_dim, const float* inv_freq, float scaling, const QkPrep& prep, const KvRows& kv,
                cudaStream_t s);

// Causal attention of each (row, head) over its sequence's cached positions [first, pos] (first = pos - window + 1
// with a sliding window > 0, else 0): softmax(scale q K^T) V, online over tiles of keys; out [n][heads][hd]. With
// `gate` (gated attention: qg as split_gated_q reads it) the output is multiplied by sigmoid(gate). hd <= 256.
// With `partial` (n * heads * splits * (2 + hd) floats) and splits > 1, each (row, head)'s keys are cut into `splits`
// spans scored by separate blocks (decode has too few (row, head) pairs to fill the GPU) and merged by a second kernel.
void attention(const float* q, float* out, int64_t n, int64_t heads, int64_t kv_heads, int64_t hd, const KvRows& kv,
               int64_t window, float scale, const float* gate, cudaStream_t s, float* partial = nullptr,
               int splits = 1);

// rope_store and attention in one kernel, for steps whose rows are of distinct sequences (each row's new key is the
// only one not in the cache yet): the same results, k and v written to the cache the same, q left as it was (each
// block prepares its query head itself). With `counters` (n * heads ints, all 0; left 0) and splits > 1 the last
// split block of each (row, head) merges the partials itself instead of a merge kernel.
void rope_attention(const float* q, const float* k, const float* v, float* out, int64_t n, int64_t heads,
                    int64_t kv_heads, int64_t hd, int64_t rotary_dim, const float* inv_freq, float scaling,
                    const QkPrep& prep, const KvRows& kv, int64_t window, float scale, const float* gate, cudaStream_t s,
                    float* partial = nullptr, int splits = 1, int* counters = nullptr);

// out[i] = silu(g[i]) * u[i] for i < count (out may alias g).
void swiglu(const float* g, const float* u, float* out, int64_t count, cudaStream_t s);
// x[t][i] *= sigmoid(gate[t]) for t < n, i < H (the shared expert's gate).
void scale_rows_sigmoid(float* x, const float* gate, int64_t n, int64_t H, cudaStream_t s);
// dst[i] = src[rows[i]] for i < m, rows of H floats.
void gather_rows(const float* src, const int32_t* rows, float* dst, int64_t m, int64_t H, cudaStream_t s);

// GGUF block formats the device dequantizes (ggml type ids): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K.
bool can_dequantize(uint32_t ggml_type);
// The cuBLAS products of large steps split each fp32 activation v into two bf16 parts, hi = bf16(v) and
// lo = bf16(v - hi) (hi + lo carries about 16 bits of v): where a function below takes `lo`, it writes that part too.
// y[i] (bf16, round to nearest even) = x[i] for i < count.
void convert_bf16(const float* x, uint16_t* y, int64_t count, cudaStream_t s, uint16_t* lo = nullptr);
// out[t][i] (bf16) = silu(y[t][i]) * y[t][I + i] for t < n, i < I (y: rows of 2 I, gate then up).
void swiglu_halves_bf16(const float* y, int64_t n, int64_t I, uint16_t* out, cudaStream_t s, uint16_t* lo = nullptr);
// y[t * ldy + r] += bias[r] for t < n, r < rows.
void add_bias(float* y, const float* bias, int64_t n, int64_t rows, int64_t ldy, cudaStream_t s);
// dst[i] (bf16) = src[rows[i]] (fp32 rows of H) for i < m; zeros where rows[i] < 0 (padding).
void gather_rows_bf16(const float* src, const int32_t* rows, uint16_t* dst, int64_t m, int64_t H, cudaStream_t s,
                      uint16_t* lo = nullptr);
// out[t] = sum_j weight[p] y[p] over p = row_pairs[t * k + j], j < k (rows of H); entries < 0 are skipped. With
// `accumulate` the sum is added to out[t] instead of replacing it.
void combine_pairs(const float* y, const int32_t* row_pairs, const float* weight, int64_t n, int64_t k, int64_t H,
                   float* out, cudaStream_t s, bool accumulate = false);

// Experts resident on the device (--gpu-experts), as the GGUF file stores their blocks: one arena per layer of
// slots, slot i at arena + i * slot_bytes holding its gate, up and down matrices (each [rows][cols] rows of blocks, at
// the offsets below). A unit is up to kExpertUnitRows pairs q0.. of one slot that share one pass over its weights (a
// warp per output row, the blocks dequantized in registers, fp32 activations and sums). The unit and row lists may be
// host memory mapped for the device.
constexpr int kExpertUnitRows = 8;
struct ExpertUnit {
  int32_t slot, q0, rows;
};
struct ExpertMatrix {
  uint32_t type = 0;      // ggml type id: any can_dequantize() takes
  int64_t offset = 0;     // within a slot
  int64_t row_bytes = 0;  // bytes of one row's blocks
};
// The routing of a layer whose experts are all resident, on the device: per row t < n, softmax of logits [t][E], the
// top k (larger probability first, the lower id on ties, as the host's route_top_k), renormalized when asked. Writes
// the pair lists at `lists` ([Q] row -> pair (identity), [Q] weights (float), [Q] pair -> row, [3 Q] units of one
// pair each: slot[expert], q, 1), and the chosen expert ids to chosen[t * k + j] when given.
void route_top_k(const float* logits, int64_t n, int64_t E, int64_t k, bool renorm, const int32_t* slot,
                 int32_t* lists, int64_t Q, int32_t* chosen, cudaStream_t s);
// act[q][r] = silu(gate(slot) row r . x[x_row[q]]) * (up(slot) row r . x[x_row[q]]) for r < I, over each unit's
// pairs q; gate and up are [I][H] (H a multiple of 256 for K-quant formats, of 32 otherwise). max_rows: the most
// rows of any unit (1 for decode: a smaller kernel).
void expert_gate_up(const uint8_t* arena, int64_t slot_bytes, const ExpertMatrix& gate, const ExpertMatrix& up,
                    int64_t I, int64_t H, const ExpertUnit* units, int64_t n_units, int max_rows, const float* x,
                    const int32_t* x_row, float* act, cudaStream_t s);
// For each list entry j < count: matrix m ([rows][cols]) of slot slots[j] into dst + j * stride as bf16 (stride a
// multiple of 8). Resident experts' matrices for the cuBLAS products of large steps.
void dequantize_slots_bf16(const ExpertMatrix& m, int64_t rows, int64_t cols, const uint8_t* arena, int64_t slot_bytes,
                           const int32_t* slots, int64_t count, uint16_t* dst, int64_t stride, cudaStream_t s);
// dst[0, bytes) = src[0, bytes) by a kernel, src being mapped pinned host memory (PinnedArray::device()): a copy that
// does not queue behind the copy engine's transfers (a prefill step's expert blocks, hundreds of MB per layer, would
// hold a small copy of the step's lists for milliseconds).
void copy_mapped(void* dst, const void* src, size_t bytes, cudaStream_t s);
// The CPU's kq_gemv records back to the file's blocks on the device: the GPU's prefill copies a layer's experts
// straight from the CPU's records (pinned in place), then writes them as stored into the slots the products read.
// make_record_map: from a format's bit map (kq_gemv::RecordBits: stored bit i of a unit is record bit source[i],
// inverted where invert[i]) the table restore_records() takes, once per format, uploaded: per stored byte two int32
// (a whole byte or two nibbles moved, else its bits one by one), then per stored bit one int32.
std::vector<int32_t> make_record_map(const int16_t* source, const uint8_t* invert, int stored_bytes);
struct RecordRows {
  const uint8_t* rec = nullptr;  // expert e's row r's unit u at rec + e * expert_bytes + (r * units + u) * record_bytes
  int64_t expert_bytes = 0;
  int record_bytes = 0;
  int64_t rows = 0, units = 0;  // per expert
  const int32_t* map = nullptr;  // make_record_map()'s table, on the device
  int stored_bytes = 0;          // per unit
  int last_bytes = 0;            // stored bytes of a row's last unit (legacy rows ending inside a unit)
  // Row r < split goes to slot e at first + r * row_bytes, the others at second + (r - split) * row_bytes (gate and
  // up rows of one records matrix into two parts of a slot).
  int64_t split = 0, first = 0, second = 0, row_bytes = 0;
};
void restore_records(const RecordRows& r, int64_t experts, uint8_t* arena, int64_t slot_bytes, cudaStream_t s);
// y[q][r] = down(slot) row r . act[q] for r < H, over each unit's pairs q; down is [H][I].
void expert_down(const uint8_t* arena, int64_t slot_bytes, const ExpertMatrix& down, int64_t H, int64_t I,
                 const ExpertUnit* units, int64_t n_units, int max_rows, const float* act, float* y, cudaStream_t s);

}  // namespace genesis::cuda
