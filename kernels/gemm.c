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
 * columns, A per MC-row block into panels of MR rows (edges repeat the last row or column,
 * whose results are never stored), and an
 * MR x NR micro-kernel keeps its tile of C in 16 AVX-512 registers over the KC products.
 *
 * Threads: one OpenMP parallel region per call, because the program's other kernels are
 * OpenMP too and a second thread pool would fight them for the cores. A batch of at least
 * four elements per thread (or a multiple of the thread count) runs one element per thread;
 * otherwise each thread takes one slab of C (a grid of row and column ranges, see muse_grid)
 * and computes it start to end with its own packing, no barrier until the end. Returns 1
 * when it computed the product, 0 when this build has no AVX-512 (the
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

#define MUSE_MR 8 /* muse_pack_a transposes 8 x 8 blocks: MR must stay 8 */
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


#ifdef __AVX512F__
#include <immintrin.h>

/* Offset of row r / column c of a view. */
static inline int64_t muse_roff(const struct muse_view *v, int64_t r) { return v->rt ? v->rt[r] : r * v->rs; }
static inline int64_t muse_coff(const struct muse_view *v, int64_t c) { return v->ct ? v->ct[c] : c * v->cs; }

/* Whether offsets i..i+8 of an axis (a table, or a stride) are adjacent in memory. */
static inline int muse_run8(const int64_t *table, int64_t stride, int64_t i) {
  if (!table) return stride == 1;
  for (int q = 1; q < 8; q++)
    if (table[i + q] != table[i] + q) return 0;
  return 1;
}

/* An 8 x 8 transpose: line r of the source is 8 adjacent floats at s[r]; element c of each
   goes to d[c * ds + r]. Packing a transposed operand element by element had cost as much
   as the product's arithmetic (attention's head merge, weights read as W^T). */
static inline void muse_t8(const float *const s[8], float *d, int64_t ds) {
  __m256 r0 = _mm256_loadu_ps(s[0]), r1 = _mm256_loadu_ps(s[1]), r2 = _mm256_loadu_ps(s[2]), r3 = _mm256_loadu_ps(s[3]);
  __m256 r4 = _mm256_loadu_ps(s[4]), r5 = _mm256_loadu_ps(s[5]), r6 = _mm256_loadu_ps(s[6]), r7 = _mm256_loadu_ps(s[7]);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
         t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
         t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE), u2 = _mm256_shuffle_ps(t1, t3, 0x44),
         u3 = _mm256_shuffle_ps(t1, t3, 0xEE), u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
         u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(d + 0 * ds, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(d + 1 * ds, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* B[k0.., j0..j0+NR] -> one panel of NR columns, row after row. Columns past nr repeat the
   last one: the micro-kernel never stores what they produce. Rows of B whose columns are
   adjacent are copied 8 at a time; columns whose rows are adjacent (B a transposed view)
   go through 8 x 8 transposes; anything else element by element. */
static void muse_pack_b_panel(int64_t kc, int64_t nr, struct muse_view b, float *dst) {
  int64_t coff[MUSE_NR];
  for (int64_t j = 0; j < MUSE_NR; j++) coff[j] = muse_coff(&b, j < nr ? j : nr - 1);
  int cols_adjacent = nr == MUSE_NR;
  for (int64_t j = 0; j < MUSE_NR && cols_adjacent; j += 8) cols_adjacent = muse_run8(b.ct, b.cs, j);
  if (cols_adjacent) {
    for (int64_t k = 0; k < kc; k++) {
      const float *row = b.p + muse_roff(&b, k);
      for (int64_t j = 0; j < MUSE_NR; j += 8) memcpy(dst + k * MUSE_NR + j, row + coff[j], 8 * sizeof(float));
    }
    return;
  }
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    if (muse_run8(b.rt, b.rs, k)) {
      int64_t r = muse_roff(&b, k);
      for (int64_t j = 0; j < MUSE_NR; j += 8) {
        const float *s[8];
        for (int q = 0; q < 8; q++) s[q] = b.p + r + coff[j + q];
        muse_t8(s, dst + k * MUSE_NR + j, MUSE_NR);
      }
    } else {
      for (int64_t kk = k; kk < k + 8; kk++) {
        const float *row = b.p + muse_roff(&b, kk);
        for (int64_t j = 0; j < MUSE_NR; j++) dst[kk * MUSE_NR + j] = row[coff[j]];
      }
    }
  }
  for (; k < kc; k++) {
    const float *row = b.p + muse_roff(&b, k);
    for (int64_t j = 0; j < MUSE_NR; j++) dst[k * MUSE_NR + j] = row[coff[j]];
  }
}

/* A[i0.., k0..] -> panels of MR rows, column after column. Rows past the edge repeat the
   last one (their results are never stored). Eight columns adjacent in every row go
   through an 8 x 8 transpose; a transposed A (rows adjacent) is one 32-byte copy per
   column; anything else element by element. */
static void muse_pack_a(int64_t mc, int64_t kc, struct muse_view a, float *pa) {
  for (int64_t i0 = 0; i0 < mc; i0 += MUSE_MR) {
    int64_t mr = mc - i0 < MUSE_MR ? mc - i0 : MUSE_MR;
    float *panel = pa + i0 * kc;
    if (mr == MUSE_MR && muse_run8(a.rt, a.rs, i0)) {
      int64_t r = muse_roff(&a, i0);
      for (int64_t k = 0; k < kc; k++) memcpy(panel + k * MUSE_MR, a.p + r + muse_coff(&a, k), MUSE_MR * sizeof(float));
      continue;
    }
    const float *row[MUSE_MR];
    for (int64_t i = 0; i < MUSE_MR; i++) row[i] = a.p + muse_roff(&a, i0 + (i < mr ? i : mr - 1));
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
      if (muse_run8(a.ct, a.cs, k)) {
        int64_t c = muse_coff(&a, k);
        const float *s[8];
        for (int q = 0; q < 8; q++) s[q] = row[q] + c;
        muse_t8(s, panel + k * MUSE_MR, MUSE_MR);
      } else {
        for (int64_t kk = k; kk < k + 8; kk++)
          for (int64_t i = 0; i < MUSE_MR; i++) panel[kk * MUSE_MR + i] = row[i][muse_coff(&a, kk)];
      }
    }
    for (; k < kc; k++)
      for (int64_t i = 0; i < MUSE_MR; i++) panel[k * MUSE_MR + i] = row[i][muse_coff(&a, k)];
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
  /* The tile of C, and rows of A read in place a few lines ahead, are fetched while the
     products run: in a training step they come from the other kernels' writes, not from
     this core's cache (~3% over the step's product shapes). */
  for (int i = 0; i < mr; i++) {
    _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch((const char *)(c + i * ldc + 16), _MM_HINT_T0);
  }
  for (int64_t k = 0; k < kc; k++) {
    __m512 b0 = _mm512_loadu_ps(pb + k * brs), b1 = _mm512_loadu_ps(pb + k * brs + 16);
    if (acs == 1 && (k & 15) == 0)
      for (int i = 0; i < MUSE_MR; i++) _mm_prefetch((const char *)(row[i] + k + 64), _MM_HINT_T0);
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

/* Rows 0..mc, columns 0..n of one KC slice. */
static void muse_block(int64_t mc, int64_t n, int64_t kc, struct muse_view a,
                       struct muse_panels b, float *c, int64_t ldc, int first, float *pa) {
  /* Rows of A that are contiguous are read in place: packing them cost a quarter of a
     product with k = 128 (most of a small transformer's). Others are packed. */
  int direct = !a.rt && !a.ct && a.cs == 1;
  if (!direct) muse_pack_a(mc, kc, a, pa);
  for (int64_t j0 = 0; j0 < n; j0 += MUSE_NR) {
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

/* A KC slice of B from row k0: in place, or packed into pb. */
static struct muse_panels muse_slice_b(struct muse_view b, int64_t m, int64_t n, int64_t k0, int64_t kc, float *pb) {
  if (muse_b_direct(b, n, m)) {
    struct muse_panels d = {b.p + k0 * b.rs, 1, b.rs};
    return d;
  }
  for (int64_t j0 = 0; j0 < n; j0 += MUSE_NR)
    muse_pack_b_panel(kc, n - j0 < MUSE_NR ? n - j0 : MUSE_NR, muse_sub(b, k0, j0), pb + j0 * kc);
  struct muse_panels packed = {pb, kc, MUSE_NR};
  return packed;
}

/* Elements of C_t (numbered row-major over the batch) in rows i0..i0+rows, columns
   jc..jend: the epilogue over them, whole rows in one call, else row by row. */
static void muse_epilogue(const struct muse_gemm *g, int64_t t, int64_t i0, int64_t rows, int64_t jc, int64_t jend) {
  int64_t n = g->n, base = (t * g->m + i0) * n;
  if (jc == 0 && jend == n)
    g->epi(g->epi_bufs, g->epi_sizes, g->seed, base, base + rows * n);
  else
    for (int64_t r = 0; r < rows; r++) g->epi(g->epi_bufs, g->epi_sizes, g->seed, base + r * n + jc, base + r * n + jend);
}

/* Rows i0..i0+m and columns j0..j0+n of C_t over products kb..ke of the inner dimension, on
   the calling thread, into c (row stride ldc); with `epi`, the epilogue over each row block
   as its last KC slice finishes (while the block is in cache). */
static void muse_part(const struct muse_gemm *g, int64_t t, int64_t i0, int64_t m, int64_t j0, int64_t n, int64_t kb,
                      int64_t ke, float *c, int64_t ldc, int epi, float *pb, float *pa) {
  struct muse_view a = {g->a + g->aoff[t], g->sam, g->sak, g->arow, g->acol};
  struct muse_view b = {g->b + g->boff[t], g->sbk, g->sbn, g->brow, g->bcol};
  a = muse_sub(a, i0, kb);
  b = muse_sub(b, kb, j0);
  int64_t k = ke - kb;
  for (int64_t k0 = 0; k0 < k; k0 += MUSE_KC) {
    int64_t kc = k - k0 < MUSE_KC ? k - k0 : MUSE_KC;
    struct muse_panels panels = muse_slice_b(b, m, n, k0, kc, pb);
    for (int64_t ib = 0; ib < m; ib += MUSE_MC) {
      int64_t mc = m - ib < MUSE_MC ? m - ib : MUSE_MC;
      muse_block(mc, n, kc, muse_sub(a, ib, k0), panels, c + ib * ldc, ldc, k0 == 0, pa);
      if (epi && g->epi && k0 + kc >= k) muse_epilogue(g, t, i0 + ib, mc, j0, j0 + n);
    }
  }
}

/* Rows i0..i0+m and columns j0..j0+n of C_t, the whole inner dimension, epilogue included. */
static void muse_slab(const struct muse_gemm *g, int64_t t, int64_t i0, int64_t m, int64_t j0, int64_t n, float *pb, float *pa) {
  muse_part(g, t, i0, m, j0, n, 0, g->k, g->c + t * g->m * g->ldc + i0 * g->ldc + j0, g->ldc, 1, pb, pa);
}

static int64_t muse_div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* A buffer of the calling thread, kept from call to call and grown when a product needs
   more: allocated per call, its pages were faulted in again and again (the kernel's page
   clearing showed in profiles of a training step). NULL when out of memory. */
struct muse_buffer {
  float *p;
  size_t cap;
};
static float *muse_grow(struct muse_buffer *b, size_t floats) {
  if (floats > b->cap) {
    free(b->p);
    size_t cap = (size_t)muse_div_up((int64_t)floats, 16) * 16;
    b->p = (float *)aligned_alloc(64, sizeof(float) * cap);
    b->cap = b->p ? cap : 0;
  }
  return b->p;
}

/* Each thread's packed panels of B, and its partial C in a product split along k. */
static _Thread_local struct muse_buffer muse_packed, muse_partial;

/* How `threads` threads split one m x n product into a grid of tr x tc slabs, each thread
   one slab computed start to end on its own: the grid whose largest slab (rounded up to
   whole micro-tiles, plus reading its rows of A and columns of B) is least work, rows
   split first on a tie. Sharing packed panels and splitting KC slices into tasks instead
   cost two barriers per slice and reads from the other core's cache: 2 threads ran ~1.5x
   one. A 128 x 128 weight gradient had split its columns on that tie, so that both threads
   packed all of A (dy^T); split by rows it takes ~15% less time. Counting B read in place
   as free measured slower: each thread then streamed all of A. */
static void muse_grid(int64_t m, int64_t n, int64_t k, int threads, int64_t *tr, int64_t *tc) {
  double best = -1.0;
  for (int64_t r = threads; r >= 1; r--) {
    if (threads % r) continue;
    int64_t cpart = threads / r;
    int64_t rows = muse_div_up(muse_div_up(m, r), MUSE_MR) * MUSE_MR;
    int64_t cols = muse_div_up(muse_div_up(n, cpart), MUSE_NR) * MUSE_NR;
    if ((r > 1 && rows * (r - 1) >= m) || (cpart > 1 && cols * (cpart - 1) >= n)) continue; /* an empty slab */
    double work = (double)rows * cols * k + 8.0 * k * (rows + cols);
    if (best < 0 || work < best) {
      best = work;
      *tr = r;
      *tc = cpart;
    }
  }
  if (best < 0) {
    *tr = 1;
    *tc = 1;
  }
}

/* Whether threads split the inner dimension instead of C: a deep product with a small C (a
   weight gradient, k = batch x tokens). Each thread then reads only its own stretch of both
   operands, which the kernels before it wrote from the same thread (their rows split
   alike), and computes whole micro-tiles; the partial results are summed after. Split by
   rows of C, each thread read all of both operands, half of them from the other core. */
static int muse_split_k(int64_t batch, int64_t m, int64_t n, int64_t k, int threads) {
  return batch == 1 && threads > 1 && k >= (int64_t)threads * MUSE_KC && k >= 2 * (m > n ? m : n) && m * n <= 1 << 20;
}

int muse_sgemm(const struct muse_gemm *g) {
  const int64_t batch = g->batch, m = g->m, n = g->n, k = g->k, ldc = g->ldc;
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
  size_t pb_floats = (size_t)muse_div_up(kc_max * panels, 16) * 16;
  int per_element = threads == 1 || batch >= 4 * threads || batch % threads == 0;
  int64_t tr = 1, tc = 1;
  if (!per_element) muse_grid(m, n, k, threads, &tr, &tc);
  int64_t rows = muse_div_up(muse_div_up(m, tr), MUSE_MR) * MUSE_MR, cols = muse_div_up(muse_div_up(n, tc), MUSE_NR) * MUSE_NR;
  if (!per_element) threads = (int)(tr * tc);
  int failed = 0;
#ifdef _OPENMP
  if (!per_element && muse_split_k(batch, m, n, k, threads)) {
    float *parts[64];
    if (threads > 64) threads = 64;
    #pragma omp parallel num_threads(threads)
    {
      float pa[MUSE_MC * MUSE_KC] __attribute__((aligned(64)));
      int me = omp_get_thread_num(), nt = omp_get_num_threads();
      int64_t kper = muse_div_up(muse_div_up(k, nt), MUSE_KC) * MUSE_KC;
      float *pb = muse_grow(&muse_packed, pb_floats);
      float *mine = me == 0 ? c : muse_grow(&muse_partial, (size_t)(m * n));
      parts[me] = mine;
      if (!pb || !mine) {
        #pragma omp atomic write
        failed = 1;
      }
      #pragma omp barrier
      int64_t kb = me * kper, ke = kb + kper < k ? kb + kper : k;
      if (!failed) {
        if (kb < ke)
          muse_part(g, 0, 0, m, 0, n, kb, ke, mine, me == 0 ? ldc : n, 0, pb, pa);
        else
          memset(mine, 0, sizeof(float) * (size_t)(m * n));
      }
      #pragma omp barrier
      if (!failed) {
        /* Each thread sums its own rows of the partial results, then runs the epilogue
           over them. */
        int64_t r0 = m * me / nt, r1 = m * (me + 1) / nt;
        for (int q = 1; q < nt; q++)
          for (int64_t i = r0; i < r1; i++) {
            float *ci = c + i * ldc;
            const float *pi = parts[q] + i * n;
            for (int64_t j = 0; j < n; j++) ci[j] += pi[j];
          }
        if (g->epi && r1 > r0) muse_epilogue(g, 0, r0, r1 - r0, 0, n);
      }
    }
    return !failed;
  }
#endif
  #pragma omp parallel num_threads(threads) if(threads > 1)
  {
    float pa[MUSE_MC * MUSE_KC] __attribute__((aligned(64)));
    int me = 0;
#ifdef _OPENMP
    me = omp_get_thread_num();
#endif
    float *pb = muse_grow(&muse_packed, pb_floats);
    if (!pb) {
      #pragma omp atomic write
      failed = 1;
    } else if (per_element) {
      #pragma omp for schedule(static)
      for (int64_t t = 0; t < batch; t++) muse_slab(g, t, 0, m, 0, n, pb, pa);
    } else {
      int64_t i0 = (me / tc) * rows, j0 = (me % tc) * cols;
      int64_t mine_r = m - i0 < rows ? m - i0 : rows, mine_c = n - j0 < cols ? n - j0 : cols;
      if (mine_r > 0 && mine_c > 0)
        for (int64_t t = 0; t < batch; t++) muse_slab(g, t, i0, mine_r, j0, mine_c, pb, pa);
    }
  }
  /* Out of memory for packing: the caller runs its portable GEMM (and the epilogue) over
     the whole product again. */
  return !failed;
}
#else
int muse_sgemm(const struct muse_gemm *g) {
  (void)g;
  return 0;
}
#endif
