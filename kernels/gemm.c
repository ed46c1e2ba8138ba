/* muse's matrix product for the CPU backend: for each batch element t,
 * C_t[m, n] = A_t[m, k] B_t[k, n], f32, any element strides for A and B (the same for every
 * t; A_t starts at a + aoff[t], B_t at b + boff[t]), C_t contiguous at c + t * m * ldc with
 * row stride ldc. Compiled with the program's kernels (same compiler and flags, so
 * -march=native picks the instruction set).
 *
 * An operand axis made of runs that are not adjacent in memory (attention's head merge read
 * in place) comes as a table of offsets, one per row or column, instead of a stride.
 *
 * An epilogue (a generated pointwise kernel's `_range` entry point) runs over each finished
 * tile of C while it is in cache: elements lo..hi of the batch of C's, numbered row-major
 * (it needs ldc == n).
 *
 * Blocking after the BLIS/GotoBLAS scheme: B is packed per KC-deep slice into panels of NR
 * columns, A per MC-row block into panels of MR rows (zero-padded at the edges), and an
 * MR x NR micro-kernel keeps its tile of C in 16 AVX-512 registers over the KC products.
 *
 * Threads: one OpenMP parallel region per call, because the program's other kernels are
 * OpenMP too and a second thread pool would fight them for the cores. A batch of at least
 * as many elements as threads runs one element per thread; otherwise the threads share B's
 * packing and then take (row block, column chunk) tasks, blocks shrunk until every thread
 * has one. Returns 1 when it computed the product, 0 when this build has no AVX-512 (the
 * caller then uses its portable GEMM). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The arguments; muse's runtime fills the same layout (runtime/src/cpu/compile.rs). */
struct muse_gemm {
  int64_t batch, m, n, k;
  const float *a;
  const int64_t *aoff;
  int64_t sam, sak;
  const float *b;
  const int64_t *boff;
  int64_t sbk, sbn;
  float *c;
  int64_t ldc;
  int32_t parallel;
  void (*epi)(void **bufs, const int64_t *sizes, uint64_t seed, int64_t lo, int64_t hi);
  void **epi_bufs;
  const int64_t *epi_sizes;
  uint64_t seed;
  const int64_t *arow, *acol, *brow, *bcol; /* offset tables replacing sam, sak, sbk, sbn */
};

#define MUSE_MR 8
#define MUSE_NR 32
#define MUSE_KC 256
#define MUSE_MC 128
#define MUSE_NC 256 /* a multiple of MUSE_NR */

/* A matrix read in place: element (r, c) at p[row offset + column offset], each a stride
   times the index or, where the table is not null, the table's entry. */
struct muse_view {
  const float *p;
  int64_t rs, cs;
  const int64_t *rt, *ct;
};

/* The view starting at row r, column c of v. */
static inline struct muse_view muse_sub(struct muse_view v, int64_t r, int64_t c) {
  if (v.rt) v.rt += r; else v.p += r * v.rs;
  if (v.ct) v.ct += c; else v.p += c * v.cs;
  return v;
}

static inline float muse_get(const struct muse_view *v, int64_t r, int64_t c) {
  return v->p[(v->rt ? v->rt[r] : r * v->rs) + (v->ct ? v->ct[c] : c * v->cs)];
}

#ifdef __AVX512F__
#include <immintrin.h>

/* B[k0.., j0..j0+NR] -> one panel of NR columns, row after row; missing columns are zero. */
static void muse_pack_b_panel(int64_t kc, int64_t nr, struct muse_view b, float *dst) {
  if (!b.ct && b.cs == 1 && nr == MUSE_NR) {
    for (int64_t k = 0; k < kc; k++)
      memcpy(dst + k * MUSE_NR, b.p + (b.rt ? b.rt[k] : k * b.rs), MUSE_NR * sizeof(float));
  } else if (!b.rt && !b.ct && b.rs == 1) {
    /* A transposed operand: read each column's run of k contiguously. */
    for (int64_t j = 0; j < MUSE_NR; j++)
      for (int64_t k = 0; k < kc; k++) dst[k * MUSE_NR + j] = j < nr ? b.p[j * b.cs + k] : 0.0f;
  } else {
    for (int64_t k = 0; k < kc; k++)
      for (int64_t j = 0; j < MUSE_NR; j++) dst[k * MUSE_NR + j] = j < nr ? muse_get(&b, k, j) : 0.0f;
  }
}

