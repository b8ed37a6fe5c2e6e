/* An adapter's rank-r products on x86 CPUs with AVX2 and FMA, with or without input dropout.
 *
 * A LoRA layer in training computes h = d(x) A^T, dA = dh^T d(x) and dx = dh A * keep (+ dy W), where
 * d(x) = x * keep is its input dropout. Forming d(x) (and drawing its mask) costs a pass over the input
 * per product; at rank 16 that is as much as the product itself. Here the mask is drawn and applied
 * inside the products' own passes over x: each kernel reads a row block of x once, masks it in L1,
 * and multiplies it there.
 *
 * Without a mask (bits == NULL) the same three kernels compute x F^T, S^T x and S F for any rank-r F and
 * S (LoRA's h = x A^T, dh = dy B, dA = dh^T x, dB^T = h^T dy, h (s B^T) and dh A): torch's matmul (MKL)
 * runs such skinny products far below the FMA rate, up to a few times slower than the 6 x 16 register
 * block here when x comes from memory.
 *
 * The mask: element (row, col) of the (n, d) input is dropped when
 *     lowbias32((col * 0x9e3779b1) ^ key) < threshold,   key = the low half of splitmix64(seed ^ mix(row))
 * (threshold = p * 2^32, unsigned; all arithmetic mod 2^32), a counter-based draw: the same (seed, n, d)
 * give the same mask in every kernel, and it is stored as one bit per value (1 = dropped, row-major,
 * d / 8 bytes per row) for the backward kernels. The odd multiplier spreads a row's columns over the
 * 32-bit range before the row's key is mixed in, so two rows share a hash input only by a chance of
 * 2^-32 per pair of values, never as a whole shifted run (as `key + col` would).
 *
 * Shapes: float32, contiguous; d % 8 == 0; the rank padded to rp, a multiple of 16 (zero columns of A^T,
 * zero rows of A and zero columns of dh), so that each kernel works on whole 8-wide vectors.
 * Every function returns 0, or 1 where a work buffer could not be allocated (nothing is written then
 * that the caller uses). OpenMP spreads row blocks (column strips for dA) over `threads`. */

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ROWS 6     /* rows per block in the row products: 12 accumulators of 8 */
#define DEPTH 512  /* columns of x per chunk in the row products */
#define TOKENS 30  /* rows of x per packed block in dA and dB (a multiple of ROWS) */

static inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* lowbias32 (an integer hash with full avalanche), on 8 lanes */
static inline __m256i hash8(__m256i z) {
  z = _mm256_xor_si256(z, _mm256_srli_epi32(z, 16));
  z = _mm256_mullo_epi32(z, _mm256_set1_epi32(0x7feb352d));
  z = _mm256_xor_si256(z, _mm256_srli_epi32(z, 15));
  z = _mm256_mullo_epi32(z, _mm256_set1_epi32((int)0x846ca68bu));
  return _mm256_xor_si256(z, _mm256_srli_epi32(z, 16));
}

/* lane j all ones where bit j of `bits` is set (a dropped value) */
static inline __m256 expand_bits(unsigned bits) {
  const __m256i select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i b = _mm256_and_si256(_mm256_set1_epi32((int)bits), select);
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, select));
}

/* Draws the drops of columns col0 .. col0 + count of row `row` into bits_row (from col0's byte) and
 * writes those values of x's row (x points at col0), dropped ones zeroed and the rest times `scale`, into
 * out. */
