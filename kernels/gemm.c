/* muse's matrix product for the CPU backend: C[m, n] = A[m, k] B[k, n], f32, any element
 * strides for A and B, C contiguous with row stride ldc. Compiled with the program's
 * kernels (same compiler and flags, so -march=native picks the instruction set).
 *
 * Blocking after the BLIS/GotoBLAS scheme: B is packed per KC-deep slice into panels of NR
 * columns, A per MC-row block into panels of MR rows (zero-padded at the edges), and an
 * MR x NR micro-kernel keeps its tile of C in 16 AVX-512 registers over the KC products.
 * OpenMP threads take MC-row blocks. Returns 1 when it computed the product, 0 when this
 * build has no AVX-512 (the caller then uses its portable GEMM). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MUSE_MR 8
#define MUSE_NR 32
#define MUSE_KC 256
#define MUSE_MC 128
#define MUSE_NC 256 /* a multiple of MUSE_NR */

#ifdef __AVX512F__
#include <immintrin.h>

/* B[k0.., j..] -> panels of NR columns, row after row; missing columns are zero. */
static void muse_pack_b(int64_t kc, int64_t n, const float *b, int64_t sbk, int64_t sbn, float *pb) {
  for (int64_t j0 = 0; j0 < n; j0 += MUSE_NR) {
    int64_t nr = n - j0 < MUSE_NR ? n - j0 : MUSE_NR;
    for (int64_t k = 0; k < kc; k++) {
      float *dst = pb + j0 * kc + k * MUSE_NR;
      const float *src = b + k * sbk + j0 * sbn;
      if (sbn == 1 && nr == MUSE_NR) {
        memcpy(dst, src, MUSE_NR * sizeof(float));
      } else {
        for (int64_t j = 0; j < MUSE_NR; j++) dst[j] = j < nr ? src[j * sbn] : 0.0f;
      }
    }
  }
}

/* A[i0.., k0..] -> panels of MR rows, column after column; missing rows are zero. */
static void muse_pack_a(int64_t mc, int64_t kc, const float *a, int64_t sam, int64_t sak, float *pa) {
  for (int64_t i0 = 0; i0 < mc; i0 += MUSE_MR) {
    int64_t mr = mc - i0 < MUSE_MR ? mc - i0 : MUSE_MR;
    for (int64_t k = 0; k < kc; k++) {
      float *dst = pa + i0 * kc + k * MUSE_MR;
      for (int64_t i = 0; i < MUSE_MR; i++) dst[i] = i < mr ? a[(i0 + i) * sam + k * sak] : 0.0f;
    }
  }
}

/* One MR x NR tile of C from packed panels: written when `first`, accumulated after. */
static inline void muse_micro(int64_t kc, const float *pa, const float *pb, float *c, int64_t ldc, int64_t mr,
                              int64_t nr, int first) {
  __m512 acc[MUSE_MR][2];
  for (int i = 0; i < MUSE_MR; i++) {
    acc[i][0] = _mm512_setzero_ps();
    acc[i][1] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; k++) {
    __m512 b0 = _mm512_loadu_ps(pb + k * MUSE_NR), b1 = _mm512_loadu_ps(pb + k * MUSE_NR + 16);
    for (int i = 0; i < MUSE_MR; i++) {
      __m512 av = _mm512_set1_ps(pa[k * MUSE_MR + i]);
      acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
    }
  }
  if (mr == MUSE_MR && nr == MUSE_NR) {
    for (int i = 0; i < MUSE_MR; i++) {
      float *ci = c + i * ldc;
      if (!first) {
        acc[i][0] = _mm512_add_ps(acc[i][0], _mm512_loadu_ps(ci));
        acc[i][1] = _mm512_add_ps(acc[i][1], _mm512_loadu_ps(ci + 16));
      }
      _mm512_storeu_ps(ci, acc[i][0]);
      _mm512_storeu_ps(ci + 16, acc[i][1]);
    }
  } else {
    float tmp[MUSE_MR][MUSE_NR];
    for (int i = 0; i < MUSE_MR; i++) {
      _mm512_storeu_ps(tmp[i], acc[i][0]);
      _mm512_storeu_ps(tmp[i] + 16, acc[i][1]);
    }
    for (int64_t i = 0; i < mr; i++)
      for (int64_t j = 0; j < nr; j++) c[i * ldc + j] = (first ? 0.0f : c[i * ldc + j]) + tmp[i][j];
  }
}

int muse_sgemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t sam, int64_t sak, const float *b,
               int64_t sbk, int64_t sbn, float *c, int64_t ldc, int parallel) {
  if (m <= 0 || n <= 0) return 1;
  if (k <= 0) {
    for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, sizeof(float) * (size_t)n);
    return 1;
  }
  int64_t panels = (n + MUSE_NR - 1) / MUSE_NR * MUSE_NR;
  int64_t kc_max = k < MUSE_KC ? k : MUSE_KC;
  float *pb = (float *)aligned_alloc(64, sizeof(float) * (size_t)(((kc_max * panels) + 15) / 16 * 16));
  if (!pb) return 0;
  for (int64_t k0 = 0; k0 < k; k0 += MUSE_KC) {
    int64_t kc = k - k0 < MUSE_KC ? k - k0 : MUSE_KC;
    muse_pack_b(kc, n, b + k0 * sbk, sbk, sbn, pb);
    /* Tasks are (MC-row block, NC-column chunk) pairs, so that a product with few rows
       (a weight gradient, 128 x 1024 x 512) still gives every thread work. */
    int64_t mblocks = (m + MUSE_MC - 1) / MUSE_MC, nchunks = (n + MUSE_NC - 1) / MUSE_NC;
    #pragma omp parallel if(parallel && mblocks * nchunks > 1)
    {
      float pa[MUSE_MC * MUSE_KC] __attribute__((aligned(64)));
      #pragma omp for schedule(static)
      for (int64_t t = 0; t < mblocks * nchunks; t++) {
        int64_t i0 = (t / nchunks) * MUSE_MC, jc = (t % nchunks) * MUSE_NC;
        int64_t mc = m - i0 < MUSE_MC ? m - i0 : MUSE_MC;
        int64_t jend = jc + MUSE_NC < n ? jc + MUSE_NC : n;
        muse_pack_a(mc, kc, a + i0 * sam + k0 * sak, sam, sak, pa);
        for (int64_t j0 = jc; j0 < jend; j0 += MUSE_NR) {
          int64_t nr = n - j0 < MUSE_NR ? n - j0 : MUSE_NR;
          for (int64_t ii = 0; ii < mc; ii += MUSE_MR) {
            int64_t mr = mc - ii < MUSE_MR ? mc - ii : MUSE_MR;
            muse_micro(kc, pa + ii * kc, pb + j0 * kc, c + (i0 + ii) * ldc + j0, ldc, mr, nr, k0 == 0);
          }
        }
      }
    }
  }
  free(pb);
  return 1;
}
#else
int muse_sgemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t sam, int64_t sak, const float *b,
               int64_t sbk, int64_t sbn, float *c, int64_t ldc, int parallel) {
  (void)m; (void)n; (void)k; (void)a; (void)sam; (void)sak; (void)b; (void)sbk; (void)sbn; (void)c; (void)ldc;
  (void)parallel;
  return 0;
}
#endif