/* A[i0.., k0..] -> panels of MR rows, column after column; missing rows are zero. */
static void muse_pack_a(int64_t mc, int64_t kc, struct muse_view a, float *pa) {
  for (int64_t i0 = 0; i0 < mc; i0 += MUSE_MR) {
    int64_t mr = mc - i0 < MUSE_MR ? mc - i0 : MUSE_MR;
    if (!a.rt && !a.ct) {
      for (int64_t k = 0; k < kc; k++) {
        float *dst = pa + i0 * kc + k * MUSE_MR;
        for (int64_t i = 0; i < MUSE_MR; i++) dst[i] = i < mr ? a.p[(i0 + i) * a.rs + k * a.cs] : 0.0f;
      }
    } else {
      /* Row by row: a row's columns are runs of the table, read in order. */
      for (int64_t i = 0; i < MUSE_MR; i++) {
        const float *row = a.p + (a.rt ? a.rt[i0 + (i < mr ? i : mr - 1)] : (i0 + (i < mr ? i : mr - 1)) * a.rs);
        float *dst = pa + i0 * kc + i;
        for (int64_t k = 0; k < kc; k++) dst[k * MUSE_MR] = i < mr ? row[a.ct ? a.ct[k] : k * a.cs] : 0.0f;
      }
    }
  }
}

/* One MR x NR tile of C from NR columns of B, row k at pb + k * brs (a packed panel, or B
   itself), and MR rows of A, element (i, k) at pa[i * ars + k * acs] (a packed panel, or A
   itself when its rows are contiguous): written when `first`, accumulated after. */
