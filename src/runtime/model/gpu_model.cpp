// The hybrid mode's device side (gpu.h): the upload of the non-expert weights, a Session's device scratch and KV
// caches, and Session::gpu_step, which runs a step's layers on the GPU and hands each MoE layer's routed experts to
// the CPU (routed_experts(), moe.cpp). Built only with the CUDA component (gpu_none.cpp otherwise).
//
// A step, per layer: x += the previous layer's deltas and the input norm (one kernel); attention on the GPU (or, for
// a Gated DeltaNet layer, x and its norm copied to the host, the CPU's layer, x copied back); x += attention and the
// post norm; then a dense MLP on the GPU, or for a MoE layer the router product on the GPU, its logits and the
// normalized rows copied to the host (the copies and an event queued before the shared expert's kernels, so that
// those run while the CPU computes the routed experts), top-k and the routed experts on the CPU, their sum copied
// back. The GPU-side deltas are added by the next layer's norm kernel.
#include <emmintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "cuda/blas.h"
#include "cuda/deltanet.h"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "kernels/kq_gemv/kq_gemv.h"
#include "quant/ggml.h"
#include "quant/half.h"
#include "runtime/io/gguf.h"
#include "runtime/model/expert_usage.h"
#include "runtime/model/forward.h"
#include "runtime/model/ops.h"

namespace genesis::runtime {

namespace {

// A weight matrix on the device: fp32 when the CPU holds it in fp32 (exact), else bf16 (the CPU's bf16 exactly; a
// block format's dequantized values rounded to bf16, 2^-9 relative, as `--dense bf16` holds them).
struct GpuMatrix {
  cuda::DeviceArray<uint16_t> w16;
  cuda::DeviceArray<float> w32, bias;
  cuda::DeviceArray<uint8_t> blocks;  // the file's blocks (DeviceMatrix::type != 0)
  cuda::DeviceMatrix m;
  bool present() const { return m.w != nullptr; }
};

struct GpuLayer {
  bool gpu_mixer = false;  // attention, gated attention or (GpuModel::deltanet_gpu) Gated DeltaNet: the GPU runs it
  bool deltanet = false;   // a Gated DeltaNet layer on the GPU (its states: GpuState::dn_conv_state, dn_rec_state)
  int64_t lin_slot = -1;   // its index among the DeltaNet layers
  cuda::DeviceArray<float> input_norm, post_norm, q_norm, k_norm;
  GpuMatrix q, k, v, o;                            // attention
  GpuMatrix in_qkvz, in_qkv, in_z, in_ba, out_proj;  // Gated DeltaNet
  cuda::DeviceArray<float> conv_w, a_neg, dt_bias, gated_norm;
  GpuMatrix gate, up, down;                        // dense MLP
  GpuMatrix router, sh_gate_proj, sh_up, sh_down, sh_gate;  // MoE: router, shared expert
};

void upload_vector(const std::vector<float>& v, cuda::DeviceArray<float>& d, size_t& bytes) {
  if (v.empty()) return;
  d.upload(v.data(), v.size());
  bytes += v.size() * 4;
}

// GENESIS_CUDA_DENSE_BLOCKS=1: dense matrices the CPU holds as GGUF blocks go to the device as the file stores them
// (kernels::Linear::stored_row: 4.5-8.5 bits per weight instead of bf16's 16, the file's exact values in the decode
// products; cuBLAS steps dequantize row chunks to bf16). Less VRAM (Qwen3-Next: 5.85 instead of 8.41 GiB held), but
// the decode's block products (a warp per row, dequant8 in registers) measured slower than the bf16 ones on the H200
// host (Qwen3-Next hybrid decode 51.9 against 64.8 tokens/s in one call), so bf16 stays the default.
bool dense_blocks() {
  static const bool on = [] {
    const char* e = std::getenv("GENESIS_CUDA_DENSE_BLOCKS");
    return e && std::string(e) == "1";
  }();
  return on;
}
bool as_blocks(const Dense& d) {
  return dense_blocks() && d.op->stored_type() != 0 && cuda::can_dequantize(d.op->stored_type());
}

void upload_matrix(const Dense& d, GpuMatrix& g, size_t& bytes) {
  if (d.empty()) return;
  const int64_t R = d.rows, C = d.cols;
  if (!d.bias.empty()) {
    g.bias.upload(d.bias.data(), d.bias.size());
    bytes += d.bias.size() * 4;
  }
  const float* bias = d.bias.empty() ? nullptr : g.bias.data();
  if (as_blocks(d)) {
    const int64_t rb = int64_t(d.op->stored_row_bytes());
    constexpr int64_t kChunkRows = 4096;
    std::vector<uint8_t> buf(size_t(std::min<int64_t>(R, kChunkRows) * rb));
    g.blocks.resize(size_t(R * rb));
    for (int64_t r0 = 0; r0 < R; r0 += kChunkRows) {
      const int64_t rows = std::min(kChunkRows, R - r0);
      for (int64_t r = 0; r < rows; ++r) d.op->stored_row(r0 + r, &buf[size_t(r * rb)]);
      g.blocks.upload_at(size_t(r0 * rb), buf.data(), size_t(rows * rb));
    }
    bytes += size_t(R * rb);
    g.m = {g.blocks.data(), false, R, C, bias, d.op->stored_type(), rb};
    return;
  }
  const bool f32 = d.op->format() == "f32";
  constexpr int64_t kChunkRows = 2048;
  std::vector<float> buf(size_t(std::min<int64_t>(R, kChunkRows) * C));
  std::vector<uint16_t> half;
  if (f32) g.w32.resize(size_t(R * C));
  else g.w16.resize(size_t(R * C)), half.resize(buf.size());
  for (int64_t r0 = 0; r0 < R; r0 += kChunkRows) {
    const int64_t rows = std::min(kChunkRows, R - r0);
    for (int64_t r = 0; r < rows; ++r) d.row_f32(r0 + r, &buf[size_t(r * C)]);
    if (f32) {
      g.w32.upload_at(size_t(r0 * C), buf.data(), size_t(rows * C));
    } else {
      for (int64_t i = 0; i < rows * C; ++i) half[size_t(i)] = quant::f32_to_bf16(buf[size_t(i)]);
      g.w16.upload_at(size_t(r0 * C), half.data(), size_t(rows * C));
    }
  }
  bytes += size_t(R * C) * (f32 ? 4 : 2);
  g.m = {f32 ? static_cast<const void*>(g.w32.data()) : static_cast<const void*>(g.w16.data()), !f32, R, C, bias};
}

size_t matrix_bytes(const Dense& d) {
  if (d.empty()) return 0;
  if (as_blocks(d)) return size_t(d.rows) * d.op->stored_row_bytes() + d.bias.size() * 4;
  return size_t(d.rows * d.cols) * (d.op->format() == "f32" ? 4 : 2) + d.bias.size() * 4;
}

}  // namespace

// A MoE layer's experts as the GGUF file stores them ([experts][rows][cols] blocks), for the prefill on the GPU.
struct RawExperts {
  uint32_t type = 0;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
  int64_t rows = 0, cols = 0;
};
struct LayerRawExperts {
  RawExperts gate, up, down;
};

// A MoE layer's experts held on the device (--gpu-experts): the placed experts' blocks, slot after slot, and which
// expert is in which slot.
struct ResidentExperts {
  cuda::DeviceArray<uint8_t> arena;
  int64_t slot_bytes = 0, count = 0;
  cuda::ExpertMatrix gate, up, down;
  std::vector<int32_t> slot;            // [experts]: slot, or -1 (on the CPU)
  cuda::DeviceArray<int32_t> slot_dev;  // the same on the device (a layer whose experts are all resident)
};

class GpuModel {
 public:
  cuda::DeviceInfo dev;
  // Prefill experts on the GPU (0: off, the CPU runs them), why not when off, each MoE layer's raw blocks, the largest
  // of their parts and of their per-expert slots (gate, up, down of one expert).
  int64_t prefill_rows = 0;
  std::string prefill_note;
  std::vector<LayerRawExperts> raw;  // [layers]
  size_t raw_max_bytes = 0, raw_max_slot = 0;
  // The direct prefill (when every MoE layer's experts are in a complete ExpertArena of the formats the file stores):
  // each layer's records copied straight from the CPU's arena, pinned in place, then restored to the file's blocks
  // on the device with the format's record map; else (direct false) the file's blocks staged by the copy thread.
  bool direct = false;
  std::vector<std::shared_ptr<const ExpertArena>> arenas;  // [layers]
  std::vector<cuda::HostRegistration> pinned;             // after arenas: unpinned before they are unmapped
  struct RecordFormat {
    cuda::DeviceArray<int32_t> map;
    int stored_bytes = 0, record_bytes = 0;
  };
  std::map<uint32_t, RecordFormat> record_formats;  // by GGML type
  size_t arena_max_bytes = 0;
  // Experts resident on the device: per layer (empty: none anywhere), how many, their bytes, how they were chosen.
  std::vector<ResidentExperts> resident;
  int64_t resident_count = 0, resident_total = 0;
  size_t resident_bytes = 0;
  std::string resident_note;
  std::shared_ptr<const GgufFile> gguf;
  std::vector<GpuLayer> layers;
  cuda::DeviceArray<float> final_norm;
  GpuMatrix output;
  std::vector<int64_t> attn_slot;  // [layers]: index among the attention layers (their KV cache)
  int64_t attn_layers = 0, cpu_mixers = 0;
  // Gated DeltaNet layers on the GPU (GENESIS_CUDA_DELTANET=0 keeps them on the CPU, for comparisons): their shape,
  // how many, and why not when they stay on the CPU.
  bool deltanet_gpu = false;
  cuda::DeltaShape dshape;
  int64_t lin_layers = 0;
  std::string deltanet_note;
  int64_t defer = 0;  // LoadOptions::gpu_defer
  std::string dense_note;  // how the dense matrices are held: bf16, or the file's blocks (GENESIS_CUDA_DENSE_BLOCKS)
  bool moe = false;
  size_t bytes = 0;
};

// A resident expert a cuBLAS step multiplies as bf16 GEMMs: its slot, its id, and its pairs q0 .. q0 + rows (q0 its
// padded place among the step's pairs).
struct GemmExpert {
  int32_t slot, expert, rows, q0 = 0;
};

class GpuState {
 public:
  GpuState(const GpuModel& m, const ModelConfig& c, int64_t capacity, int64_t max_rows);
  ~GpuState();
  // Runs `work` (the closures that queue one segment's kernels and copies) and clears it: for steps of at most
  // kGraphRows rows as a CUDA graph per (rows, segment), recorded the first time, else launch by launch.
  void run_segment(int64_t n, std::vector<std::function<void()>>& work);
  static constexpr int64_t kGraphRows = 16;
  static constexpr int64_t kAttnSplitRows = 16;  // steps of at most this many rows split attention's keys
  // Steps of at most this many rows route a layer whose experts are all resident on the device (no hand-off to the
  // host; a unit per pair, so each row reads its experts' weights: more rows group them on the host instead).
  static constexpr int64_t kDeviceRouteRows = 4;
  int attn_splits = 16;  // GENESIS_CUDA_ATTN_SPLITS (1: off, for comparisons)
  // Steps of at least gemm_rows rows (prefill chunks) run their products through cuBLAS on bf16 tensor cores with fp32
  // sums, each fp32 activation split into two bf16 parts (hi + lo, about 16 bits: kernels.h), W x = W x_hi + W x_lo:
  // the dense matrices (bf16 as the kernels read them); fp32 matrices in fp32; the resident (or streamed) experts that
  // more than a unit's rows chose, or every chosen one in a step of >= 4 pairs per expert, their blocks dequantized to
  // bf16 (2^-9, as the dense matrices are held) in groups of up to kDeqGroup experts (launch_resident). Fewer rows
  // (decode, CUDA graphs) keep the kernels of kernels.h, which read each weight once per 8 rows.
  // GENESIS_CUDA_GEMM_ROWS=N moves the threshold (0: never; at least kGraphRows + 1).
  int64_t gemm_rows = kGraphRows + 1;
  cuda::Blas* blas = nullptr;  // null: no cuBLAS (or off), the kernels take every step
  static constexpr int64_t kDeqGroup = 16;
  // GENESIS_CUDA_DEVICE_ROUTE=0 turns device routing off (for comparisons; GpuResident.* and
  // CudaKernels.RouteTopKMatchesTheHost check it against the host's routing).
  bool device_route = true;
  bool use_graphs = true;  // GENESIS_CUDA_GRAPHS=0 turns them off (for comparisons)
  // GENESIS_CUDA_TIMES=1: the GPU time of each part of a step (CUDA events around it, graphs off), added to the
  // Session's Profile::gpu_parts after the step. A profile of the device side where no Nsight is at hand.
  bool times = false;
  std::vector<cudaEvent_t> tev;  // timing events, reused step after step
  size_t tev_used = 0;
  struct Timed {
    const char* what;
    size_t a, b;
  };
  std::vector<Timed> timed;
  // GENESIS_CUDA_TIMES=graph: graphs stay on. While a segment is recorded, a stamp kernel before and after each part
  // writes the device's clock into slots of its own (cuda::stamp), so that every replay times the same parts; the
  // parts run outside graphs take the events above. Each part's time then includes one stamp kernel and the gaps
  // between launches in a graph; "(stamp pair, empty)" measures that cost once per segment, and "(segments, whole)"
  // the GPU's time from each segment's first launch to its last.
  bool stamps = false;
  bool capturing = false;
  cuda::DeviceArray<int64_t> stamp_dev;
  size_t stamp_used = 0;
  std::vector<Timed> captured;                         // the parts stamped while the current segment is recorded
  std::vector<std::vector<std::vector<Timed>>> graph_parts;  // [rows][segment]: its graph's stamped parts
  std::vector<Timed> stamped;                          // the parts the step's graph launches stamped
  bool stamp_pair(size_t& a, size_t& b) {
    if (stamp_used + 2 > stamp_dev.size()) return false;  // out of slots: that part goes untimed
    a = stamp_used++, b = stamp_used++;
    return true;
  }
  template <class F>
  void time(const char* what, F&& f) {
    size_t sa = 0, sb = 0;
    if (stamps && capturing && stamp_pair(sa, sb)) {
      cuda::stamp(stamp_dev.data(), int64_t(sa), stream.get());
      f();
      cuda::stamp(stamp_dev.data(), int64_t(sb), stream.get());
      captured.push_back({what, sa, sb});
      return;
    }
    if (!times && !stamps) return void(f());
    const size_t a = event(), b = event();
    cuda::check(cudaEventRecord(tev[a], stream.get()), "cudaEventRecord");
    f();
    cuda::check(cudaEventRecord(tev[b], stream.get()), "cudaEventRecord");
    timed.push_back({what, a, b});
  }
  size_t event() {
    if (tev_used == tev.size()) {
      cudaEvent_t e = nullptr;
      cuda::check(cudaEventCreate(&e), "cudaEventCreate");
      tev.push_back(e);
    }
    return tev_used++;
  }
  // After the step's last sync: the timed parts' milliseconds into `parts` (seconds), events free for the next step.
  void collect_times(std::map<std::string, double>& parts) {
    if (!stamped.empty()) {
      std::vector<int64_t> t(stamp_used);
      cuda::copy_to_host(t.data(), stamp_dev.data(), stamp_used * sizeof(int64_t), stream);
      stream.sync("reading the step's stamps");
      for (const Timed& p : stamped) parts[p.what] += double(t[p.b] - t[p.a]) * 1e-9;
      stamped.clear();
    }
    for (const Timed& t : timed) {
      float ms = 0;
      cuda::check(cudaEventElapsedTime(&ms, tev[t.a], tev[t.b]), "cudaEventElapsedTime");
      parts[t.what] += double(ms) * 1e-3;
    }
    timed.clear();
    tev_used = 0;
  }
  // Graphs are kept per row count, so only steps of one structure may use them: a step whose experts run on the GPU
  // from streamed blocks (--gpu-prefill-rows) splits its work differently from a decode step of as many rows.
  bool step_graphs = true;
  std::vector<std::vector<cudaGraphExec_t>> graphs;  // [rows][segment]
  size_t segment = 0;
  std::vector<std::function<void()>> work;