static inline void draw_row(const float* x, float* out, uint8_t* bits_row, int64_t count, int64_t row,
                            int64_t col0, uint64_t seed, uint32_t threshold, float scale) {
  const __m256i key = _mm256_set1_epi32((int)(uint32_t)splitmix64(seed ^ splitmix64((uint64_t)row)));
  const __m256i spread = _mm256_set1_epi32((int)0x9e3779b1u);
  const __m256i flip = _mm256_set1_epi32((int)0x80000000u); /* unsigned order as signed */
  const __m256i limit = _mm256_xor_si256(_mm256_set1_epi32((int)threshold), flip);
  const __m256 factor = _mm256_set1_ps(scale);
  __m256i spread_col = _mm256_mullo_epi32(
      _mm256_add_epi32(_mm256_set1_epi32((int)col0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), spread);
  const __m256i step = _mm256_mullo_epi32(_mm256_set1_epi32(8), spread);
  for (int64_t c = 0; c < count; c += 8) {
    const __m256i h = _mm256_xor_si256(hash8(_mm256_xor_si256(spread_col, key)), flip);
    const __m256 drop = _mm256_castsi256_ps(_mm256_cmpgt_epi32(limit, h));
    bits_row[c >> 3] = (uint8_t)_mm256_movemask_ps(drop);
    _mm256_storeu_ps(out + c, _mm256_andnot_ps(drop, _mm256_mul_ps(_mm256_loadu_ps(x + c), factor)));
    spread_col = _mm256_add_epi32(spread_col, step);
  }
}

/* out = x * keep * scale; bits = the drawn mask. */
int dropout_draw(const float* x, float* out, uint8_t* bits, int64_t n, int64_t d, uint64_t seed,
                 uint32_t threshold, float scale, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row)
    draw_row(x + row * d, out + row * d, bits + row * (d / 8), d, row, 0, seed, threshold, scale);
  return 0;
}

/* out = g * keep * scale, for a mask drawn before (the gradient of dropout_draw). */
int dropout_apply(const float* g, float* out, const uint8_t* bits, int64_t n, int64_t d, float scale,
                  int threads) {
  const __m256 factor = _mm256_set1_ps(scale);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row)
    for (int64_t c = 0; c < d; c += 8) {
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(g + row * d + c), factor);
      _mm256_storeu_ps(out + row * d + c, _mm256_andnot_ps(expand_bits(bits[row * (d / 8) + c / 8]), v));
    }
  return 0;
}

/* A thread's work buffer of `floats` (a multiple of 8), 32-byte aligned; NULL and *failed = 1 where the
 * memory cannot be had. */
static float* work_buffer(size_t floats, int* failed) {
  float* buf = aligned_alloc(32, sizeof(float) * floats);
  if (buf == NULL) {
#pragma omp atomic write
    *failed = 1;
  }
  return buf;
}

/* The 6 x 16 micro-kernel both row products use (12 accumulators in registers):
 *   sums[i][c] (+)= sum_k rows[i][k] * cols[k * col_step + c],  i < ROWS, c < 16 (c < 8 when !wide),
 * adding to what sums holds when `accumulate`. The sums go through a fixed-size array: indexing the
 * accumulators by a variable row count would keep them out of registers. */
