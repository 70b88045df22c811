// ggml's own CPU product of a GGUF block matrix with fp32 activations, timed on any shape: the peer for
// `genesis bench gemv --format F --regime hot` (issue: ">= 1.5x ggml's own kernel" on Qwen3-30B-A3B's expert and
// attention shapes, which test-backend-ops' fixed perf cases do not have). It builds against the ggml of a llama.cpp
// tree (llama-cpp-python's source distribution; see tools/ggml_gemv_bench.sh) and calls only ggml's public API:
// a [K, M] weight tensor quantized by ggml_quantize_chunk from normal random values, x [K, N] fp32, ggml_mul_mat,
// ggml_graph_plan / ggml_graph_compute. As in test-backend-ops, x's conversion to the vec_dot type is inside the timed op and
// the weights sit in a plain buffer (no repacked layout). Hot: the same tensors every repetition.
//
//   ggml_gemv_bench TYPE M K [N [THREADS [MIN_MS]]]     TYPE: q4_K q5_K q6_K q8_0 q4_0 q4_1
// Prints one JSON object: {"type", "m", "k", "n", "threads", "reps", "us_median", "us_min"}.
#include <ggml-cpu.h>
#include <ggml.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

static int cmp_double(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float normal(void) {  // Box-Muller over xorshift64*
  double u[2];
  for (int i = 0; i < 2; ++i) {
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    u[i] = ((double)((rng_state * 2685821657736338717ull) >> 11) + 0.5) / 9007199254740992.0;
  }
  return (float)(sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]));
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s TYPE M K [N [THREADS [MIN_MS]]]   (TYPE: q4_K q5_K q6_K q8_0 q4_0 q4_1)\n", argv[0]);
    return 2;
  }
  const struct {
    const char* name;
    enum ggml_type type;
  } types[] = {{"q4_K", GGML_TYPE_Q4_K}, {"q5_K", GGML_TYPE_Q5_K}, {"q6_K", GGML_TYPE_Q6_K},
               {"q8_0", GGML_TYPE_Q8_0}, {"q4_0", GGML_TYPE_Q4_0}, {"q4_1", GGML_TYPE_Q4_1}};
  enum ggml_type type = GGML_TYPE_COUNT;
  for (size_t i = 0; i < sizeof types / sizeof types[0]; ++i)
    if (strcasecmp(argv[1], types[i].name) == 0) type = types[i].type;
  const long m = atol(argv[2]), k = atol(argv[3]), n = argc > 4 ? atol(argv[4]) : 1;
  const int threads = argc > 5 ? atoi(argv[5]) : 1;
  const double min_ms = argc > 6 ? atof(argv[6]) : 300.0;
  if (type == GGML_TYPE_COUNT || m < 1 || k < 1 || n < 1 || n > 4096 || threads < 1 || min_ms <= 0) {
    fprintf(stderr, "bad arguments (type '%s', M %ld, K %ld, N %ld, threads %d)\n", argv[1], m, k, n, threads);
    return 2;
  }
  if (k % ggml_blck_size(type) != 0) {
    fprintf(stderr, "K = %ld is not a multiple of %s's block of %lld\n", k, argv[1], (long long)ggml_blck_size(type));
    return 2;
  }
  const size_t wbytes = ggml_row_size(type, k) * (size_t)m;
  struct ggml_init_params ip = {wbytes + (size_t)(m + k) * (size_t)n * 4 + ggml_graph_overhead() + (1u << 20), NULL,
                                false};
  struct ggml_context* ctx = ggml_init(ip);
  if (!ctx) {
    fprintf(stderr, "ggml_init failed\n");
    return 1;
  }
  struct ggml_tensor* w = ggml_new_tensor_2d(ctx, type, k, m);
  struct ggml_tensor* x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, n);
  float* src = malloc(sizeof(float) * (size_t)k * (size_t)m);
  for (long i = 0; i < k * m; ++i) src[i] = normal();
  ggml_quantize_chunk(type, src, w->data, 0, m, k, NULL);
  free(src);
  for (long i = 0; i < k * n; ++i) ((float*)x->data)[i] = normal();
  struct ggml_tensor* y = ggml_mul_mat(ctx, w, x);
  struct ggml_cgraph* g = ggml_new_graph(ctx);
  ggml_build_forward_expand(g, y);
  // One plan and work buffer (x converted to the vec_dot type) for every repetition (ggml_graph_compute_with_ctx
  // would take a new buffer from the context each call).
  struct ggml_cplan plan = ggml_graph_plan(g, threads, NULL);
  void* work = plan.work_size ? malloc(plan.work_size) : NULL;
  plan.work_data = work;
  for (int i = 0; i < 3; ++i) ggml_graph_compute(g, &plan);  // warm: the caches
  enum { kMaxReps = 100000 };
  static double t[kMaxReps];
  int reps = 0;
  const double start = now_us();
  while (reps < kMaxReps && (reps < 10 || now_us() - start < min_ms * 1e3)) {
    const double t0 = now_us();
    ggml_graph_compute(g, &plan);
    t[reps++] = now_us() - t0;
  }
  qsort(t, (size_t)reps, sizeof t[0], cmp_double);
  printf("{\"type\": \"%s\", \"m\": %ld, \"k\": %ld, \"n\": %ld, \"threads\": %d, \"reps\": %d, \"us_median\": %.3f, "
         "\"us_min\": %.3f}\n",
         ggml_type_name(type), m, k, n, threads, reps, t[reps / 2], t[0]);
  free(work);
  ggml_free(ctx);
  return 0;
}
