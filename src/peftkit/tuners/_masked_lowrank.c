/* Input dropout inside an adapter's rank-r products, on x86 CPUs with AVX2 and FMA.
 *
 * A LoRA layer in training computes h = d(x) A^T, dA = dh^T d(x) and dx += dh A * keep, where
 * d(x) = x * keep is its input dropout. Forming d(x) (and drawing its mask) costs a pass over the input
 * per product; at rank 16 that is as much as the product itself. Here the mask is drawn and applied
 * inside the products' own passes over x: each kernel reads a row block of x once, masks it in L1,
 * and multiplies it there.
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

#define ROWS 6     /* rows per block in the row products: 12 accumulators of 8 */
#define CHUNK 512  /* tokens per chunk of a column strip in dA */

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

/* Draws row `row`'s drops into bits_row and writes x's row, dropped values zeroed and the rest times
 * `scale`, into out. */
static inline void draw_row(const float* x, float* out, uint8_t* bits_row, int64_t d, int64_t row,
                            uint64_t seed, uint32_t threshold, float scale) {
  const __m256i key = _mm256_set1_epi32((int)(uint32_t)splitmix64(seed ^ splitmix64((uint64_t)row)));
  const __m256i spread = _mm256_set1_epi32((int)0x9e3779b1u);
  const __m256i flip = _mm256_set1_epi32((int)0x80000000u); /* unsigned order as signed */
  const __m256i limit = _mm256_xor_si256(_mm256_set1_epi32((int)threshold), flip);
  const __m256 factor = _mm256_set1_ps(scale);
  __m256i spread_col = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), spread);
  const __m256i step = _mm256_mullo_epi32(_mm256_set1_epi32(8), spread);
  for (int64_t c = 0; c < d; c += 8) {
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
    draw_row(x + row * d, out + row * d, bits + row * (d / 8), d, row, seed, threshold, scale);
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
 *   sums[i][c] = sum_k rows[i][k] * cols[k * col_step + c],  i < ROWS, c < 16 (c < 8 when !wide).
 * The sums go out through a fixed-size array: indexing the accumulators by a variable row count would
 * keep them out of registers. */
static inline __attribute__((always_inline)) void block_product(const float* const rows[ROWS], const float* cols,
                                                                int64_t col_step, int64_t depth, int wide,
                                                                float sums[ROWS][16]) {
  __m256 acc[ROWS][2];
  for (int i = 0; i < ROWS; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
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

/* h (n, r) = (x * keep) A^T, drawing the mask into bits; at = A^T padded to (d, rp). */
int masked_product(const float* x, const float* at, float* h, uint8_t* bits, int64_t n, int64_t d,
                   int64_t r, int64_t rp, uint64_t seed, uint32_t threshold, int threads) {
  const int64_t blocks = (n + ROWS - 1) / ROWS;
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    float* buf = work_buffer(ROWS * d, &failed);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      if (buf == NULL) continue;
      const int64_t r0 = blk * ROWS, m = n - r0 < ROWS ? n - r0 : ROWS;
      for (int64_t i = 0; i < m; ++i)
        draw_row(x + (r0 + i) * d, buf + i * d, bits + (r0 + i) * (d / 8), d, r0 + i, seed, threshold, 1.0f);
      if (m < ROWS) memset(buf + m * d, 0, sizeof(float) * (ROWS - m) * d);
      const float* rows[ROWS];
      for (int i = 0; i < ROWS; ++i) rows[i] = buf + i * d;
      for (int64_t j = 0; j < rp; j += 16) {
        float sums[ROWS][16];
        block_product(rows, at + j, rp, d, 1, sums);
        const int64_t cols = r - j < 16 ? r - j : 16;
        for (int64_t i = 0; i < m; ++i) memcpy(h + (r0 + i) * r + j, sums[i], sizeof(float) * cols);
      }
    }
    free(buf);
  }
  return failed;
}

/* ga (rp, d) = dh^T (x * keep); dh (n, rp). */
int masked_factor_grad(const float* x, const uint8_t* bits, const float* dh, float* ga, int64_t n,
                       int64_t d, int64_t rp, int threads) {
  const int64_t strips = (d + 15) / 16;
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    float* buf = work_buffer(CHUNK * 16, &failed);
#pragma omp for schedule(static)
    for (int64_t s = 0; s < strips; ++s) {
      if (buf == NULL) continue;
      const int64_t c0 = s * 16;
      const int wide = d - c0 >= 16; /* else an 8-wide strip at the end */
      for (int64_t j = 0; j < rp; ++j) memset(ga + j * d + c0, 0, sizeof(float) * (wide ? 16 : 8));
      for (int64_t t0 = 0; t0 < n; t0 += CHUNK) {
        const int64_t count = n - t0 < CHUNK ? n - t0 : CHUNK;
        for (int64_t t = 0; t < count; ++t) { /* the strip's masked values, contiguous in L2 */
          const float* xr = x + (t0 + t) * d + c0;
          const uint8_t* br = bits + (t0 + t) * (d / 8) + c0 / 8;
          _mm256_store_ps(buf + t * 16, _mm256_andnot_ps(expand_bits(br[0]), _mm256_loadu_ps(xr)));
          _mm256_store_ps(buf + t * 16 + 8,
                          wide ? _mm256_andnot_ps(expand_bits(br[1]), _mm256_loadu_ps(xr + 8)) : _mm256_setzero_ps());
        }
        for (int64_t j = 0; j < rp; j += 4) {
          __m256 acc[4][2];
          for (int q = 0; q < 4; ++q) {
            acc[q][0] = _mm256_loadu_ps(ga + (j + q) * d + c0);
            acc[q][1] = wide ? _mm256_loadu_ps(ga + (j + q) * d + c0 + 8) : _mm256_setzero_ps();
          }
          const float* g = dh + t0 * rp + j;
          for (int64_t t = 0; t < count; ++t) {
            const __m256 x0 = _mm256_load_ps(buf + t * 16), x1 = _mm256_load_ps(buf + t * 16 + 8);
            for (int q = 0; q < 4; ++q) {
              const __m256 b = _mm256_broadcast_ss(g + t * rp + q);
              acc[q][0] = _mm256_fmadd_ps(b, x0, acc[q][0]);
              acc[q][1] = _mm256_fmadd_ps(b, x1, acc[q][1]);
            }
          }
          for (int q = 0; q < 4; ++q) {
            _mm256_storeu_ps(ga + (j + q) * d + c0, acc[q][0]);
            if (wide) _mm256_storeu_ps(ga + (j + q) * d + c0 + 8, acc[q][1]);
          }
        }
      }
    }
    free(buf);
  }
  return failed;
}