static inline __attribute__((always_inline)) void muse_micro(int64_t kc, const float *pa, int64_t ars, int64_t acs,
                                                             const float *pb, int64_t brs, float *c, int64_t ldc,
                                                             int64_t mr, int64_t nr, int first) {
  __m512 acc[MUSE_MR][2];
  for (int i = 0; i < MUSE_MR; i++) {
    acc[i][0] = _mm512_setzero_ps();
    acc[i][1] = _mm512_setzero_ps();
  }
  /* Rows past the edge read the last row again; their results are never stored. */
  const float *row[MUSE_MR];
  for (int i = 0; i < MUSE_MR; i++) row[i] = pa + (i < mr ? i : mr - 1) * ars;
  for (int64_t k = 0; k < kc; k++) {
    __m512 b0 = _mm512_loadu_ps(pb + k * brs), b1 = _mm512_loadu_ps(pb + k * brs + 16);
    for (int i = 0; i < MUSE_MR; i++) {
      __m512 av = _mm512_set1_ps(row[i][k * acs]);
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

/* Where a KC slice's columns of B are read: panel j0 at p + j0 * panel, rows brs apart (packed
   panels, or B in place). */
struct muse_panels {
  const float *p;
  int64_t panel, brs;
};

/* B in place when its rows are contiguous, every panel is whole and the product is a narrow
   one with few rows of A (a 128 x 128 weight gradient, k = batch x tokens): packing B cost a
   third of such a product; wider B read in place measured slower than packed. */
static int muse_b_direct(struct muse_view b, int64_t n, int64_t m) {
  return m <= MUSE_MC && n <= 4 * MUSE_NR && !b.rt && !b.ct && b.cs == 1 && n % MUSE_NR == 0;
}

/* Rows i0..i0+mc, columns jc..jend of one KC slice. */
static void muse_block(int64_t mc, int64_t jc, int64_t jend, int64_t n, int64_t kc, struct muse_view a,
                       struct muse_panels b, float *c, int64_t ldc, int first, float *pa) {
  /* Rows of A that are contiguous are read in place: packing them cost a quarter of a
     product with k = 128 (most of a small transformer's). Others are packed. */
  int direct = !a.rt && !a.ct && a.cs == 1;
  if (!direct) muse_pack_a(mc, kc, a, pa);
  for (int64_t j0 = jc; j0 < jend; j0 += MUSE_NR) {
    int64_t nr = n - j0 < MUSE_NR ? n - j0 : MUSE_NR;
    const float *pb = b.p + j0 * b.panel;
    for (int64_t ii = 0; ii < mc; ii += MUSE_MR) {
      int64_t mr = mc - ii < MUSE_MR ? mc - ii : MUSE_MR;
      if (direct)
        muse_micro(kc, a.p + ii * a.rs, a.rs, 1, pb, b.brs, c + ii * ldc + j0, ldc, mr, nr, first);
      else
        muse_micro(kc, pa + ii * kc, 1, MUSE_MR, pb, b.brs, c + ii * ldc + j0, ldc, mr, nr, first);
    }
  }
}

/* A KC slice of B from row k0: in place, or packed into pb by threads sharing the loop. */
static struct muse_panels muse_slice_b(struct muse_view b, int64_t m, int64_t n, int64_t k0, int64_t kc, float *pb, int shared) {
  if (muse_b_direct(b, n, m)) {
    struct muse_panels d = {b.p + k0 * b.rs, 1, b.rs};
    return d;
  }
  int64_t npanels = (n + MUSE_NR - 1) / MUSE_NR;
  if (shared) {
    #pragma omp for schedule(static)
    for (int64_t p = 0; p < npanels; p++) {
      int64_t j0 = p * MUSE_NR;
      muse_pack_b_panel(kc, n - j0 < MUSE_NR ? n - j0 : MUSE_NR, muse_sub(b, k0, j0), pb + j0 * kc);
    }
  } else {
    for (int64_t p = 0; p < npanels; p++) {
      int64_t j0 = p * MUSE_NR;
      muse_pack_b_panel(kc, n - j0 < MUSE_NR ? n - j0 : MUSE_NR, muse_sub(b, k0, j0), pb + j0 * kc);
    }
  }
  struct muse_panels packed = {pb, kc, MUSE_NR};
  return packed;
}

/* A whole product on the calling thread. */
static void muse_serial(int64_t m, int64_t n, int64_t k, struct muse_view a, struct muse_view b, float *c,
                        int64_t ldc, float *pb, float *pa) {
  for (int64_t k0 = 0; k0 < k; k0 += MUSE_KC) {
    int64_t kc = k - k0 < MUSE_KC ? k - k0 : MUSE_KC;
    struct muse_panels panels = muse_slice_b(b, m, n, k0, kc, pb, 0);
    for (int64_t i0 = 0; i0 < m; i0 += MUSE_MC) {
      int64_t mc = m - i0 < MUSE_MC ? m - i0 : MUSE_MC;
      muse_block(mc, 0, n, n, kc, muse_sub(a, i0, k0), panels, c + i0 * ldc, ldc, k0 == 0, pa);
    }
  }
}

static int64_t muse_div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

int muse_sgemm(const struct muse_gemm *g) {
  const int64_t batch = g->batch, m = g->m, n = g->n, k = g->k, sam = g->sam, sak = g->sak, sbk = g->sbk,
                sbn = g->sbn, ldc = g->ldc;
  const float *a = g->a, *b = g->b;
  const int64_t *aoff = g->aoff, *boff = g->boff;
  float *c = g->c;
  const int parallel = g->parallel;
  if (g->epi && ldc != n) return 0;
  if (batch <= 0 || m <= 0 || n <= 0) return 1;
  if (k <= 0) {
    for (int64_t t = 0; t < batch; t++)
      for (int64_t i = 0; i < m; i++) memset(c + (t * m + i) * ldc, 0, sizeof(float) * (size_t)n);
    if (g->epi) g->epi(g->epi_bufs, g->epi_sizes, g->seed, 0, batch * m * n);
    return 1;
  }
  int threads = 1;
#ifdef _OPENMP
  if (parallel && (double)batch * m * n * k >= 65536.0) threads = omp_get_max_threads();
#else
  (void)parallel;
#endif
  int64_t panels = muse_div_up(n, MUSE_NR) * MUSE_NR;
  int64_t kc_max = k < MUSE_KC ? k : MUSE_KC;
  size_t pb_bytes = sizeof(float) * (size_t)muse_div_up(kc_max * panels, 16) * 16;
  int per_element = threads == 1 || batch >= 4 * threads || batch % threads == 0;
  /* Packed B: one buffer per thread when threads take whole elements, one shared otherwise. */
  float *packed = (float *)aligned_alloc(64, pb_bytes * (per_element ? (size_t)threads : 1));
  if (!packed) return 0;
  #pragma omp parallel num_threads(threads) if(threads > 1)
  {
    float pa[MUSE_MC * MUSE_KC] __attribute__((aligned(64)));
    if (per_element) {
      int me = 0;
#ifdef _OPENMP
      me = omp_get_thread_num();
#endif
      float *pb = packed + (size_t)me * (pb_bytes / sizeof(float));
      #pragma omp for schedule(static)
      for (int64_t t = 0; t < batch; t++) {
        struct muse_view at = {a + aoff[t], sam, sak, g->arow, g->acol}, bt = {b + boff[t], sbk, sbn, g->brow, g->bcol};
        muse_serial(m, n, k, at, bt, c + t * m * ldc, ldc, pb, pa);
        if (g->epi) g->epi(g->epi_bufs, g->epi_sizes, g->seed, t * m * n, (t + 1) * m * n);
      }
    } else {
      float *shared_pb = packed;
      /* Blocks: MC x NC, shrunk (MR, NR multiples) until there are as many as threads. */
      int64_t mc = MUSE_MC, nc = MUSE_NC;
      if (muse_div_up(m, mc) * muse_div_up(n, nc) < threads) {
        int64_t want = muse_div_up(threads, muse_div_up(n, nc));
        mc = muse_div_up(muse_div_up(m, want), MUSE_MR) * MUSE_MR;
      }
      if (muse_div_up(m, mc) * muse_div_up(n, nc) < threads) {
        int64_t want = muse_div_up(threads, muse_div_up(m, mc));
        nc = muse_div_up(muse_div_up(n, want), MUSE_NR) * MUSE_NR;
      }
      int64_t mblocks = muse_div_up(m, mc), nchunks = muse_div_up(n, nc);
      for (int64_t t = 0; t < batch; t++) {
        struct muse_view at = {a + aoff[t], sam, sak, g->arow, g->acol}, bt = {b + boff[t], sbk, sbn, g->brow, g->bcol};
        float *ct = c + t * m * ldc;
        for (int64_t k0 = 0; k0 < k; k0 += MUSE_KC) {
          int64_t kc = k - k0 < MUSE_KC ? k - k0 : MUSE_KC;
          struct muse_panels panels = muse_slice_b(bt, m, n, k0, kc, shared_pb, 1);
          #pragma omp for schedule(static)
          for (int64_t task = 0; task < mblocks * nchunks; task++) {
            int64_t i0 = (task / nchunks) * mc, jc = (task % nchunks) * nc;
            int64_t rows = m - i0 < mc ? m - i0 : mc, jend = jc + nc < n ? jc + nc : n;
            muse_block(rows, jc, jend, n, kc, muse_sub(at, i0, k0), panels, ct + i0 * ldc, ldc, k0 == 0, pa);
            if (g->epi && k0 + kc >= k) {
              /* The tile is final: whole rows in one call, else row by row. */
              int64_t base = (t * m + i0) * n;
              if (jc == 0 && jend == n)
                g->epi(g->epi_bufs, g->epi_sizes, g->seed, base, base + rows * n);
              else
                for (int64_t r = 0; r < rows; r++)
                  g->epi(g->epi_bufs, g->epi_sizes, g->seed, base + r * n + jc, base + r * n + jend);
            }
          }
        }
      }
    }
  }
  free(packed);
  return 1;
}
#else
int muse_sgemm(const struct muse_gemm *g) {
  (void)g;
  return 0;
}
#endif