  const GpuModel& gm;
  cuda::Stream stream;
  cudaEvent_t ev = nullptr;
  int64_t capacity, max_rows, kv_elems;
  std::vector<cuda::DeviceArray<float>> kcache, vcache;  // [sequence slot]
  cuda::DeviceArray<float> x, xn, q, qg, k, v, att, tmp, h1, h2, moe_out, sh_out, sh_gate, out_x, logits;
  cuda::DeviceArray<float> inv_freq, att_part;
  cuda::DeviceArray<int32_t> att_count;  // one-row steps: the split attention blocks' counters (cuda::rope_attention)
  cuda::DeviceArray<int32_t> pos, out_rows;
  cuda::DeviceArray<float*> kptr, vptr;
  cuda::PinnedArray<float> h_x, h_xn, h_router, h_tmp, h_logits;
  cuda::PinnedArray<int32_t> h_pos, h_out_rows;
  cuda::PinnedArray<float*> h_kptr, h_vptr;
  std::vector<float> rope_on_device;
  std::vector<float> deferred;  // [rows][hidden]: the deferred experts' sum (expert deferral)
  // Prefill experts on the GPU: two layers' blocks in the resident experts' slot layout (every expert, slot e = expert
  // e), run as resident experts are (launch_resident). A copy thread (Stager) takes the step's MoE layers in order:
  // the j-th into buffer j % 2 once the (j - 2)-th has been launched, each part copied from the file's pages into a
  // pinned staging buffer by its own thread pool, then sent on copy_stream. So the host copies of the next layers run
  // while this thread routes and launches, and the transfers while the GPU computes.
  ResidentExperts streamed[2];
  cuda::PinnedArray<uint8_t> stage[2][3];
  cuda::Stream copy_stream;
  cudaEvent_t raw_ready[2] = {}, raw_free[2] = {};  // buffer b's blocks arrived / its last reader is done
  cudaEvent_t stage_free[2] = {};                    // the copies out of staging buffer b are done
  // The direct prefill (GpuModel::direct): buffer b's records as copied from the CPU's arena, arrived / restored.
  cuda::DeviceArray<uint8_t> rec[2];
  cudaEvent_t rec_ready[2] = {}, rec_free[2] = {};
  std::vector<int64_t> moe_layers;  // the model's MoE layers in order
  // A step whose expert blocks cross on the copy stream: host-to-device copies of the step's own data run as kernels
  // reading the mapped pinned arrays (to_device), not on the copy engine behind those blocks.
  bool bulk_copies = false;
  bool mapped_copies = true;  // GENESIS_CUDA_MAPPED_COPIES=0: the copy engine for those too (an A/B switch)
  bool rope_fused = true;  // one-row steps: cuda::rope_attention (GENESIS_CUDA_ROPE_FUSED=0: rope_store, attention)
  bool self_merge = true;  // and its split blocks merge themselves (GENESIS_CUDA_SELF_MERGE=0: the merge kernel)
  bool moe_copy_kernel = true;  // decode steps: the CPU experts' sum across by copy_mapped (GENESIS_CUDA_MOE_COPY)
  template <class T>
  void to_device(T* dst, cuda::PinnedArray<T>& arr, const T* from, size_t bytes) {
    if (bulk_copies)
      cuda::copy_mapped(dst, arr.device() + (from - arr.data()), bytes, stream.get());
    else
      cuda::copy_to_device(dst, from, bytes, stream);
  }
  bool prefill_ready = false;
  std::string prefill_off;  // why the prefill's buffers could not be allocated (the CPU runs its experts)
  struct Stager {
    std::unique_ptr<cpu::ThreadPool> pool;  // the host copies' threads (not the step's pool: it routes meanwhile)
    std::thread thread;
    std::mutex mu;
    std::condition_variable cv;
    int64_t staged = 0;           // layers [0, staged) are on the copy stream (their raw_ready recorded)
    int64_t launched = 0;         // layers [0, launched) have their experts launched (their raw_free recorded)
    bool stop = false;
    std::exception_ptr error;
  } stager;
  cuda::PinnedArray<float> h_def;  // the last deferred sum when no MoE output is left to carry it
  cuda::DeviceArray<float> def_dev;
  // Resident experts' pairs of one MoE layer (q: their place among the layer's GPU pairs, QC places in all: P = the
  // step's rows x ranks, and in a cuBLAS step the padding of launch_resident's groups), packed in one pinned buffer
  // that one copy sends to `lists`: each (row, rank)'s q or -1 [P], each q's weight [QC] and row of the step [QC] (-1:
  // padding), the units [3 U] (int32 triples: cuda::ExpertUnit), the GEMM experts' slots [J]; sized for the most
  // rows. Then SwiGLU of gate and up (units), and down's output (units and GEMMs) per q.
  cuda::PinnedArray<int32_t> h_lists;
  cuda::DeviceArray<int32_t> lists;
  cuda::DeviceArray<float> r_act, r_out;
  // cuBLAS steps: the rows' hi and lo parts (xb); resident experts' GEMMs: their pairs' rows (hi, lo), gate and up
  // products [Q][2 I], SwiGLU (hi, lo), a group of experts' dequantized matrices [kDeqGroup][gate I H, up I H,
  // down H I].
  cuda::DeviceArray<uint16_t> xb, r_xb, r_actb, r_deq;
  cuda::DeviceArray<float> r_gu;
  // cuBLAS steps over dense matrices held as the file's blocks: a chunk of their rows dequantized to bf16 (at most
  // kDeqElems weights: 32 MB), and a slot list {0} for dequantize_slots_bf16.
  static constexpr int64_t kDeqElems = int64_t(16) << 20;
  cuda::DeviceArray<uint16_t> wdeq;
  cuda::DeviceArray<int32_t> zero_slot;
  std::vector<GemmExpert> gemm_experts;
  std::vector<int64_t> gemm_groups;  // launch_resident's groups of gemm_experts (their first index, then the end)
  // Gated DeltaNet layers on the GPU: per sequence slot its conv and recurrent states (every DeltaNet layer's); the
  // step's segments (cuda::DeltaSegments: sent with the step's first copies, so that graphs replay them) and the
  // layer's scratch: the projection's rows (in_proj_qkvz's, or in_proj_qkv's), z (split projections), b and a, the
  // conv's output, the gated output.
  std::vector<cuda::DeviceArray<float>> dn_conv_state, dn_rec_state;  // [sequence slot]
  cuda::PinnedArray<int32_t> h_dseg;
  cuda::DeviceArray<int32_t> dseg;
  cuda::PinnedArray<float*> h_dconv, h_drec;
  cuda::DeviceArray<float*> dconv, drec;
  cuda::DeviceArray<float> dn_proj, dn_z, dn_ba, dn_conv, dn_core;
  // Device routing: the router's logits and, per layer, the chosen expert ids (mapped: the host counts them).
  cuda::DeviceArray<float> router_dev;
  cuda::PinnedArray<int32_t> h_chosen;  // [layers][kDeviceRouteRows][top_k]
};

void GpuStateDeleter::operator()(GpuState* s) const { delete s; }

bool cuda_built() { return true; }
int gpu_device_count(std::string* why) { return cuda::device_count(why); }

std::string gpu_summary() {
  std::string why;
  const int n = cuda::device_count(&why);
  if (n == 0) return fmt::format("CUDA component built; no usable device ({})", why);
  std::string s = fmt::format("CUDA component built; {} device{}:", n, n == 1 ? "" : "s");
  int cur = 0;
  cudaGetDevice(&cur);
  for (int i = 0; i < n; ++i) s += fmt::format(" [{}] {}", i, cuda::use_device(i).summary());
  cudaSetDevice(cur);
  return s;
}

size_t gpu_bytes_held() { return cuda::device_bytes_held(); }
size_t gpu_weight_bytes(const GpuModel& g) { return g.bytes; }
bool gpu_holds_deltanet(const GpuModel& g) { return g.deltanet_gpu; }

std::string gpu_description(const GpuModel& g) {
  std::string where = "attention + KV cache, dense matrices (" + g.dense_note + "), router, norms, output";
  const std::string defer = g.defer > 0 ? fmt::format(" ({} of each token's experts deferred a layer)", g.defer) : "";
  if (g.deltanet_gpu) where += fmt::format(", {} Gated DeltaNet layers with their states", g.lin_layers);
  if (g.cpu_mixers > 0)
    where += fmt::format(" on the GPU; {} Gated DeltaNet layers on the CPU{}", g.cpu_mixers,
                         g.deltanet_note.empty() ? "" : " (" + g.deltanet_note + ")");
  else
    where += " on the GPU";
  std::string experts = g.moe ? "routed experts on the CPU" : "no experts: only the embedding lookup on the CPU";
  if (g.resident_count > 0)
    experts = fmt::format("{} of {} routed experts on the GPU ({:.2f} GiB as the file stores them, {}), the rest on "
                          "the CPU",
                          g.resident_count, g.resident_total, double(g.resident_bytes) / double(1ull << 30),
                          g.resident_note);
  return fmt::format("{}: {} ({:.2f} GiB of weights); {}{}{}", g.dev.summary(), where,
                     double(g.bytes) / double(1ull << 30), experts, defer,
                     g.prefill_note.empty() ? "" : "; prefill experts " + g.prefill_note);
}

namespace {

// Each MoE layer's expert tensors in the GGUF file ([layers], dense layers empty); empty with `why` set when one is
// missing, misshapen or in a format the GPU does not dequantize.
std::vector<LayerRawExperts> find_raw_experts(const ModelConfig& c, const GgufFile& gguf, std::string* why) {
  std::vector<LayerRawExperts> raw(size_t(c.num_layers));
  const int64_t H = c.hidden_size, I = c.moe_intermediate_size, E = c.num_experts;
  for (int64_t li = 0; li < c.num_layers; ++li) {
    if (!c.layer_is_moe(li)) continue;
    LayerRawExperts& r = raw[size_t(li)];
    const std::pair<const char*, RawExperts*> parts[] = {{"ffn_gate_exps", &r.gate}, {"ffn_up_exps", &r.up},
                                                          {"ffn_down_exps", &r.down}};
    for (auto [name, dst] : parts) {
      const std::string tn = fmt::format("blk.{}.{}.weight", li, name);
      const GgufTensor* t = gguf.find(tn);
      const bool down = dst == &r.down;
      if (!t || t->ne.size() != 3 || t->ne[2] != E || t->ne[0] != (down ? I : H) || t->ne[1] != (down ? H : I)) {
        *why = fmt::format("{} is not a [{}, {}, {}] tensor in the file", tn, E, down ? H : I, down ? I : H);
        return {};
      }
      if (!cuda::can_dequantize(t->type)) {
        *why = fmt::format("{} is GGML type {}, which the GPU does not dequantize", tn,
                           quant::ggml_type_name(t->type));
        return {};
      }
      *dst = {t->type, t->data, size_t(t->nbytes), t->ne[1], t->ne[0]};
    }
  }
  return raw;
}

// The direct prefill (GpuModel::direct): every MoE layer's experts in a complete arena of the file's formats, each
// arena pinned in place, the formats' record maps on the device. False with `why` otherwise, nothing kept (the copy
// thread stages the file's blocks instead).
bool try_direct(GpuModel& g, const ModelConfig& c, const Weights& w, std::string* why) {
  namespace kg = kernels::kq_gemv;
  if (const char* e = std::getenv("GENESIS_CUDA_DIRECT_PREFILL"); e && std::string(e) == "0") {
    *why = "GENESIS_CUDA_DIRECT_PREFILL=0";
    return false;
  }
  std::vector<std::shared_ptr<const ExpertArena>> arenas(size_t(c.num_layers));
  size_t total = 0;
  for (int64_t li = 0; li < c.num_layers; ++li) {
    if (!c.layer_is_moe(li)) continue;
    const std::shared_ptr<ExpertArena>& a = w.layers[size_t(li)].expert_arena;
    const LayerRawExperts& r = g.raw[size_t(li)];
    if (!a || !a->complete()) {
      *why = fmt::format("layer {}'s experts are not all in the CPU's kq_gemv layout (--experts stored)", li);
      return false;
    }
    if (a->gate_up.type != r.gate.type || a->gate_up.type != r.up.type || a->down.type != r.down.type) {
      *why = fmt::format("layer {}'s expert formats differ between the CPU's records and the file", li);
      return false;
    }
    arenas[size_t(li)] = a;
    total += a->bytes;
    g.arena_max_bytes = std::max(g.arena_max_bytes, a->bytes);
    for (const ExpertArena::Part* p : {&a->gate_up, &a->down}) {
      if (g.record_formats.count(p->type)) continue;
      const kg::RecordBits rb = kg::record_bits(*kg::format_of(p->type));
      GpuModel::RecordFormat& rf = g.record_formats[p->type];
      const std::vector<int32_t> map = cuda::make_record_map(rb.source.data(), rb.invert.data(), rb.stored_bytes);
      rf.map.upload(map.data(), map.size());
      rf.stored_bytes = rb.stored_bytes;
      rf.record_bytes = rb.record_bytes;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  try {
    for (const auto& a : arenas)
      if (a) g.pinned.emplace_back(a->data, a->bytes);
  } catch (const Error& e) {
    *why = fmt::format("the CPU's expert records ({:.2f} GiB) could not be pinned: {}", double(total) / double(1ull << 30),
                       e.what());
    return false;
  }
  g.arenas = std::move(arenas);
  *why = fmt::format("{:.2f} GiB pinned in {:.1f} s", double(total) / double(1ull << 30),
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return true;
}

bool setup_direct(GpuModel& g, const ModelConfig& c, const Weights& w, std::string* why) {
  bool ok = false;
  try {
    ok = try_direct(g, c, w, why);
  } catch (const Error& e) {  // a record map's upload, a format the maps do not take: the staged path serves
    *why = e.what();
  }
  if (!ok) {
    g.pinned.clear();
    g.arenas.clear();
    g.record_formats.clear();
    g.arena_max_bytes = 0;
  }
  return ok;
}

// Finds each MoE layer's expert tensors in the GGUF file; on anything missing the prefill's experts stay on the CPU
// and prefill_note says why.
void setup_prefill_experts(GpuModel& g, const ModelConfig& c, const Weights& w, const LoadOptions& opt,
                           std::shared_ptr<const GgufFile> gguf) {
  if (!c.is_moe() || opt.gpu_prefill_rows <= 0) {
    g.prefill_note = c.is_moe() ? "on the CPU (--gpu-prefill-rows 0)" : "";
    return;
  }
  if (!gguf) {
    g.prefill_note = "on the CPU (the GPU prefill of experts reads a GGUF file's blocks; this is a safetensors model)";
    return;
  }
  std::string why;
  if (!cuda::Blas::get(&why)) {
    g.prefill_note = "on the CPU (" + why + ")";
    return;
  }
  g.raw = find_raw_experts(c, *gguf, &why);
  if (g.raw.empty()) {
    g.prefill_note = "on the CPU (" + why + ")";
    return;
  }
  for (const LayerRawExperts& r : g.raw) {
    for (const RawExperts* x : {&r.gate, &r.up, &r.down}) g.raw_max_bytes = std::max(g.raw_max_bytes, x->bytes);
    g.raw_max_slot = std::max(g.raw_max_slot, (r.gate.bytes + r.up.bytes + r.down.bytes) / size_t(c.num_experts));
  }
  g.gguf = std::move(gguf);
  g.prefill_rows = opt.gpu_prefill_rows;
  std::string direct_why;
  g.direct = setup_direct(g, c, w, &direct_why);
  if (g.direct)
    g.prefill_note = fmt::format("on the GPU for steps of >= {} rows (each layer's records copied straight from the "
                                 "CPU's experts, {}, restored to the file's blocks on the GPU, while the layers before "
                                 "it compute)", g.prefill_rows, direct_why);
  else
    g.prefill_note = fmt::format("on the GPU for steps of >= {} rows (each layer's blocks staged through pinned buffers "
                                 "by a copy thread and copied in while the layers before it compute; not straight from "
                                 "the CPU's records: {})", g.prefill_rows, direct_why);
}

// A slot holds one expert's gate, up and down blocks, one after the other, as the file stores each.
void set_slot_layout(ResidentExperts& re, const LayerRawExperts& r, int64_t E) {
  const int64_t g_bytes = int64_t(r.gate.bytes) / E, u_bytes = int64_t(r.up.bytes) / E;
  re.slot_bytes = g_bytes + u_bytes + int64_t(r.down.bytes) / E;
  re.gate = {r.gate.type, 0, g_bytes / r.gate.rows};
  re.up = {r.up.type, g_bytes, u_bytes / r.up.rows};
  re.down = {r.down.type, g_bytes + u_bytes, int64_t(r.down.bytes) / E / r.down.rows};
}

// --gpu-experts: which experts go to the device (expert_usage.h) and their bytes; the upload is upload_resident().
// Throws genesis::Error when the budget cannot be served (not a GGUF, a format the GPU does not read).
void place_resident(GpuModel& g, const ModelConfig& c, const LoadOptions& opt, const GgufFile* gguf) {
  if (opt.gpu_expert_budget == 0) return;
  if (!c.is_moe()) fail("--gpu-experts: {} has no routed experts", arch_name(c.arch));
  if (!gguf)
    fail("--gpu-experts: the GPU holds experts as a GGUF file stores their blocks; this model is a safetensors "
         "checkpoint (convert it to GGUF, or leave its experts on the CPU)");
  std::string why;
  g.raw = find_raw_experts(c, *gguf, &why);
  if (g.raw.empty()) fail("--gpu-experts: {}", why);
  const int64_t E = c.num_experts;
  std::vector<int64_t> bytes(size_t(c.num_layers), 0);
  for (int64_t li = 0; li < c.num_layers; ++li) {
    const LayerRawExperts& r = g.raw[size_t(li)];
    if (c.layer_is_moe(li)) bytes[size_t(li)] = int64_t((r.gate.bytes + r.up.bytes + r.down.bytes) / size_t(E));
  }
  ExpertUsage usage;
  const bool counted = !opt.expert_usage.empty() && std::filesystem::exists(opt.expert_usage);
  if (counted) usage = read_expert_usage(opt.expert_usage, c);
  const auto slots = place_experts(c, counted ? &usage : nullptr, bytes, opt.gpu_expert_budget);
  g.resident.resize(size_t(c.num_layers));
  uint64_t covered = 0;
  for (int64_t li = 0; li < c.num_layers; ++li) {
    if (!c.layer_is_moe(li)) continue;
    ResidentExperts& re = g.resident[size_t(li)];
    const LayerRawExperts& r = g.raw[size_t(li)];
    re.slot = slots[size_t(li)];
    g.resident_total += E;
    for (int64_t e = 0; e < E; ++e) {
      if (re.slot[size_t(e)] < 0) continue;
      ++re.count;
      if (counted) covered += usage.counts[size_t(li * E + e)];
    }
    set_slot_layout(re, r, E);
    g.resident_count += re.count;
    g.resident_bytes += size_t(re.count * re.slot_bytes);
  }
  if (counted && usage.total() > 0)
    g.resident_note = fmt::format("the most used by {}'s counts: {:.1f}% of the choices recorded there",
                                  opt.expert_usage, 100.0 * double(covered) / double(usage.total()));
  else if (!opt.expert_usage.empty())
    g.resident_note = fmt::format("spread evenly over the layers: {} has no counts yet", opt.expert_usage);
  else
    g.resident_note = "spread evenly over the layers (no --expert-usage counts)";
}

// Copies the placed experts' blocks from the file to their slots.
void upload_resident(GpuModel& g, const ModelConfig& c) {
  const int64_t E = c.num_experts;
  for (int64_t li = 0; li < int64_t(g.resident.size()); ++li) {
    ResidentExperts& re = g.resident[size_t(li)];
    if (re.count == 0) continue;
    const LayerRawExperts& r = g.raw[size_t(li)];
    re.arena.resize(size_t(re.count * re.slot_bytes));
    if (re.count == E) re.slot_dev.upload(re.slot.data(), re.slot.size());
    for (int64_t e = 0; e < E; ++e) {
      const int32_t sl = re.slot[size_t(e)];
      if (sl < 0) continue;
      size_t at = size_t(sl) * size_t(re.slot_bytes);
      for (const RawExperts* x : {&r.gate, &r.up, &r.down}) {
        const size_t each = x->bytes / size_t(E);
        re.arena.upload_at(at, x->data + size_t(e) * each, each);
        at += each;
      }
    }
  }
}

}  // namespace

std::shared_ptr<const GpuModel> make_gpu_model(const ModelConfig& c, const Weights& w, const LoadOptions& opt,
                                               std::shared_ptr<const GgufFile> gguf) {
  auto g = std::make_shared<GpuModel>();
  g->dev = cuda::use_device(opt.gpu_device);
  if (c.head_dim > 256) fail("--gpu: head_dim {} exceeds the GPU attention kernel's 256", c.head_dim);
  if (opt.gpu_defer != 0) {
    if (!c.is_moe()) fail("--gpu-defer: expert deferral needs a MoE model; {} has no experts", arch_name(c.arch));
    if (opt.gpu_defer < 0 || opt.gpu_defer >= c.top_k)
      fail("--gpu-defer {}: defer between 0 and top_k - 1 = {} experts per token", opt.gpu_defer, c.top_k - 1);
  }
  g->defer = opt.gpu_defer;
  g->moe = c.is_moe();
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0)
    fail("--gpu: {} heads are not a multiple of {} KV heads", c.num_heads, c.num_kv_heads);
  // Gated DeltaNet layers go to the GPU where its shared memory holds a head's state.
  for (const LayerKind& k : c.layers) g->lin_layers += k.mixer == MixerKind::gated_deltanet;
  if (g->lin_layers > 0) {
    g->dshape = {c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim,
                 c.linear_conv_kernel, false};
    const char* env = std::getenv("GENESIS_CUDA_DELTANET");
    if (env && std::string(env) == "0") g->deltanet_note = "GENESIS_CUDA_DELTANET=0";
    else g->deltanet_note = cuda::deltanet_unsupported(g->dshape, g->dev.index);
    g->deltanet_gpu = g->deltanet_note.empty();
  }
  // What must fit: every matrix the GPU runs, before anything is allocated.
  size_t need = 0;
  for (int64_t li = 0; li < c.num_layers; ++li) {
    const Layer& l = w.layers[size_t(li)];
    if (c.layers[size_t(li)].mixer != MixerKind::gated_deltanet)
      for (const Dense* d : {&l.q, &l.k, &l.v, &l.o}) need += matrix_bytes(*d);
    else if (g->deltanet_gpu)
      for (const Dense* d : {&l.in_qkvz, &l.in_qkv, &l.in_z, &l.in_ba, &l.out_proj}) need += matrix_bytes(*d);
    for (const Dense* d : {&l.gate, &l.up, &l.down, &l.router, &l.shared_gate_proj, &l.shared_up, &l.shared_down,
                           &l.shared_gate})
      need += matrix_bytes(*d);
  }
  need += matrix_bytes(w.output());
  place_resident(*g, c, opt, gguf.get());
  constexpr size_t kHeadroom = size_t(512) << 20;  // the context, caches of one short sequence, scratch
  if (need + g->resident_bytes + kHeadroom > g->dev.free_bytes)
    fail("--gpu: the weights that go to the GPU need {:.2f} GiB{} (+0.5 GiB for caches and scratch), device {} has "
         "{:.2f} GiB free of {:.2f} GiB",
         double(need + g->resident_bytes) / double(1ull << 30),
         g->resident_bytes ? fmt::format(", {:.2f} GiB of them --gpu-experts'", double(g->resident_bytes) / double(1ull << 30))
                           : std::string(),
         g->dev.index, double(g->dev.free_bytes) / double(1ull << 30), double(g->dev.total_bytes) / double(1ull << 30));
  if (opt.show_progress)
    fmt::print(stderr, "uploading {:.2f} GiB of non-expert weights{} to {}\n", double(need) / double(1ull << 30),
               g->resident_bytes ? fmt::format(" and {} routed experts ({:.2f} GiB)", g->resident_count,
                                               double(g->resident_bytes) / double(1ull << 30))
                                 : std::string(),
               g->dev.name);
  g->layers.resize(size_t(c.num_layers));
  g->attn_slot.assign(size_t(c.num_layers), -1);
  int64_t lin = 0;  // DeltaNet layers on the GPU so far
  for (int64_t li = 0; li < c.num_layers; ++li) {
    const Layer& l = w.layers[size_t(li)];
    GpuLayer& gl = g->layers[size_t(li)];
    upload_vector(l.input_norm, gl.input_norm, g->bytes);
    upload_vector(l.post_norm, gl.post_norm, g->bytes);
    gl.deltanet = g->deltanet_gpu && c.layers[size_t(li)].mixer == MixerKind::gated_deltanet;
    gl.gpu_mixer = c.layers[size_t(li)].mixer != MixerKind::gated_deltanet || gl.deltanet;
    if (gl.deltanet) {
      for (auto [d, dst] : {std::pair{&l.in_qkvz, &gl.in_qkvz}, {&l.in_qkv, &gl.in_qkv}, {&l.in_z, &gl.in_z},
                            {&l.in_ba, &gl.in_ba}, {&l.out_proj, &gl.out_proj}})
        upload_matrix(*d, *dst, g->bytes);
      upload_vector(l.conv_w, gl.conv_w, g->bytes);
      upload_vector(l.a_neg, gl.a_neg, g->bytes);
      upload_vector(l.dt_bias, gl.dt_bias, g->bytes);
      upload_vector(l.gated_norm, gl.gated_norm, g->bytes);
      gl.lin_slot = lin++;
    } else if (gl.gpu_mixer) {
      g->attn_slot[size_t(li)] = g->attn_layers++;
      upload_matrix(l.q, gl.q, g->bytes);
      upload_matrix(l.k, gl.k, g->bytes);
      upload_matrix(l.v, gl.v, g->bytes);
      upload_matrix(l.o, gl.o, g->bytes);
      upload_vector(l.q_norm, gl.q_norm, g->bytes);
      upload_vector(l.k_norm, gl.k_norm, g->bytes);
    } else {
      ++g->cpu_mixers;
    }
    if (c.layers[size_t(li)].mlp == MlpKind::dense) {
      upload_matrix(l.gate, gl.gate, g->bytes);
      upload_matrix(l.up, gl.up, g->bytes);
      upload_matrix(l.down, gl.down, g->bytes);
    } else {
      upload_matrix(l.router, gl.router, g->bytes);
      if (c.layers[size_t(li)].mlp == MlpKind::moe_shared) {
        upload_matrix(l.shared_gate_proj, gl.sh_gate_proj, g->bytes);
        upload_matrix(l.shared_up, gl.sh_up, g->bytes);
        upload_matrix(l.shared_down, gl.sh_down, g->bytes);
        upload_matrix(l.shared_gate, gl.sh_gate, g->bytes);
      }
    }
  }
  upload_vector(w.final_norm, g->final_norm, g->bytes);
  upload_matrix(w.output(), g->output, g->bytes);
  {
    // What the dense matrices went as, for gpu_description.
    int64_t blocks = 0, other = 0;
    auto count = [&](const GpuMatrix& m) {
      if (m.present()) ++(m.m.type != 0 ? blocks : other);
    };
    for (const GpuLayer& gl : g->layers)
      for (const GpuMatrix* m : {&gl.q, &gl.k, &gl.v, &gl.o, &gl.in_qkvz, &gl.in_qkv, &gl.in_z, &gl.in_ba,
                                 &gl.out_proj, &gl.gate, &gl.up, &gl.down, &gl.sh_gate_proj, &gl.sh_up, &gl.sh_down})
        count(*m);
    count(g->output);
    g->dense_note = blocks == 0 ? "bf16" : other == 0 ? "as the file stores them"
                                                      : fmt::format("{} as the file stores them, {} bf16", blocks, other);
  }
  upload_resident(*g, c);
  g->bytes += g->resident_bytes;
  g->raw.clear();  // found again below when the prefill streams them
  setup_prefill_experts(*g, c, w, opt, std::move(gguf));
  return g;
}

static void ensure_prefill_buffers(GpuState& g, const ModelConfig& c);

GpuState::GpuState(const GpuModel& m, const ModelConfig& c, int64_t cap, int64_t rows)
    : gm(m), capacity(cap), max_rows(rows) {
  cuda::check(cudaSetDevice(m.dev.index), "cudaSetDevice");
  cuda::check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
  for (int b = 0; b < 2; ++b) {
    cuda::check(cudaEventCreateWithFlags(&raw_ready[b], cudaEventDisableTiming), "cudaEventCreate");
    cuda::check(cudaEventCreateWithFlags(&raw_free[b], cudaEventDisableTiming), "cudaEventCreate");
    cuda::check(cudaEventCreateWithFlags(&stage_free[b], cudaEventDisableTiming), "cudaEventCreate");
    cuda::check(cudaEventCreateWithFlags(&rec_ready[b], cudaEventDisableTiming), "cudaEventCreate");
    cuda::check(cudaEventCreateWithFlags(&rec_free[b], cudaEventDisableTiming), "cudaEventCreate");
  }
  for (int64_t li = 0; li < c.num_layers; ++li)
    if (c.layer_is_moe(li)) moe_layers.push_back(li);
  const char* env = std::getenv("GENESIS_CUDA_GRAPHS");
  use_graphs = !(env && std::string(env) == "0");
  if (const char* t = std::getenv("GENESIS_CUDA_TIMES")) {
    times = std::string(t) == "1";
    stamps = std::string(t) == "graph";
  }
  if (stamps) stamp_dev.resize(size_t(1) << 16);
  if (const char* sp = std::getenv("GENESIS_CUDA_ATTN_SPLITS")) attn_splits = std::clamp(std::atoi(sp), 1, 64);
  if (const char* dr = std::getenv("GENESIS_CUDA_DEVICE_ROUTE")) device_route = std::string(dr) != "0";
  if (const char* mc = std::getenv("GENESIS_CUDA_MAPPED_COPIES")) mapped_copies = std::string(mc) != "0";
  if (const char* rf = std::getenv("GENESIS_CUDA_ROPE_FUSED")) rope_fused = std::string(rf) != "0";
  if (const char* sm = std::getenv("GENESIS_CUDA_SELF_MERGE")) self_merge = std::string(sm) != "0";
  if (const char* mc = std::getenv("GENESIS_CUDA_MOE_COPY")) moe_copy_kernel = std::string(mc) != "engine";
  if (const char* gr = std::getenv("GENESIS_CUDA_GEMM_ROWS")) {
    const int64_t v = std::atoll(gr);
    gemm_rows = v <= 0 ? 0 : std::max<int64_t>(v, kGraphRows + 1);
  }
  if (gemm_rows > 0 && rows >= gemm_rows) blas = cuda::Blas::get(nullptr);
  graphs.resize(size_t(kGraphRows + 1));
  graph_parts.resize(size_t(kGraphRows + 1));
  kv_elems = m.attn_layers * c.num_kv_heads * capacity * c.head_dim;
  const size_t R = size_t(rows), H = size_t(c.hidden_size);
  const bool any_dense = c.moe_layers() < c.num_layers;
  const size_t inter = size_t(std::max({any_dense ? c.intermediate_size : 0, c.shared_expert_intermediate_size,
                                        int64_t(1)}));
  bool gated = false;
  for (const LayerKind& k : c.layers) gated |= k.mixer == MixerKind::gated_attention;
  x.resize(R * H), xn.resize(R * H), tmp.resize(R * H), moe_out.resize(R * H), sh_out.resize(R * H);
  out_x.resize(R * H);
  q.resize(R * size_t(c.q_dim())), att.resize(R * size_t(c.q_dim()));
  if (attn_splits > 1) {
    att_part.resize(size_t(std::min<int64_t>(rows, kAttnSplitRows) * c.num_heads * attn_splits * (2 + c.head_dim)));
    const std::vector<int32_t> zeros(size_t(c.num_heads), 0);
    att_count.upload(zeros.data(), zeros.size());
  }
  if (gated) qg.resize(R * 2 * size_t(c.q_dim()));
  k.resize(R * size_t(c.kv_dim())), v.resize(R * size_t(c.kv_dim()));
  h1.resize(R * inter), h2.resize(R * inter);
  if (blas) xb.resize(2 * R * std::max({H, size_t(c.q_dim()), inter}));
  sh_gate.resize(R);
  pos.resize(R), out_rows.resize(R), kptr.resize(R), vptr.resize(R);
  h_x.resize(R * H), h_xn.resize(R * H), h_tmp.resize(R * H);
  h_router.resize(R * size_t(std::max<int64_t>(c.num_experts, 1)));
  h_pos.resize(R), h_out_rows.resize(R), h_kptr.resize(R), h_vptr.resize(R);
  if (m.resident_count > 0 || m.prefill_rows > 0) {
    const size_t Q = R * size_t(c.top_k), I = size_t(c.moe_intermediate_size);
    static_assert(sizeof(cuda::ExpertUnit) == 3 * sizeof(int32_t));
    // Room for the cuBLAS steps' padding: up to 2 Q places (launch_resident falls back to units beyond it). Their
    // scratch is allocated here at its largest: growing it during a step would free device memory, and cudaFree waits
    // for the whole device (the copy stream's transfers included).
    h_lists.resize(8 * Q + size_t(c.num_experts)), lists.resize(8 * Q + size_t(c.num_experts));
    const size_t QC = blas ? 2 * Q : Q;
    r_act.resize(QC * I), r_out.resize(QC * H);
    if (blas) {
      r_xb.resize(2 * QC * H), r_gu.resize(QC * 2 * I), r_actb.resize(2 * QC * I);
      r_deq.resize(size_t(kDeqGroup) * 3 * I * H);
    }
  }
  // The prefill's expert buffers now, not at its first step (a step that allocates waits for the device), and only
  // when a step of this state can bring prefill_rows rows. Short of memory, the CPU keeps the prefill's experts.
  if (m.prefill_rows > 0 && rows >= m.prefill_rows) {
    try {
      ensure_prefill_buffers(*this, c);
    } catch (const Error& e) {
      for (ResidentExperts& re : streamed) re.arena.reset();
      for (auto& r : rec) r.reset();
      for (auto& part : stage)
        for (auto& buf : part) buf.reset();
      prefill_off = e.what();
      fmt::print(stderr, "genesis: the prefill's experts stay on the CPU: {}\n", prefill_off);
    }
  }
  if (m.deltanet_gpu) {
    const cuda::DeltaShape& d = m.dshape;
    const size_t KD = size_t(d.nk * d.dk), VD = size_t(d.nv * d.dv);
    dn_proj.resize(R * (2 * KD + 2 * VD)), dn_z.resize(R * VD), dn_ba.resize(R * 2 * size_t(d.nv));
    dn_conv.resize(R * (2 * KD + VD)), dn_core.resize(R * VD);
    h_dseg.resize(1 + 3 * R), dseg.resize(1 + 3 * R);
    h_dconv.resize(R), h_drec.resize(R), dconv.resize(R), drec.resize(R);
  }
  if (m.resident_count > 0) {
    router_dev.resize(size_t(kDeviceRouteRows * c.num_experts));
    h_chosen.resize(size_t(c.num_layers * kDeviceRouteRows * c.top_k));
  }
}

std::unique_ptr<GpuState, GpuStateDeleter> make_gpu_state(const GpuModel& g, const ModelConfig& c, int64_t capacity,
                                                          int64_t max_rows) {
  return std::unique_ptr<GpuState, GpuStateDeleter>(new GpuState(g, c, capacity, max_rows));
}

void gpu_reserve_sequence(GpuState& s, int32_t seq) {
  if (s.gm.deltanet_gpu) {
    if (size_t(seq) >= s.dn_conv_state.size()) s.dn_conv_state.resize(size_t(seq) + 1), s.dn_rec_state.resize(size_t(seq) + 1);
    const cuda::DeltaShape& d = s.gm.dshape;
    // Each on its own (an allocation that failed leaves the other usable); contents need no clearing: a sequence at
    // position 0 starts at zero. About 75 MB per sequence on Qwen3-Next, beside its KV cache.
    const size_t conv = size_t(s.gm.lin_layers * (d.kernel - 1) * (2 * d.nk * d.dk + d.nv * d.dv));
    if (s.dn_conv_state[size_t(seq)].size() != conv) s.dn_conv_state[size_t(seq)].resize(conv);
    if (s.dn_rec_state[size_t(seq)].empty()) s.dn_rec_state[size_t(seq)].resize(size_t(s.gm.lin_layers * d.nv * d.dk * d.dv));
  }
  if (size_t(seq) >= s.kcache.size()) s.kcache.resize(size_t(seq) + 1), s.vcache.resize(size_t(seq) + 1);
  if (s.kv_elems == 0) return;
  if (s.kcache[size_t(seq)].empty()) s.kcache[size_t(seq)].resize(size_t(s.kv_elems));
  if (s.vcache[size_t(seq)].empty()) s.vcache[size_t(seq)].resize(size_t(s.kv_elems));
}

namespace {

// The products of a step's n rows over one x: the kernels, or cuBLAS from GpuState::gemm_rows rows on.
void queue_products(GpuState& g, const cuda::GemvJob* jobs, int count, const float* x, int64_t n, cudaStream_t s) {
  if (!g.blas || n < g.gemm_rows) return cuda::gemv_many(jobs, count, x, n, s);
  int64_t xb_cols = -1;  // the columns xb holds x's rows at
  for (int j = 0; j < count; ++j) {
    const cuda::DeviceMatrix& m = jobs[j].w;
    const int64_t part = n * m.cols;
    if ((m.type != 0 || m.bf16) && xb_cols != m.cols) {  // x as bf16 hi and lo parts, once per column count
      g.xb.resize(size_t(2 * part));
      cuda::convert_bf16(x, g.xb.data(), part, s, g.xb.data() + part);
      xb_cols = m.cols;
    }
    if (m.type != 0) {
      // The file's blocks: rows dequantized to bf16 (as the other matrices are held) a chunk at a time into wdeq.
      if (g.zero_slot.size() == 0) {
        const int32_t zero = 0;
        g.zero_slot.upload(&zero, 1);
      }
      const int64_t chunk = std::max<int64_t>(1, GpuState::kDeqElems / m.cols);
      if (g.wdeq.size() < size_t(std::min(chunk, m.rows) * m.cols)) g.wdeq.resize(size_t(std::min(chunk, m.rows) * m.cols));
      const auto* base = static_cast<const uint8_t*>(m.w);
      for (int64_t r0 = 0; r0 < m.rows; r0 += chunk) {
        const int64_t rows = std::min(chunk, m.rows - r0);
        cuda::dequantize_slots_bf16({m.type, 0, m.row_bytes}, rows, m.cols, base + r0 * m.row_bytes, 0,
                                    g.zero_slot.data(), 1, g.wdeq.data(), 0, s);
        g.blas->gemm_bf16(g.wdeq.data(), rows, m.cols, g.xb.data(), n, jobs[j].y + r0, jobs[j].ldy, s);
        g.blas->gemm_bf16(g.wdeq.data(), rows, m.cols, g.xb.data() + part, n, jobs[j].y + r0, jobs[j].ldy, s, true);
      }
    } else if (m.bf16) {
      const auto* w = static_cast<const uint16_t*>(m.w);
      g.blas->gemm_bf16(w, m.rows, m.cols, g.xb.data(), n, jobs[j].y, jobs[j].ldy, s);
      g.blas->gemm_bf16(w, m.rows, m.cols, g.xb.data() + part, n, jobs[j].y, jobs[j].ldy, s, true);
    } else {
      g.blas->gemm_f32(static_cast<const float*>(m.w), m.rows, m.cols, x, n, jobs[j].y, jobs[j].ldy, s);
    }
    if (m.bias) cuda::add_bias(jobs[j].y, m.bias, n, m.rows, jobs[j].ldy, s);
  }
}

// The same, timed as `what` (GENESIS_CUDA_TIMES).
void products(GpuState& g, const char* what, const cuda::GemvJob* jobs, int count, const float* x, int64_t n,
              cudaStream_t s) {
  g.time(what, [&] { queue_products(g, jobs, count, x, n, s); });
}

void product(GpuState& g, const char* what, const cuda::DeviceMatrix& W, const float* x, float* y, int64_t n,
             int64_t ldy, cudaStream_t s) {
  const cuda::GemvJob job{W, y, ldy};
  products(g, what, &job, 1, x, n, s);
}

// A Gated DeltaNet layer on the GPU: xn -> the projections -> the conv, the delta rule over each segment's rows and
// state, the gated norm (cuda/deltanet.h) -> out_proj -> g.tmp.
void gpu_deltanet(GpuState& g, const GpuLayer& gl, const ModelConfig& c, int64_t n) {
  const cudaStream_t s = g.stream.get();
  cuda::DeltaShape sh = g.gm.dshape;
  sh.fused = gl.in_qkvz.present();
  const int64_t KD = sh.nk * sh.dk, VD = sh.nv * sh.dv, CD = 2 * KD + VD, QKVZ = 2 * KD + 2 * VD;
  if (sh.fused) {
    const cuda::GemvJob jobs[] = {{gl.in_qkvz.m, g.dn_proj.data(), QKVZ}, {gl.in_ba.m, g.dn_ba.data(), 2 * sh.nv}};
    products(g, "deltanet projections", jobs, 2, g.xn.data(), n, s);
  } else {
    const cuda::GemvJob jobs[] = {{gl.in_qkv.m, g.dn_proj.data(), CD},
                                  {gl.in_z.m, g.dn_z.data(), VD},
                                  {gl.in_ba.m, g.dn_ba.data(), 2 * sh.nv}};
    products(g, "deltanet projections", jobs, 3, g.xn.data(), n, s);
  }
  const cuda::DeltaSegments segs{g.dseg.data(), g.dconv.data(), g.drec.data()};
  g.time("deltanet conv", [&] {
    cuda::deltanet_conv(g.dn_proj.data(), sh.fused ? QKVZ : CD, gl.conv_w.data(), g.dn_conv.data(), segs, n,
                        gl.lin_slot, sh, s);
  });
  g.time("delta rule", [&] {
    cuda::deltanet_rule(g.dn_conv.data(), g.dn_ba.data(), sh.fused ? g.dn_proj.data() : g.dn_z.data(),
                        sh.fused ? QKVZ : VD, gl.a_neg.data(), gl.dt_bias.data(), gl.gated_norm.data(),
                        float(c.rms_norm_eps), g.dn_core.data(), segs, n, gl.lin_slot, sh, s);
  });
  product(g, "deltanet out_proj", gl.out_proj.m, g.dn_core.data(), g.tmp.data(), n, c.hidden_size, s);
}

// A layer's attention on the GPU: xn -> q, k, v -> QK-norm, clip, rope, KV append -> attention -> o -> g.tmp.
void gpu_attention(GpuState& g, const GpuLayer& gl, const ModelConfig& c, float rope_scaling, bool gated, int64_t li,
                   int64_t n) {
  const cudaStream_t s = g.stream.get();
  const int64_t nh = c.num_heads, nkv = c.num_kv_heads, hd = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim();
  const float eps = float(c.rms_norm_eps);
  const cuda::GemvJob qkv[] = {{gl.q.m, gated ? g.qg.data() : g.q.data(), gated ? 2 * qd : qd},
                               {gl.k.m, g.k.data(), kvd},
                               {gl.v.m, g.v.data(), kvd}};
  products(g, "attention q k v", qkv, 3, g.xn.data(), n, s);
  g.time("attention core", [&] {
  if (gated) cuda::split_gated_q(g.qg.data(), g.q.data(), n, nh, hd, s);
  cuda::QkPrep prep;
  prep.eps = eps;
  prep.clip = float(c.clip_qkv);
  if (c.qk_norm == QkNorm::whole) {
    cuda::rms_norm_vectors(g.q.data(), n, qd, gl.q_norm.data(), eps, s);
    cuda::rms_norm_vectors(g.k.data(), n, kvd, gl.k_norm.data(), eps, s);
  } else if (c.qk_norm == QkNorm::per_head) {
    prep.q_norm = gl.q_norm.data();
    prep.k_norm = gl.k_norm.data();
  }
  const cuda::KvRows kv{g.pos.data(), g.kptr.data(), g.vptr.data(), g.gm.attn_slot[size_t(li)] * nkv * g.capacity * hd,
                        g.capacity};
  // Steps of few rows (decode) split each (row, head)'s keys over attn_splits blocks.
  const bool split = n <= GpuState::kAttnSplitRows && g.attn_splits > 1;
  const float scale = float(1.0 / std::sqrt(double(hd)));
  float* part = split ? g.att_part.data() : nullptr;
  const int splits = split ? g.attn_splits : 1;
  if (n == 1 && g.rope_fused) {
    // One row: rope, the KV append and attention as one kernel (a graph keeps its structure per row count, and only
    // with one row is every row of its own sequence).
    cuda::rope_attention(g.q.data(), g.k.data(), g.v.data(), g.att.data(), n, nh, nkv, hd, c.rotary_dim(),
                         g.inv_freq.data(), rope_scaling, prep, kv, c.sliding_window, scale,
                         gated ? g.qg.data() : nullptr, s, part, splits,
                         part && g.self_merge ? g.att_count.data() : nullptr);
  } else {
    cuda::rope_store(g.q.data(), g.k.data(), g.v.data(), n, nh, nkv, hd, c.rotary_dim(), g.inv_freq.data(),
                     rope_scaling, prep, kv, s);
    cuda::attention(g.q.data(), g.att.data(), n, nh, nkv, hd, kv, c.sliding_window, scale,
                    gated ? g.qg.data() : nullptr, s, part, splits);
  }
  });
  product(g, "attention o", gl.o.m, g.att.data(), g.tmp.data(), n, c.hidden_size, s);
}

}  // namespace

// The prefill's buffers (device and pinned host), allocated with a state whose steps can reach the model's
// prefill_rows. prefill_ready only once all are there: when one cannot be allocated, the caller leaves the prefill's
// experts on the CPU and says why (prefill_off).
static void ensure_prefill_buffers(GpuState& g, const ModelConfig& c) {
  if (g.prefill_ready) return;
  for (int b = 0; b < 2; ++b) {
    ResidentExperts& re = g.streamed[b];
    re.arena.resize(size_t(c.num_experts) * g.gm.raw_max_slot);
    re.slot.resize(size_t(c.num_experts));
    for (int64_t e = 0; e < c.num_experts; ++e) re.slot[size_t(e)] = int32_t(e);
    re.count = c.num_experts;
    if (g.gm.direct)
      g.rec[b].resize(g.gm.arena_max_bytes);
    else
      for (int i = 0; i < 3; ++i) g.stage[b][i].resize(g.gm.raw_max_bytes);
  }
  g.prefill_ready = true;
}

// dst[0, bytes) = src[0, bytes) with streaming stores (dst 16-byte aligned): a staging copy writes each line once
// instead of reading it for ownership first, so it costs the memory bus two passes over the bytes, not three (the
// device's transfer out of the staging buffer is the next pass).
static void stream_copy(uint8_t* dst, const uint8_t* src, size_t bytes) {
  size_t i = 0;
  for (; i + 64 <= bytes; i += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
  if (i < bytes) std::memcpy(dst + i, src + i, bytes - i);
  _mm_sfence();
}

// Sends MoE layer li's expert blocks to buffer b in the slot layout: each part copied by `pool` from the file's pages
// into staging buffer b (once the transfers out of it are done), then one 2-D transfer per part (expert e's rows to
// slot e) on the copy stream after buffer b's last reader, so that the next part's host copy overlaps this one's.
static void stage_layer(GpuState& g, const ModelConfig& c, int64_t li, int b, cpu::ThreadPool& pool) {
  const LayerRawExperts& r = g.gm.raw[size_t(li)];
  const cudaStream_t cs = g.copy_stream.get();
  const int64_t E = c.num_experts;
  ResidentExperts& re = g.streamed[b];
  set_slot_layout(re, r, E);
  cuda::check(cudaEventSynchronize(g.stage_free[b]), "the GPU's copy of a layer's experts");
  cuda::check(cudaStreamWaitEvent(cs, g.raw_free[b], 0), "cudaStreamWaitEvent");
  const RawExperts* parts[3] = {&r.gate, &r.up, &r.down};
  const int64_t offset[3] = {re.gate.offset, re.up.offset, re.down.offset};
  constexpr size_t kPiece = size_t(1) << 20;
  for (int i = 0; i < 3; ++i) {
    const uint8_t* src = parts[i]->data;
    uint8_t* dst = g.stage[b][i].data();
    const size_t bytes = parts[i]->bytes, each = bytes / size_t(E);
    pool.parallel_for(int64_t((bytes + kPiece - 1) / kPiece), [&](int64_t p) {
      const size_t o = size_t(p) * kPiece;
      stream_copy(dst + o, src + o, std::min(kPiece, bytes - o));
    });
    cuda::check(cudaMemcpy2DAsync(re.arena.data() + offset[i], size_t(re.slot_bytes), dst, each, each, size_t(E),
                                  cudaMemcpyHostToDevice, cs),
                "cudaMemcpy2DAsync (a layer's expert blocks)");
  }
  cuda::check(cudaEventRecord(g.stage_free[b], cs), "cudaEventRecord");
  cuda::check(cudaEventRecord(g.raw_ready[b], cs), "cudaEventRecord");
}

// The copy thread of a prefill step: stages the model's MoE layers (moe_layers) one after the other (see
// GpuState::streamed). Ends when all are staged or stop is set; an error is kept for the step's thread, which rethrows
// it.
static void stager_main(GpuState* g, const ModelConfig* c) {
  GpuState::Stager& st = g->stager;
  try {
    cuda::check(cudaSetDevice(g->gm.dev.index), "cudaSetDevice");
    for (int64_t j = 0; j < int64_t(g->moe_layers.size()); ++j) {
      {
        std::unique_lock<std::mutex> lock(st.mu);
        st.cv.wait(lock, [&] { return st.stop || st.launched >= j - 1; });  // buffer j % 2's last layer launched
        if (st.stop) return;
      }
      stage_layer(*g, *c, g->moe_layers[size_t(j)], int(j % 2), *st.pool);
      {
        std::lock_guard<std::mutex> lock(st.mu);
        st.staged = j + 1;
      }
      st.cv.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(st.mu);
    st.error = std::current_exception();
    st.cv.notify_all();
  }
}

// Starts the copy thread for a prefill step over the model's MoE layers.
static void start_stager(GpuState& g, const ModelConfig& c, const cpu::ThreadPool* step_pool) {
  GpuState::Stager& st = g.stager;
  if (!st.pool) {
    // As many threads as the step's pool, which only routes meanwhile, or half of them when the model has layers
    // that the CPU runs (Gated DeltaNet): on the H200 host memcpy from the page cache into pinned memory made 10.1
    // GB/s on 1 thread, 37.8 on 8, 40.8 on 16 (the bus, not the cores, bounds it).
    const int all = step_pool ? step_pool->size() : 1;
    const int threads = g.gm.cpu_mixers > 0 ? std::max(1, all / 2) : all;
    st.pool = std::make_unique<cpu::ThreadPool>(threads, false);
  }
  st.staged = st.launched = 0;
  st.stop = false;
  st.error = nullptr;
  st.thread = std::thread(stager_main, &g, &c);
}

// Stops and joins the copy thread (at the end of a step, or when the step throws). Idempotent.
static void stop_stager(GpuState& g) {
  GpuState::Stager& st = g.stager;
  if (!st.thread.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(st.mu);
    st.stop = true;
  }
  st.cv.notify_all();
  st.thread.join();
}

// Waits until the j-th MoE layer of the step is on the copy stream; its buffer is j % 2. Rethrows the copy thread's
// error.
static int wait_staged(GpuState& g, int64_t j) {
  GpuState::Stager& st = g.stager;
  std::unique_lock<std::mutex> lock(st.mu);
  st.cv.wait(lock, [&] { return st.error || st.staged > j; });
  if (st.error) std::rethrow_exception(st.error);
  return int(j % 2);
}

// The j-th MoE layer's experts are launched (buffer j % 2's raw_free recorded): the copy thread may reuse the buffer.
static void mark_launched(GpuState& g, int64_t j) {
  {
    std::lock_guard<std::mutex> lock(g.stager.mu);
    g.stager.launched = j + 1;
  }
  g.stager.cv.notify_all();
}

// Records event e on stream s when it goes out of scope, also when a launch in between throws: a buffer's "free"
// event must follow whatever was queued to read it.
struct RecordOnExit {
  cudaEvent_t e;
  cudaStream_t s;
  ~RecordOnExit() { cudaEventRecord(e, s); }
};

// The direct prefill (GpuModel::direct): the j-th MoE layer's records into buffer j % 2 on the copy stream, once the
// layer that used that buffer before has been restored out of it. Nothing when the step has no j-th MoE layer.
static void enqueue_records(GpuState& g, int64_t j) {
  if (j >= int64_t(g.moe_layers.size())) return;
  const int b = int(j % 2);
  const ExpertArena& a = *g.gm.arenas[size_t(g.moe_layers[size_t(j)])];
  const cudaStream_t cs = g.copy_stream.get();
  cuda::check(cudaStreamWaitEvent(cs, g.rec_free[b], 0), "cudaStreamWaitEvent");
  cuda::check(cudaMemcpyAsync(g.rec[b].data(), a.data, a.bytes, cudaMemcpyHostToDevice, cs),
              "cudaMemcpyAsync (a layer's expert records)");
  cuda::check(cudaEventRecord(g.rec_ready[b], cs), "cudaEventRecord");
}

// The direct prefill: MoE layer li's records in buffer b (once arrived) written as the file's blocks into the slots of
// streamed[b] (stream order: after the products that read the layer before in those slots).
static void restore_layer(GpuState& g, const ModelConfig& c, int64_t li, int b) {
  const cudaStream_t s = g.stream.get();
  ResidentExperts& re = g.streamed[b];
  set_slot_layout(re, g.gm.raw[size_t(li)], c.num_experts);
  const ExpertArena& a = *g.gm.arenas[size_t(li)];
  g.time("experts (waiting for their blocks)",
         [&] { cuda::check(cudaStreamWaitEvent(s, g.rec_ready[b], 0), "cudaStreamWaitEvent"); });
  // Recorded even when a launch throws: the next copy into rec[b] must wait for any restore already queued.
  const RecordOnExit record_free{g.rec_free[b], s};
  g.time("experts (restoring blocks)", [&] {
    auto restore = [&](const ExpertArena::Part& p, int64_t split, const cuda::ExpertMatrix& m0,
                       const cuda::ExpertMatrix& m1) {
      const GpuModel::RecordFormat& f = g.gm.record_formats.at(p.type);
      cuda::RecordRows r;
      r.rec = g.rec[b].data() + p.offset;
      r.expert_bytes = int64_t(p.expert_bytes);
      r.record_bytes = f.record_bytes;
      r.rows = p.rows;
      r.units = int64_t(kernels::kq_gemv::record_bytes_of(p.type, 1, p.cols)) / f.record_bytes;
      r.map = f.map.data();
      r.stored_bytes = f.stored_bytes;
      r.last_bytes = int(m0.row_bytes - (r.units - 1) * f.stored_bytes);
      r.split = split;
      r.first = m0.offset;
      r.second = m1.offset;
      r.row_bytes = m0.row_bytes;
      cuda::restore_records(r, c.num_experts, re.arena.data(), re.slot_bytes, s);
    };
    restore(a.gate_up, c.moe_intermediate_size, re.gate, re.up);
    restore(a.down, a.down.rows, re.down, re.down);
  });
}

void GpuState::run_segment(int64_t n, std::vector<std::function<void()>>& work) {
  const cudaStream_t s = stream.get();
  if (!use_graphs || times || !step_graphs || n > kGraphRows) {
    for (auto& f : work) f();
  } else {
    std::vector<cudaGraphExec_t>& v = graphs[size_t(n)];
    if (segment >= v.size()) {
      // First step with n rows: record the segment's launches and copies once, replay them from then on.
      cuda::check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
      capturing = true;
      captured.clear();
      try {
        size_t a = 0, b = 0;
        if (stamps && stamp_pair(a, b)) {
          cuda::stamp(stamp_dev.data(), int64_t(a), s);
          cuda::stamp(stamp_dev.data(), int64_t(b), s);
          captured.push_back({"(stamp pair, empty)", a, b});
        }
        const bool whole = stamps && stamp_pair(a, b);
        if (whole) cuda::stamp(stamp_dev.data(), int64_t(a), s);
        for (auto& f : work) f();
        if (whole) {
          cuda::stamp(stamp_dev.data(), int64_t(b), s);
          captured.push_back({"(segments, whole)", a, b});
        }
        capturing = false;
      } catch (...) {
        capturing = false;
        cudaGraph_t broken = nullptr;
        cudaStreamEndCapture(s, &broken);
        if (broken) cudaGraphDestroy(broken);
        throw;
      }
      cudaGraph_t graph = nullptr;
      cuda::check(cudaStreamEndCapture(s, &graph), "cudaStreamEndCapture");
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      cuda::check(e, "cudaGraphInstantiate");
      v.push_back(exec);
      graph_parts[size_t(n)].push_back(std::move(captured));
      captured.clear();
    }
    cuda::check(cudaGraphLaunch(v[segment], s), "cudaGraphLaunch");
    if (stamps) {
      const std::vector<Timed>& p = graph_parts[size_t(n)][segment];
      stamped.insert(stamped.end(), p.begin(), p.end());
    }
  }
  ++segment;
  work.clear();
}

GpuState::~GpuState() {
  for (auto& v : graphs)
    for (cudaGraphExec_t e : v) cudaGraphExecDestroy(e);
  for (cudaEvent_t e : tev) cudaEventDestroy(e);
  if (ev) cudaEventDestroy(ev);
  for (int b = 0; b < 2; ++b) {
    if (raw_ready[b]) cudaEventDestroy(raw_ready[b]);
    if (raw_free[b]) cudaEventDestroy(raw_free[b]);
    if (stage_free[b]) cudaEventDestroy(stage_free[b]);
    if (rec_ready[b]) cudaEventDestroy(rec_ready[b]);
    if (rec_free[b]) cudaEventDestroy(rec_free[b]);
  }
}

void Session::gpu_step(std::span<const SequenceRows> batch, int64_t total, int64_t longest) {
  GpuState& g = *gpu_;
  const GpuModel& gm = g.gm;
  const cudaStream_t s = g.stream.get();
  const int64_t H = c_.hidden_size, n = total, E = c_.num_experts;
  const size_t xbytes = size_t(n * H) * 4;
  const float eps = float(c_.rms_norm_eps);
  clock_.start();
  const RopeTable& rope = rope_for(longest);
  if (rope.inv_freq != g.rope_on_device) {
    cuda::check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    g.inv_freq.upload(rope.inv_freq.data(), rope.inv_freq.size());
    g.rope_on_device = rope.inv_freq;
  }
  const float rope_scaling = rope.attention_scaling;
  // The prefill's experts go to the GPU when one sequence brings that many rows (a prompt chunk), not when many
  // sequences' decode rows add up to it (continuous batching).
  int64_t longest_segment = 0;
  for (const SequenceRows& b : batch) longest_segment = std::max(longest_segment, int64_t(b.tokens.size()));
  // A prefill step that runs the experts on the GPU: the first MoE layer's blocks start streaming in now, while the
  // GPU runs the layers before it.
  const bool gpu_experts = g.prefill_ready && longest_segment >= gm.prefill_rows && !gm.raw.empty();
  g.step_graphs = !gpu_experts;
  g.bulk_copies = gpu_experts && g.mapped_copies;
  int64_t moe_j = 0;  // the MoE layers met so far in this step (the order their blocks cross in: buffer moe_j % 2)
  struct StagerGuard {
    GpuState* g = nullptr;
    ~StagerGuard() {
      if (g) stop_stager(*g);
    }
  } stager_guard;
  if (gpu_experts && gm.direct) {
    enqueue_records(g, 0);
    enqueue_records(g, 1);
  } else if (gpu_experts) {
    start_stager(g, c_, pool_);
    stager_guard.g = &g;
  }
  // Embedding rows (on the CPU: one row per token), positions and cache bases per row.
  segs_.clear();
  int64_t row = 0;
  for (const SequenceRows& b : batch) {
    if (b.tokens.empty()) continue;
    SequenceState& sq = seq(b.seq);
    gpu_reserve_sequence(g, b.seq);
    segs_.push_back({b.seq, row, int64_t(b.tokens.size()), sq.pos});
    for (size_t i = 0; i < b.tokens.size(); ++i, ++row) {
      m_.weights().embed.row_f32(b.tokens[i], g.h_x.data() + row * H);
      g.h_pos.data()[row] = int32_t(sq.pos + int64_t(i));
      g.h_kptr.data()[row] = g.kcache[size_t(b.seq)].data();
      g.h_vptr.data()[row] = g.vcache[size_t(b.seq)].data();
    }
  }
  // The DeltaNet layers' segments: first row, rows, fresh (position 0: the states start at zero), state bases.
  const bool dn = gm.deltanet_gpu;
  if (dn) {
    int32_t* d = g.h_dseg.data();
    d[0] = int32_t(segs_.size());
    for (size_t i = 0; i < segs_.size(); ++i) {
      const Segment& sg = segs_[i];
      d[1 + 3 * i] = int32_t(sg.row0), d[2 + 3 * i] = int32_t(sg.n), d[3 + 3 * i] = sg.pos0 == 0;
      g.h_dconv.data()[i] = g.dn_conv_state[size_t(sg.seq)].data();
      g.h_drec.data()[i] = g.dn_rec_state[size_t(sg.seq)].data();
    }
  }
  clock_.lap(Op::elementwise);

  // The GPU work between two points where the CPU needs its results is one segment: queued as closures, run as a
  // CUDA graph (recorded at the first step with this many rows) or launch by launch.
  std::vector<std::function<void()>>& work = g.work;
  work.clear();
  g.segment = 0;
  work.push_back([&g, n, xbytes, dn] {
    g.time("copies", [&] {
      g.to_device(g.x.data(), g.h_x, g.h_x.data(), xbytes);
      g.to_device(g.pos.data(), g.h_pos, g.h_pos.data(), size_t(n) * 4);
      g.to_device(g.kptr.data(), g.h_kptr, g.h_kptr.data(), size_t(n) * sizeof(float*));
      g.to_device(g.vptr.data(), g.h_vptr, g.h_vptr.data(), size_t(n) * sizeof(float*));
      if (dn) {  // sized by the rows (a graph's copies are fixed), not by the segments
        g.to_device(g.dseg.data(), g.h_dseg, g.h_dseg.data(), size_t(1 + 3 * n) * 4);
        g.to_device(g.dconv.data(), g.h_dconv, g.h_dconv.data(), size_t(n) * sizeof(float*));
        g.to_device(g.drec.data(), g.h_drec, g.h_drec.data(), size_t(n) * sizeof(float*));
      }
    });
  });
  const float* pend_a = nullptr;  // deltas the next norm adds to x
  const float* pend_b = nullptr;
  // Expert deferral: the lowest `defer` ranks of a MoE layer's experts run after the next segment is launched (while
  // the GPU works), into g.deferred, and join the next MoE layer's sum.
  const int64_t K = c_.top_k, defer = gm.defer;
  const Layer* deferred_layer = nullptr;  // a layer whose deferred experts are still to run (on xn_, router_logits_)
  bool deferred_ready = false;            // g.deferred holds a sum not yet added
  bool moe_copy_queued = false;           // the last MoE output's copy to the device is in `work`, not yet run
  if (defer > 0 && g.deferred.size() < size_t(n * H)) g.deferred.resize(size_t(n * H));
  // Layers whose experts are all resident route on the device in small steps: no hand-off to the host at all.
  const bool device_route =
      g.device_route && gm.resident_count > 0 && defer == 0 && !gpu_experts && n <= GpuState::kDeviceRouteRows;
  std::vector<int64_t> device_layers;  // the layers routed there (their choices are counted after the step)
  // A MoE layer's pairs routed to experts resident on the device: their lists copied over and their products queued
  // (they run while the CPU computes the rest); pair_elsewhere_ tells cpu_experts() to leave them out. The sum joins
  // the CPU's in the device's moe_out (combine_pairs after its copy, always queued: a graph's fixed part). The pinned
  // lists are rewritten only after the next router's event: their copy is done by then.
  auto launch_resident = [&](const ResidentExperts& re, int64_t KK) {
    const int64_t P = n * KK, I = c_.moe_intermediate_size;
    auto count = [&](int64_t e) { return expert_start_[size_t(e + 1)] - expert_start_[size_t(e)]; };
    // In a cuBLAS step the experts that more than a unit's rows chose run as batched GEMMs: sorted by their pair
    // count, in groups of up to kDeqGroup, each expert of a group padded to the group's largest count (the pairs' q are
    // their padded places). The rest, and every expert of a smaller step, run in units (q after the padded ones). A
    // unit reads its expert's blocks at a warp per row, slowly: when the step brings at least 4 pairs per expert on
    // average (a prefill chunk), every chosen expert takes the GEMMs (on the H200, 512-row steps spent 0.4 ms per
    // token in the units of the experts that 8 or fewer rows chose).
    std::vector<GemmExpert>& ge = g.gemm_experts;
    const bool all_gemm = P >= 4 * E;
    ge.clear();
    int64_t unit_pairs = 0;
    for (int64_t e = 0; e < E; ++e) {
      const int32_t sl = re.slot[size_t(e)], cnt = count(e);
      if (sl < 0 || cnt == 0) continue;
      if (g.blas && n >= g.gemm_rows && (cnt > cuda::kExpertUnitRows || all_gemm)) ge.push_back({sl, int32_t(e), cnt});
      else unit_pairs += cnt;
    }
    std::stable_sort(ge.begin(), ge.end(), [](const GemmExpert& a, const GemmExpert& b) { return a.rows > b.rows; });
    constexpr int64_t G = GpuState::kDeqGroup;
    const int64_t J = int64_t(ge.size());
    // Groups [group[i], group[i + 1]): up to G experts; one with less than half its group's largest count starts a new
    // group, so the padding at most doubles the pairs (the scratch holds 2 Q places; skewed routing padded past it).
    std::vector<int64_t>& group = g.gemm_groups;
    group.clear();
    for (int64_t j = 0; j < J; ++j)
      if (group.empty() || j - group.back() == G || 2 * ge[size_t(j)].rows < ge[size_t(group.back())].rows)
        group.push_back(j);
    group.push_back(J);
    int64_t padded = 0;
    for (size_t i = 0; i + 1 < group.size(); ++i) padded += (group[i + 1] - group[i]) * ge[size_t(group[i])].rows;
    // Lists: row_q [P], q_w [QC], q_row [QC], units [3 U], GEMM slots [J] (QC: the padded pairs and the units').
    int64_t QC = padded + unit_pairs;
    if (P + 2 * QC + 3 * P + J > int64_t(g.h_lists.size()) || QC > int64_t(g.r_out.size()) / H) {
      // padding beyond the buffers: units for all
      for (const GemmExpert& x : ge) unit_pairs += x.rows;
      ge.clear();
      padded = 0;
      QC = unit_pairs;
    }
    const int64_t Jn = int64_t(ge.size());
    int32_t* row_q = g.h_lists.data();
    float* q_w = reinterpret_cast<float*>(row_q + P);
    int32_t* q_row = row_q + P + QC;
    auto* hu = reinterpret_cast<cuda::ExpertUnit*>(row_q + P + 2 * QC);
    pair_elsewhere_.assign(size_t(P), -1);
    auto take = [&](int64_t e, int32_t q0, int32_t places) {
      const int32_t p0 = expert_start_[size_t(e)], p1 = expert_start_[size_t(e + 1)];
      for (int32_t p = p0; p < p1; ++p) {
        pair_elsewhere_[size_t(p)] = q0 + (p - p0);
        q_row[q0 + (p - p0)] = pair_row_[size_t(p)];
        q_w[q0 + (p - p0)] = pair_weight_[size_t(p)];
      }
      for (int32_t q = q0 + (p1 - p0); q < q0 + places; ++q) q_row[q] = -1, q_w[q] = 0.0f;  // padding
    };
    int32_t q = 0;
    if (Jn == 0) group.assign(1, 0);
    for (size_t i = 0; i + 1 < group.size(); ++i) {
      const int64_t j0 = group[i];
      const int32_t rmax = ge[size_t(j0)].rows;
      for (int64_t j = j0; j < group[i + 1]; ++j, q += rmax) {
        take(ge[size_t(j)].expert, q, rmax);
        ge[size_t(j)].q0 = q;
      }
    }
    int64_t U = 0;
    int max_rows = 1;
    for (int64_t e = 0; e < E; ++e) {
      const int32_t sl = re.slot[size_t(e)], cnt = count(e);
      if (sl < 0 || cnt == 0 || pair_elsewhere_[size_t(expert_start_[size_t(e)])] >= 0) continue;
      for (int32_t u0 = 0; u0 < cnt; u0 += cuda::kExpertUnitRows)
        hu[U++] = {sl, q + u0, std::min<int32_t>(cuda::kExpertUnitRows, cnt - u0)};
      max_rows = std::max(max_rows, std::min<int>(cuda::kExpertUnitRows, cnt));
      take(e, q, cnt);
      q += cnt;
    }
    int32_t* slots = row_q + P + 2 * QC + 3 * U;
    for (int64_t j = 0; j < Jn; ++j) slots[j] = ge[size_t(j)].slot;
    for (int64_t i = 0; i < P; ++i) row_q[i] = pair_elsewhere_[size_t(row_pairs_[size_t(i)])];
    prof_.gpu_expert_pairs += unit_pairs;
    for (const GemmExpert& x : ge) prof_.gpu_expert_pairs += x.rows;
    // One copy: the whole buffer when units or GEMM experts were made (they sit at its end), else only row_q.
    g.time("copies", [&] {
      g.to_device(g.lists.data(), g.h_lists, row_q, size_t(U > 0 || Jn > 0 ? P + 2 * QC + 3 * U + Jn : P) * 4);
    });
    // (r_act, r_out and the GEMMs' scratch below were sized with the state for the most places QC can take.)
    const int32_t* d_qrow = g.lists.data() + P + QC;
    const auto* du = reinterpret_cast<const cuda::ExpertUnit*>(g.lists.data() + P + 2 * QC);
    g.time("experts gate+up (units)", [&] {
      cuda::expert_gate_up(re.arena.data(), re.slot_bytes, re.gate, re.up, I, H, du, U, max_rows, g.xn.data(), d_qrow,
                           g.r_act.data(), s);
    });
    g.time("experts down (units)", [&] {
      cuda::expert_down(re.arena.data(), re.slot_bytes, re.down, H, I, du, U, max_rows, g.r_act.data(),
                        g.r_out.data(), s);
    });
    if (Jn > 0) {
      const int64_t IH = I * H;
      uint16_t *x_hi = g.r_xb.data(), *x_lo = x_hi + padded * H, *a_hi = g.r_actb.data(), *a_lo = a_hi + padded * I;
      uint16_t* w = g.r_deq.data();
      g.time("experts (GEMMs)", [&] { cuda::gather_rows_bf16(g.xn.data(), d_qrow, x_hi, padded, H, s, x_lo); });
      const int32_t* dslots = g.lists.data() + P + 2 * QC + 3 * U;
      for (size_t i = 0; i + 1 < group.size(); ++i) {
        const int64_t j0 = group[i], cnt = group[i + 1] - j0, rmax = ge[size_t(j0)].rows, base = ge[size_t(j0)].q0;
        g.time("experts (GEMMs' dequantization)", [&] {
          cuda::dequantize_slots_bf16(re.gate, I, H, re.arena.data(), re.slot_bytes, dslots + j0, cnt, w, 3 * IH, s);
          cuda::dequantize_slots_bf16(re.up, I, H, re.arena.data(), re.slot_bytes, dslots + j0, cnt, w + IH, 3 * IH,
                                      s);
          cuda::dequantize_slots_bf16(re.down, H, I, re.arena.data(), re.slot_bytes, dslots + j0, cnt, w + 2 * IH,
                                      3 * IH, s);
        });
        // W x as W x_hi + W x_lo, a batch of the group's experts each.
        auto split_product = [&](int64_t w_off, int64_t rows, int64_t cols, const uint16_t* xh, const uint16_t* xl,
                                 float* y) {
          g.blas->gemm_bf16_batched(w + w_off, rows, cols, 3 * IH, xh, rmax, rmax * cols, y, rows, rmax * rows, cnt, s);
          g.blas->gemm_bf16_batched(w + w_off, rows, cols, 3 * IH, xl, rmax, rmax * cols, y, rows, rmax * rows, cnt, s,
                                    true);
        };
        // Gate and up as one [2 I][H] matrix per expert, SwiGLU over the group's rows, then down.
        g.time("experts (GEMMs)", [&] {
          split_product(0, 2 * I, H, x_hi + base * H, x_lo + base * H, g.r_gu.data() + base * 2 * I);
          cuda::swiglu_halves_bf16(g.r_gu.data() + base * 2 * I, cnt * rmax, I, a_hi + base * I, s, a_lo + base * I);
          split_product(2 * IH, H, I, a_hi + base * I, a_lo + base * I, g.r_out.data() + base * H);
        });
      }
    }
    clock_.lap(Op::router);
  };
  auto run_deferred = [&] {
    if (!deferred_layer) return;
    routed_experts(*deferred_layer, n, K - defer, K, g.deferred.data());
    deferred_layer = nullptr;
    deferred_ready = true;
  };
  for (int64_t li = 0; li < c_.num_layers; ++li) {
    const Layer& l = m_.weights().layers[size_t(li)];
    const GpuLayer* gl = &gm.layers[size_t(li)];
    const LayerKind kind = c_.layers[size_t(li)];
    work.push_back([&g, gl, pend_a, pend_b, n, H, eps, s] {
      g.time("norms", [&] { cuda::add_rms_norm(g.x.data(), pend_a, pend_b, gl->input_norm.data(), g.xn.data(), n, H, eps, s); });
    });
    pend_a = pend_b = nullptr;
    if (gl->deltanet) {
      work.push_back([&g, gl, this, n] { gpu_deltanet(g, *gl, c_, n); });
      pend_a = g.tmp.data();
    } else if (gl->gpu_mixer) {
      const bool gated = kind.mixer == MixerKind::gated_attention;
      work.push_back([&g, gl, this, rope_scaling, gated, li, n] { gpu_attention(g, *gl, c_, rope_scaling, gated, li, n); });
      pend_a = g.tmp.data();
    } else {
      // The CPU's layer (Gated DeltaNet, its state in the SequenceState): x and its norm over, x back.
      work.push_back([&g, xbytes] {
        cuda::copy_to_host(g.h_x.data(), g.x.data(), xbytes, g.stream);
        cuda::copy_to_host(g.h_xn.data(), g.xn.data(), xbytes, g.stream);
      });
      g.run_segment(n, work);
      moe_copy_queued = false;
      run_deferred();  // before xn_ is overwritten
      g.stream.sync("the GPU part of a layer");
      clock_.lap(Op::gpu);
      std::memcpy(x_.data(), g.h_x.data(), xbytes);
      std::memcpy(xn_.data(), g.h_xn.data(), xbytes);
      deltanet(li, n);
      for (int64_t i = 0; i < n * H; ++i) x_[size_t(i)] += tmp_[size_t(i)];  // deltanet() leaves the residual add
      clock_.lap(Op::elementwise);
      std::memcpy(g.h_x.data(), x_.data(), xbytes);
      work.push_back([&g, xbytes] { g.to_device(g.x.data(), g.h_x, g.h_x.data(), xbytes); });
    }
    const ResidentExperts* re =
        kind.mlp == MlpKind::dense || gm.resident.empty() || gm.resident[size_t(li)].count == 0
            ? nullptr
            : &gm.resident[size_t(li)];
    const bool on_device = device_route && re && re->count == E;
    // A MoE layer's normalized rows also go straight to the host (mapped memory): the CPU's experts read them.
    float* xn_host = kind.mlp == MlpKind::dense || on_device ? nullptr : g.h_xn.device();
    work.push_back([&g, gl, pend_a, xn_host, n, H, eps, s] {
      g.time("norms", [&] {
        cuda::add_rms_norm(g.x.data(), pend_a, nullptr, gl->post_norm.data(), g.xn.data(), n, H, eps, s, xn_host);
      });
    });
    pend_a = nullptr;
    if (kind.mlp == MlpKind::dense) {
      const int64_t I = c_.intermediate_size;
      work.push_back([&g, gl, n, H, I, s] {
        const cuda::GemvJob gate_up[] = {{gl->gate.m, g.h1.data(), I}, {gl->up.m, g.h2.data(), I}};
        products(g, "dense mlp", gate_up, 2, g.xn.data(), n, s);
        g.time("elementwise", [&] { cuda::swiglu(g.h1.data(), g.h2.data(), g.h1.data(), n * I, s); });
        product(g, "dense mlp", gl->down.m, g.h1.data(), g.tmp.data(), n, H, s);
      });
      pend_a = g.tmp.data();
      continue;
    }
    const bool shared = kind.mlp == MlpKind::moe_shared;
    auto shared_expert = [&] {
      const int64_t SI = c_.shared_expert_intermediate_size;
      work.push_back([&g, gl, n, H, SI, s] {
        const cuda::GemvJob gate_up[] = {{gl->sh_gate_proj.m, g.h1.data(), SI}, {gl->sh_up.m, g.h2.data(), SI}};
        products(g, "shared expert", gate_up, 2, g.xn.data(), n, s);
        g.time("elementwise", [&] { cuda::swiglu(g.h1.data(), g.h2.data(), g.h1.data(), n * SI, s); });
        product(g, "shared expert", gl->sh_down.m, g.h1.data(), g.sh_out.data(), n, H, s);
        product(g, "shared expert", gl->sh_gate.m, g.xn.data(), g.sh_gate.data(), n, 1, s);
        g.time("elementwise", [&] { cuda::scale_rows_sigmoid(g.sh_out.data(), g.sh_gate.data(), n, H, s); });
      });
    };
    if (on_device) {
      // Router, top-k, the experts and their sum on the device, in this segment: the host is not involved.
      const int64_t I = c_.moe_intermediate_size, P = n * K;
      int32_t* chosen = g.h_chosen.device() + li * GpuState::kDeviceRouteRows * K;
      work.push_back([&g, gl, re, n, E, K, H, I, P, chosen, norm = c_.norm_topk_prob, s] {
        g.time("router", [&] { cuda::gemv(gl->router.m, g.xn.data(), g.router_dev.data(), n, E, s); });
        g.time("route top-k", [&] {
          cuda::route_top_k(g.router_dev.data(), n, E, K, norm, re->slot_dev.data(), g.lists.data(), P, chosen, s);
        });
        const auto* du = reinterpret_cast<const cuda::ExpertUnit*>(g.lists.data() + 3 * P);
        g.time("experts gate+up (units)", [&] {
          cuda::expert_gate_up(re->arena.data(), re->slot_bytes, re->gate, re->up, I, H, du, P, 1, g.xn.data(),
                               g.lists.data() + 2 * P, g.r_act.data(), s);
        });
        g.time("experts down (units)", [&] {
          cuda::expert_down(re->arena.data(), re->slot_bytes, re->down, H, I, du, P, 1, g.r_act.data(),
                            g.r_out.data(), s);
        });
        g.time("combine", [&] {
          cuda::combine_pairs(g.r_out.data(), g.lists.data(), reinterpret_cast<const float*>(g.lists.data() + P), n,
                              K, H, g.moe_out.data(), s);
        });
      });
      if (shared) shared_expert();
      device_layers.push_back(li);
      moe_copy_queued = false;
      pend_a = g.moe_out.data();
      pend_b = shared ? g.sh_out.data() : nullptr;
      continue;
    }
    // The router's logits are written to the host directly too; the event after them is the CPU's signal.
    work.push_back([&g, gl, n, E, s] { product(g, "router", gl->router.m, g.xn.data(), g.h_router.device(), n, E, s); });
    g.run_segment(n, work);
    moe_copy_queued = false;
    cuda::check(cudaEventRecord(g.ev, s), "cudaEventRecord");
    if (shared) {
      // After the event: the GPU runs the shared expert while the CPU runs the routed experts.
      shared_expert();
      g.run_segment(n, work);
    }
    run_deferred();  // the previous MoE layer's deferred experts, while the GPU runs this layer
    cuda::check(cudaEventSynchronize(g.ev), "the GPU part of a layer (attention, router)");
    clock_.lap(Op::gpu);
    if (router_logits_.size() < size_t(n * E)) router_logits_.resize(size_t(n * E));
    std::memcpy(router_logits_.data(), g.h_router.data(), size_t(n * E) * 4);
    if (gpu_experts) {
      // A prefill step: the layer's experts on the GPU from the blocks copied in (every expert is in the buffer, as
      // if resident), all ranks (no deferral); their sum stays there. The next layers' blocks cross meanwhile (the
      // direct prefill's transfers two layers ahead, or the copy thread's staging).
      route_pairs(li, n, 0, K);
      int b = int(moe_j % 2);
      if (gm.direct) {
        restore_layer(g, c_, li, b);
      } else {
        b = wait_staged(g, moe_j);
        clock_.lap(Op::gpu);  // waiting for the copy thread
        g.time("experts (waiting for their blocks)",
               [&] { cuda::check(cudaStreamWaitEvent(s, g.raw_ready[b], 0), "cudaStreamWaitEvent"); });
      }
      {
        // Recorded even when a launch throws: the copy thread must not overwrite blocks the GPU may still read.
        const RecordOnExit record_free{g.raw_free[b], s};
        launch_resident(g.streamed[b], K);
      }
      if (gm.direct)
        enqueue_records(g, moe_j + 2);
      else
        mark_launched(g, moe_j);
      ++moe_j;
      g.time("combine", [&] {
        cuda::combine_pairs(g.r_out.data(), g.lists.data(), reinterpret_cast<const float*>(g.lists.data() + n * K), n,
                            K, H, g.moe_out.data(), s);
      });
      clock_.lap(Op::gpu);
      moe_copy_queued = false;
      pend_a = g.moe_out.data();
      pend_b = shared ? g.sh_out.data() : nullptr;
      continue;
    }
    std::memcpy(xn_.data(), g.h_xn.data(), xbytes);
    if (re) {
      route_pairs(li, n, 0, K - defer);
      launch_resident(*re, K - defer);
      cpu_experts(l, n, K - defer, tmp_.data());
    } else {
      routed_experts(l, n, 0, K - defer, tmp_.data());
    }
    if (deferred_ready) {
      for (int64_t i = 0; i < n * H; ++i) tmp_[size_t(i)] += g.deferred[size_t(i)];
      deferred_ready = false;
    }
    if (defer > 0) deferred_layer = &l;
    std::memcpy(g.h_tmp.data(), tmp_.data(), xbytes);
    // Decode-sized steps bring the sum across with a kernel reading the mapped pinned buffer (all its loads in flight
    // at once): a copy-engine node cost about 10 us a layer inside the graphs (GENESIS_CUDA_TIMES=graph, stop 27).
    // GENESIS_CUDA_MOE_COPY=engine keeps the copy engine (an A/B switch). Reading the buffer inside the next norm
    // instead was measured slower: 3.7 against 3.4 ms/token of GPU wait.
    const bool mapped = g.moe_copy_kernel && n <= GpuState::kGraphRows;
    work.push_back([&g, xbytes, mapped, s] {
      g.time("copies", [&] {
        if (mapped)
          cuda::copy_mapped(g.moe_out.data(), g.h_tmp.device(), xbytes, s);
        else
          cuda::copy_to_device(g.moe_out.data(), g.h_tmp.data(), xbytes, g.stream);
      });
    });
    if (re)
      work.push_back([&g, n, KK = K - defer, H, s] {
        g.time("combine", [&] {
          cuda::combine_pairs(g.r_out.data(), g.lists.data(), reinterpret_cast<const float*>(g.lists.data() + n * KK),
                              n, KK, H, g.moe_out.data(), s, true);
        });
      });
    moe_copy_queued = true;
    pend_a = g.moe_out.data();
    pend_b = shared ? g.sh_out.data() : nullptr;
  }

  // The last MoE layer's deferred experts join the last layer's output: its own when it is that layer (its copy to
  // the device is still queued), else through the final norm.
  run_deferred();
  if (deferred_ready && moe_copy_queued && c_.layers.back().mlp != MlpKind::dense) {
    for (int64_t i = 0; i < n * H; ++i) g.h_tmp.data()[i] += g.deferred[size_t(i)];
  } else if (deferred_ready) {
    g.h_def.resize(size_t(g.max_rows * H));
    g.def_dev.resize(size_t(g.max_rows * H));
    std::memcpy(g.h_def.data(), g.deferred.data(), xbytes);
    cuda::copy_to_device(g.def_dev.data(), g.h_def.data(), xbytes, g.stream);
    if (pend_b) fail("gpu_step: no slot for the deferred experts' sum");  // pend_b is a MoE layer's (copy queued)
    pend_b = g.def_dev.data();
  }
  // Output rows: the last row of each sequence, or all of its rows (all_logits); launch by launch (the rows vary).
  for (auto& f : work) f();
  work.clear();
  std::vector<std::pair<int64_t, float*>> out;
  row = 0;
  for (const SequenceRows& b : batch) {
    const int64_t nr = int64_t(b.tokens.size());
    if (nr == 0) continue;
    if (b.logits && b.all_logits)
      for (int64_t t = 0; t < nr; ++t) out.emplace_back(row + t, b.logits + t * c_.vocab_size);
    else if (b.logits)
      out.emplace_back(row + nr - 1, b.logits);
    row += nr;
  }
  const int64_t m = int64_t(out.size()), V = c_.vocab_size;
  if (m > 0) {
    cuda::add_rms_norm(g.x.data(), pend_a, pend_b, gm.final_norm.data(), g.xn.data(), n, H, eps, s);
    for (int64_t i = 0; i < m; ++i) g.h_out_rows.data()[i] = int32_t(out[size_t(i)].first);
    cuda::copy_to_device(g.out_rows.data(), g.h_out_rows.data(), size_t(m) * 4, g.stream);
    cuda::gather_rows(g.xn.data(), g.out_rows.data(), g.out_x.data(), m, H, s);
    g.logits.resize(size_t(m * V));
    product(g, "output", gm.output.m, g.out_x.data(), g.logits.data(), m, V, s);
    g.h_logits.resize(size_t(m * V));
    cuda::copy_to_host(g.h_logits.data(), g.logits.data(), size_t(m * V) * 4, g.stream);
  }
  g.stream.sync("the GPU part of a step (output layer)");
  clock_.lap(Op::gpu);
  if (g.times || g.stamps) g.collect_times(prof_.gpu_parts);
  for (int64_t i = 0; i < m; ++i)
    std::memcpy(out[size_t(i)].second, g.h_logits.data() + i * V, size_t(V) * 4);
  // The device-routed layers' choices, for the usage counts and the profile.
  if (!device_layers.empty() && expert_use_.size() != size_t(c_.num_layers * E))
    expert_use_.assign(size_t(c_.num_layers * E), 0);
  for (int64_t li : device_layers) {
    const int32_t* ch = g.h_chosen.data() + li * GpuState::kDeviceRouteRows * K;
    std::vector<int32_t> ids(ch, ch + n * K);
    for (int32_t e : ids)
      if (e >= 0 && e < E) ++expert_use_[size_t(li * E + e)];
    std::sort(ids.begin(), ids.end());
    prof_.experts += int64_t(std::unique(ids.begin(), ids.end()) - ids.begin());
    prof_.expert_pairs += n * K;
    prof_.gpu_expert_pairs += n * K;
  }
  for (const SequenceRows& b : batch) seqs_[size_t(b.seq)].pos += int64_t(b.tokens.size());
  clock_.lap(Op::logits);
  prof_.tokens += total;
  ++prof_.steps;
}

}  // namespace genesis::runtime
