/* Mixed-adapter LoRA on x86 CPUs with AVX2 and FMA: every row of a batch through its own adapter,
 * each adapter's factors read once per call (a CPU take on punica / S-LoRA's segmented products).
 *
 *   out[row] (+)= (x[row] A_s^T) Bs_s      for every row of every sample of slot s,
 *
 * A (S, R, in): the stacked A factors, Bs (S, R, out): the stacked s * B^T (zero rows past an adapter's
 * rank). The samples are given grouped by slot (order: sample indices, slot s owning order[starts[s] ..
 * starts[s + 1]]), rows_per_sample rows each (rows of a sample are consecutive in x and out); samples
 * listed under no slot are left alone. Work units are a slot's rows, up to CHUNK at a time: a unit reads
 * its adapter's factors once (from memory for the first unit of a slot, from cache for the next ones),
 * computes h = x A^T for its rows into a small buffer, then writes or adds h Bs into their output rows.
 * Units own disjoint rows, so the threads share nothing.
 *
 * Decoding reads S adapters' factors for a row or a few each: bound by memory, and the GEMM formulations
 * either compute every adapter for every row (S-fold FLOPs) or copy the factors per sample first.
 *
 * Shapes: float32, contiguous, in % 8 == 0, out % 8 == 0. Returns 0, or 1 where the work buffers could
 * not be allocated (nothing is written then). */

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define CHUNK 48    /* rows per work unit: h is CHUNK x R floats */
#define DOT_ROWS 3  /* rows per block in h = x A^T: 3 rows x 4 ranks = 12 accumulators */
#define DOT_RANKS 4
#define EXP_ROWS 6  /* rows per block in out = h Bs: 6 rows x 16 columns = 12 accumulators */

static inline float horizontal_sum(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
}

/* h[i][j .. j + ranks) = rows[i] . a[j .. j + ranks) over `in` values, for m rows (m <= DOT_ROWS) and
 * `ranks` (<= DOT_RANKS) rows of A: m and ranks are compile-time constants at every call (dot_block). */
static inline __attribute__((always_inline)) void dot_rows(const float* const* rows, const int m, const float* a,
                                                           const int ranks, int64_t in, float* h, int64_t rank_stride) {
  __m256 acc[DOT_ROWS][DOT_RANKS];
  for (int i = 0; i < m; ++i)
    for (int q = 0; q < ranks; ++q) acc[i][q] = _mm256_setzero_ps();
  for (int64_t k = 0; k < in; k += 8) {
    __m256 av[DOT_RANKS];
    for (int q = 0; q < ranks; ++q) av[q] = _mm256_loadu_ps(a + q * in + k);
    for (int i = 0; i < m; ++i) {
      const __m256 v = _mm256_loadu_ps(rows[i] + k);
      for (int q = 0; q < ranks; ++q) acc[i][q] = _mm256_fmadd_ps(v, av[q], acc[i][q]);
    }
  }
  for (int i = 0; i < m; ++i)
    for (int q = 0; q < ranks; ++q) h[i * rank_stride + q] = horizontal_sum(acc[i][q]);
}

/* h (m, R) = rows A^T for m <= DOT_ROWS rows */
static void dot_block(const float* const* rows, int m, const float* a, int64_t rank, int64_t in, float* h) {
  for (int64_t j = 0; j < rank; j += DOT_RANKS) {
    const float* aj = a + j * in;
    float* hj = h + j;
    const int ranks = rank - j < DOT_RANKS ? (int)(rank - j) : DOT_RANKS;
#define DOT_CASE(M, Q)                         \
  case M * 8 + Q:                              \
    dot_rows(rows, M, aj, Q, in, hj, rank);    \
    break;
    switch (m * 8 + ranks) {
      DOT_CASE(1, 1) DOT_CASE(1, 2) DOT_CASE(1, 3) DOT_CASE(1, 4)
      DOT_CASE(2, 1) DOT_CASE(2, 2) DOT_CASE(2, 3) DOT_CASE(2, 4)
      DOT_CASE(3, 1) DOT_CASE(3, 2) DOT_CASE(3, 3) DOT_CASE(3, 4)
    }
#undef DOT_CASE
  }
}