/* gx (n, d) += (dh A) * keep; dh (n, rp), a = A padded to (rp, d). */
int masked_input_grad(float* gx, const uint8_t* bits, const float* dh, const float* a, int64_t n,
                      int64_t d, int64_t rp, int threads) {
  const int64_t blocks = (n + ROWS - 1) / ROWS;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t r0 = blk * ROWS, m = n - r0 < ROWS ? n - r0 : ROWS;
    const float* g[ROWS]; /* rows past the end repeat the last one; their sums are not stored */
    for (int i = 0; i < ROWS; ++i) g[i] = dh + (r0 + (i < m ? i : m - 1)) * rp;
    for (int64_t c = 0; c < d; c += 16) {
      const int wide = d - c >= 16;
      float sums[ROWS][16];
      block_product(g, a + c, d, rp, wide, sums);
      for (int64_t i = 0; i < m; ++i) {
        float* out = gx + (r0 + i) * d + c;
        const uint8_t* br = bits + (r0 + i) * (d / 8) + c / 8;
        for (int half = 0; half < 1 + wide; ++half) {
          const __m256 kept = _mm256_andnot_ps(expand_bits(br[half]), _mm256_loadu_ps(sums[i] + 8 * half));
          _mm256_storeu_ps(out + 8 * half, _mm256_add_ps(_mm256_loadu_ps(out + 8 * half), kept));
        }
      }
    }
  }
  return 0;
}