static inline __attribute__((always_inline)) void block_product(const float* const rows[ROWS], const float* cols,
                                                                int64_t col_step, int64_t depth, int wide,
                                                                int accumulate, float sums[ROWS][16]) {
  __m256 acc[ROWS][2];
  for (int i = 0; i < ROWS; ++i) {
    acc[i][0] = accumulate ? _mm256_loadu_ps(sums[i]) : _mm256_setzero_ps();
    acc[i][1] = accumulate ? _mm256_loadu_ps(sums[i] + 8) : _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < depth; ++k) {
    const __m256 a0 = _mm256_loadu_ps(cols + k * col_step);
    const __m256 a1 = wide ? _mm256_loadu_ps(cols + k * col_step + 8) : _mm256_setzero_ps();
    for (int i = 0; i < ROWS; ++i) {
      const __m256 b = _mm256_broadcast_ss(rows[i] + k);
      acc[i][0] = _mm256_fmadd_ps(b, a0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(b, a1, acc[i][1]);
    }
  }
  for (int i = 0; i < ROWS; ++i) {
    _mm256_storeu_ps(sums[i], acc[i][0]);
    _mm256_storeu_ps(sums[i] + 8, acc[i][1]);
  }
}

/* h's rows r0 .. r0 + m (m <= ROWS) = (x * keep) A^T, drawing their mask into bits; with bits == NULL,
 * x A^T. The rows are multiplied DEPTH columns at a time: the masked copy of a chunk (ROWS x DEPTH
 * floats, in buf) stays in L1 beside the chunk of A^T it meets. sums: rp / 16 blocks of sums. */
static void row_block_product(const float* x, const float* at, float* h, uint8_t* bits, float* buf,
                              float (*sums)[ROWS][16], int64_t r0, int64_t m, int64_t d, int64_t r, int64_t rp,
                              uint64_t seed, uint32_t threshold) {
  for (int64_t k0 = 0; k0 < d; k0 += DEPTH) {
    const int64_t depth = d - k0 < DEPTH ? d - k0 : DEPTH;
    const float* rows[ROWS]; /* rows past the end repeat the last one; their sums are not stored */
    for (int i = 0; i < ROWS; ++i) {
      const int64_t row = r0 + (i < m ? i : m - 1);
      if (bits == NULL) {
        rows[i] = x + row * d + k0;
      } else {
        rows[i] = buf + i * DEPTH;
        if (i < m)
          draw_row(x + row * d + k0, buf + i * DEPTH, bits + row * (d / 8) + k0 / 8, depth, row, k0, seed,
                   threshold, 1.0f);
        else
          memcpy(buf + i * DEPTH, buf + (m - 1) * DEPTH, sizeof(float) * depth);
      }
    }
    for (int64_t j = 0; j < rp; j += 16) block_product(rows, at + k0 * rp + j, rp, depth, 1, k0 > 0, sums[j / 16]);
  }
  for (int64_t j = 0; j < rp; j += 16) {
    const int64_t cols = r - j < 16 ? r - j : 16;
    for (int64_t i = 0; cols > 0 && i < m; ++i) memcpy(h + (r0 + i) * r + j, sums[j / 16][i], sizeof(float) * cols);
  }
}

/* The floats row_block_product's buffer holds: the masked chunk, then the sums of every rank block. */
#define ROW_BUFFER(rp) (ROWS * DEPTH + ROWS * (rp))

/* h (n, r) = (x * keep) A^T, drawing the mask into bits; with bits == NULL, h = x A^T (no mask).
 * at = A^T padded to (d, rp). */
int masked_product(const float* x, const float* at, float* h, uint8_t* bits, int64_t n, int64_t d,
                   int64_t r, int64_t rp, uint64_t seed, uint32_t threshold, int threads) {
  const int64_t blocks = (n + ROWS - 1) / ROWS;
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    float* buf = work_buffer(ROW_BUFFER(rp), &failed);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      if (buf == NULL) continue;
      const int64_t r0 = blk * ROWS, m = n - r0 < ROWS ? n - r0 : ROWS;
      row_block_product(x, at, h, bits, buf, (float(*)[ROWS][16])(buf + ROWS * DEPTH), r0, m, d, r, rp, seed,
                        threshold);
    }
    free(buf);
  }
  return failed;
}

/* acc (q ranks x 16 columns, in ga's rows) += sum over `count` tokens of dh[t][q] * strip[t]: the strip
 * is packed (count, 16); q <= 6 (12 accumulators); only the low 8 columns are stored when !wide. */
static inline __attribute__((always_inline)) void strip_ranks(const float* strip, const float* dh, int64_t rp,
                                                              float* ga, int64_t d, int64_t count, const int q,
                                                              int wide) {
  __m256 acc[6][2];
  for (int j = 0; j < q; ++j) {
    acc[j][0] = _mm256_loadu_ps(ga + j * d);
    acc[j][1] = wide ? _mm256_loadu_ps(ga + j * d + 8) : _mm256_setzero_ps();
  }
  for (int64_t t = 0; t < count; ++t) {
    const __m256 x0 = _mm256_load_ps(strip + t * 16), x1 = _mm256_load_ps(strip + t * 16 + 8);
    for (int j = 0; j < q; ++j) {
      const __m256 b = _mm256_broadcast_ss(dh + t * rp + j);
      acc[j][0] = _mm256_fmadd_ps(b, x0, acc[j][0]);
      acc[j][1] = _mm256_fmadd_ps(b, x1, acc[j][1]);
    }
  }
  for (int j = 0; j < q; ++j) {
    _mm256_storeu_ps(ga + j * d, acc[j][0]);
    if (wide) _mm256_storeu_ps(ga + j * d + 8, acc[j][1]);
  }
}

/* ga[:, strips first .. last] += dh[t0 .. t0 + count]^T (x * keep)[t0 .. t0 + count, those strips]
 * (count <= TOKENS; bits == NULL: no mask). The rows are read along (a stream the prefetcher follows),
 * packed strip by strip into buf (masked), and each strip is reduced there, ranks in blocks of 6, 6
 * and 4. Reading x a strip at a time instead would fetch one cache line per row, rows d floats apart,
 * which for d a multiple of 512 all fall in the same few L1 sets. */