/* outs[i][c .. c + 8 * halves) (+)= sum_j h[i][j] bs[j][c ..], m rows (m <= EXP_ROWS), halves 1 or 2 */
static inline __attribute__((always_inline)) void expand_rows(float* const* outs, const int m, const float* h,
                                                              int64_t rank, const float* bs, int64_t out_features,
                                                              int64_t c, const int halves, int accumulate) {
  __m256 acc[EXP_ROWS][2];
  for (int i = 0; i < m; ++i) {
    acc[i][0] = accumulate ? _mm256_loadu_ps(outs[i] + c) : _mm256_setzero_ps();
    acc[i][1] = accumulate && halves > 1 ? _mm256_loadu_ps(outs[i] + c + 8) : _mm256_setzero_ps();
  }
  for (int64_t j = 0; j < rank; ++j) {
    const __m256 b0 = _mm256_loadu_ps(bs + j * out_features + c);
    const __m256 b1 = halves > 1 ? _mm256_loadu_ps(bs + j * out_features + c + 8) : b0;
    for (int i = 0; i < m; ++i) {
      const __m256 w = _mm256_broadcast_ss(h + i * rank + j);
      acc[i][0] = _mm256_fmadd_ps(w, b0, acc[i][0]);
      if (halves > 1) acc[i][1] = _mm256_fmadd_ps(w, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < m; ++i) {
    _mm256_storeu_ps(outs[i] + c, acc[i][0]);
    if (halves > 1) _mm256_storeu_ps(outs[i] + c + 8, acc[i][1]);
  }
}

/* outs (m rows, m <= EXP_ROWS) (+)= h (m, R) Bs, 16 columns at a time */
static void expand_block(float* const* outs, int m, const float* h, int64_t rank, const float* bs,
                         int64_t out_features, int accumulate) {
  for (int64_t c = 0; c < out_features; c += 16) {
    const int two = out_features - c >= 16;
#define EXP_CASE(M)                                                            \
  case M:                                                                      \
    if (two)                                                                   \
      expand_rows(outs, M, h, rank, bs, out_features, c, 2, accumulate);       \
    else                                                                       \
      expand_rows(outs, M, h, rank, bs, out_features, c, 1, accumulate);       \
    break;
    switch (m) {
      EXP_CASE(1)
      EXP_CASE(2)
      EXP_CASE(3)
      EXP_CASE(4)
      EXP_CASE(5)
      EXP_CASE(6)
    }
#undef EXP_CASE
  }
}

/* The rows of positions first .. first + count of slot s's list (position p: row p % rows_per_sample of
 * sample order[starts[s] + p / rows_per_sample]). */
static void unit_rows(const float* x, float* out, const int64_t* order, int64_t begin, int64_t first,
                      int64_t count, int64_t rows_per_sample, int64_t in, int64_t out_features,
                      const float** x_rows, float** out_rows) {
  for (int64_t p = 0; p < count; ++p) {
    const int64_t position = first + p;
    const int64_t row = order[begin + position / rows_per_sample] * rows_per_sample + position % rows_per_sample;
    x_rows[p] = x + row * in;
    out_rows[p] = out + row * out_features;
  }
}

int mixed_lora(const float* x, float* out, const float* a, const float* bs, const int64_t* order,
               const int64_t* starts, int64_t slots, int64_t rows_per_sample, int64_t in, int64_t out_features,
               int64_t rank, int accumulate, int threads) {
  /* the units: slot s's rows cut into chunks of up to CHUNK; first_unit[s] numbers its first one */
  int64_t* first_unit = malloc(sizeof(int64_t) * (slots + 1));
  if (first_unit == NULL) return 1;
  first_unit[0] = 0;
  for (int64_t s = 0; s < slots; ++s) {
    const int64_t rows = (starts[s + 1] - starts[s]) * rows_per_sample;
    first_unit[s + 1] = first_unit[s] + (rows + CHUNK - 1) / CHUNK;
  }
  const int64_t units = first_unit[slots];
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    float* h = malloc(sizeof(float) * CHUNK * rank);
    const float** x_rows = malloc(sizeof(float*) * CHUNK);
    float** out_rows = malloc(sizeof(float*) * CHUNK);
    if (h == NULL || x_rows == NULL || out_rows == NULL) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp barrier
    int64_t s = 0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t unit = 0; unit < units; ++unit) {
      if (failed) continue;
      while (first_unit[s + 1] <= unit) ++s; /* units come in increasing order to each thread */
      while (first_unit[s] > unit) --s;
      const int64_t rows = (starts[s + 1] - starts[s]) * rows_per_sample;
      const int64_t first = (unit - first_unit[s]) * CHUNK;
      const int64_t count = rows - first < CHUNK ? rows - first : CHUNK;
      const float* as = a + s * rank * in;
      const float* bss = bs + s * rank * out_features;
      unit_rows(x, out, order, starts[s], first, count, rows_per_sample, in, out_features, x_rows, out_rows);
      for (int64_t i = 0; i < count; i += DOT_ROWS)
        dot_block(x_rows + i, count - i < DOT_ROWS ? (int)(count - i) : DOT_ROWS, as, rank, in, h + i * rank);
      for (int64_t i = 0; i < count; i += EXP_ROWS)
        expand_block(out_rows + i, count - i < EXP_ROWS ? (int)(count - i) : EXP_ROWS, h + i * rank, rank, bss,
                     out_features, accumulate);
    }
    free(h);
    free(x_rows);
    free(out_rows);
  }
  free(first_unit);
  return failed;
}