static void column_block_product(const float* x, const uint8_t* bits, const float* dh, float* ga, float* buf,
                                 int64_t t0, int64_t count, int64_t first, int64_t last, int64_t d, int64_t rp) {
  for (int64_t t = 0; t < count; ++t) {
    const float* xr = x + (t0 + t) * d;
    const uint8_t* br = bits == NULL ? NULL : bits + (t0 + t) * (d / 8);
    for (int64_t s = first; s < last; ++s) {
      const int64_t c = s * 16;
      const int wide = d - c >= 16;
      float* out = buf + ((s - first) * TOKENS + t) * 16;
      __m256 lo = _mm256_loadu_ps(xr + c), hi = wide ? _mm256_loadu_ps(xr + c + 8) : _mm256_setzero_ps();
      if (br != NULL) {
        lo = _mm256_andnot_ps(expand_bits(br[c / 8]), lo);
        if (wide) hi = _mm256_andnot_ps(expand_bits(br[c / 8 + 1]), hi);
      }
      _mm256_store_ps(out, lo);
      _mm256_store_ps(out + 8, hi);
    }
  }
  for (int64_t s = first; s < last; ++s) {
    const int64_t c = s * 16;
    const int wide = d - c >= 16;
    const float* strip = buf + (s - first) * TOKENS * 16;
    const float* g = dh + t0 * rp;
    for (int64_t j = 0; j < rp; j += 16) {
      strip_ranks(strip, g + j, rp, ga + j * d + c, d, count, 6, wide);
      strip_ranks(strip, g + j + 6, rp, ga + (j + 6) * d + c, d, count, 6, wide);
      strip_ranks(strip, g + j + 12, rp, ga + (j + 12) * d + c, d, count, 4, wide);
    }
  }
}

static inline void team_position(int* thread, int* team) {
  *thread = 0;
  *team = 1;
#ifdef _OPENMP
  *thread = omp_get_thread_num();
  *team = omp_get_num_threads();
#endif
}

/* Per-thread copies of an (rp, d) sum over tokens: thread 0 sums into `out` itself, each other thread into
 * its own copy in `partials` ((threads - 1) * rp * d floats, NULL for one thread), zeroed first. */
static float* thread_sum(float* out, float* partials, int thread, int64_t rp, int64_t d) {
  float* acc = thread == 0 ? out : partials + (thread - 1) * rp * d;
  memset(acc, 0, sizeof(float) * rp * d);
  return acc;
}

/* out += every other thread's copy (inside the parallel region, after the copies are complete). */
static void add_thread_sums(float* out, const float* partials, int team, int64_t rp, int64_t d) {
#pragma omp barrier
#pragma omp for schedule(static)
  for (int64_t i = 0; i < rp * d; i += 8) { /* rp * d is a multiple of 8 */
    __m256 sum = _mm256_loadu_ps(out + i);
    for (int other = 1; other < team; ++other) sum = _mm256_add_ps(sum, _mm256_loadu_ps(partials + (other - 1) * rp * d + i));
    _mm256_storeu_ps(out + i, sum);
  }
}

static float* partials_for(int threads, int64_t rp, int64_t d) {
  return threads > 1 ? aligned_alloc(32, sizeof(float) * (threads - 1) * rp * d) : NULL;
}

/* ga (rp, d) = dh^T (x * keep), dh (n, rp); with bits == NULL, ga = dh^T x (no mask). Each thread takes a
 * run of TOKENS-row spans, whole rows (one stream through memory per thread, which the prefetchers
 * follow: splitting the columns instead had both threads read part of every row, ~2x slower from
 * memory), into its own copy of ga; the copies are summed at the end. */
int masked_factor_grad(const float* x, const uint8_t* bits, const float* dh, float* ga, int64_t n,
                       int64_t d, int64_t rp, int threads) {
  const int64_t strips = (d + 15) / 16, spans = (n + TOKENS - 1) / TOKENS;
  float* partials = partials_for(threads, rp, d);
  if (threads > 1 && partials == NULL) return 1;
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    int thread, team;
    team_position(&thread, &team);
    float* acc = thread_sum(ga, partials, thread, rp, d);
    float* buf = work_buffer(TOKENS * 16 * strips, &failed);
#pragma omp for schedule(static)
    for (int64_t span = 0; span < spans; ++span) {
      if (buf == NULL) continue;
      const int64_t t0 = span * TOKENS;
      column_block_product(x, bits, dh, acc, buf, t0, n - t0 < TOKENS ? n - t0 : TOKENS, 0, strips, d, rp);
    }
    free(buf);
    add_thread_sums(ga, partials, team, rp, d);
  }
  free(partials);
  return failed;
}

/* Both products of the output gradient dy (n, d), in one pass over it:
 *   dh (n, r) = dy bt (bt = B padded to (d, rp): LoRA's dy B)  and  gb (rp, d) = h^T dy (h (n, rp)).
 * Each thread takes runs of TOKENS rows: their row products first (which bring the rows into L2), then
 * the column product from there, into its own copy of gb; the copies are summed at the end. */
int output_grads(const float* dy, const float* bt, const float* h, float* dh, float* gb, int64_t n, int64_t d,
                 int64_t r, int64_t rp, int threads) {
  const int64_t strips = (d + 15) / 16, spans = (n + TOKENS - 1) / TOKENS;
  float* partials = partials_for(threads, rp, d);
  if (threads > 1 && partials == NULL) return 1;
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    int thread, team;
    team_position(&thread, &team);
    float* acc = thread_sum(gb, partials, thread, rp, d);
    float* buf = work_buffer(TOKENS * 16 * strips + ROW_BUFFER(rp), &failed);
#pragma omp for schedule(static)
    for (int64_t span = 0; span < spans; ++span) {
      if (buf == NULL) continue;
      const int64_t t0 = span * TOKENS, count = n - t0 < TOKENS ? n - t0 : TOKENS;
      float* row_buf = buf + TOKENS * 16 * strips;
      for (int64_t r0 = t0; r0 < t0 + count; r0 += ROWS)
        row_block_product(dy, bt, dh, NULL, row_buf, (float(*)[ROWS][16])(row_buf + ROWS * DEPTH), r0,
                          t0 + count - r0 < ROWS ? t0 + count - r0 : ROWS, d, r, rp, 0, 0);
      column_block_product(dy, NULL, h, acc, buf, t0, count, 0, strips, d, rp);
    }
    free(buf);
    add_thread_sums(gb, partials, team, rp, d);
  }
  free(partials);
  return failed;
}

/* gx (n, d) = (dh A) * keep; dh (n, rp), a = A padded to (rp, d); with bits == NULL, gx = dh a for any
 * rank-r dh and a (no mask; also the forward's h (s B^T)). gx is written, not added to: the caller adds
 * the base layer's term into it with a GEMM (beta = 1), whose compute hides that read, instead of a pass
 * of its own over gx here. */
int lowrank_expand(float* gx, const uint8_t* bits, const float* dh, const float* a, int64_t n, int64_t d,
                   int64_t rp, int threads) {
  const int64_t blocks = (n + ROWS - 1) / ROWS;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t r0 = blk * ROWS, m = n - r0 < ROWS ? n - r0 : ROWS;
    const float* g[ROWS]; /* rows past the end repeat the last one; their sums are not stored */
    for (int i = 0; i < ROWS; ++i) g[i] = dh + (r0 + (i < m ? i : m - 1)) * rp;
    for (int64_t c = 0; c < d; c += 16) {
      const int wide = d - c >= 16;
      float sums[ROWS][16];
      block_product(g, a + c, d, rp, wide, 0, sums);
      for (int64_t i = 0; i < m; ++i) {
        float* out = gx + (r0 + i) * d + c;
        for (int half = 0; half < 1 + wide; ++half) {
          __m256 v = _mm256_loadu_ps(sums[i] + 8 * half);
          if (bits != NULL) v = _mm256_andnot_ps(expand_bits(bits[(r0 + i) * (d / 8) + c / 8 + half]), v);
          _mm256_storeu_ps(out + 8 * half, v);
        }
      }
    }
  }
  return 0;
}
