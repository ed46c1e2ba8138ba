/* muse's one hand-written GPU kernel: a product operand that cuBLAS cannot read in place
   (no unit stride, a broadcast axis, axes merged from several strides) gathered into a
   contiguous row-major matrix per batch element before the product:

     out[(t * rows + i) * cols + j] = base[offsets[t] + row_at[i] + col_at[j]]

   with the offsets in elements (muse_gather for 4-byte elements, muse_gather16 for bf16).
   The runtime's generic launch gives it the same parameters as a generated kernel: its
   buffers, then the sizes (batch, rows, cols), then a seed it does not use. Under MUSE_SIM it compiles for kernels/cuda_sim.h like generated code. */
#define MUSE_GATHER_SIZES 16 /* render::cuda::MAX_SIZES */
struct MuseGatherSizes { long long s[MUSE_GATHER_SIZES]; };

/* Elements are moved, never computed with: 4-byte words (f32, i32) or 2-byte ones (bf16). */
template <class T>
static __device__ __forceinline__ void muse_gather_words(T *__restrict__ out, const T *__restrict__ base,
    const long long *__restrict__ offsets, const long long *__restrict__ row_at, const long long *__restrict__ col_at,
    const MuseGatherSizes &sizes) {
  const long long rows = sizes.s[1], cols = sizes.s[2];
  const long long n = sizes.s[0] * rows * cols;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
    const long long j = e % cols, i = (e / cols) % rows, t = e / (cols * rows);
    out[e] = base[offsets[t] + row_at[i] + col_at[j]];
  }
}

extern "C" __global__ void __launch_bounds__(256) muse_gather(unsigned int *__restrict__ out,
    const unsigned int *__restrict__ base, const long long *__restrict__ offsets, const long long *__restrict__ row_at,
    const long long *__restrict__ col_at, const MuseGatherSizes sizes, const unsigned long long seed) {
  (void)seed;
  muse_gather_words(out, base, offsets, row_at, col_at, sizes);
}

extern "C" __global__ void __launch_bounds__(256) muse_gather16(unsigned short *__restrict__ out,
    const unsigned short *__restrict__ base, const long long *__restrict__ offsets, const long long *__restrict__ row_at,
    const long long *__restrict__ col_at, const MuseGatherSizes sizes, const unsigned long long seed) {
  (void)seed;
  muse_gather_words(out, base, offsets, row_at, col_at, sizes);
}

#ifdef MUSE_SIM
template <class T>
static void muse_gather_sim_as(void (*kernel)(T *, const T *, const long long *, const long long *, const long long *,
                                              const MuseGatherSizes, const unsigned long long),
                               const char *name, void **bufs, const long long *sz, unsigned long long seed,
                               long long grid, long long block) {
  MuseGatherSizes sizes;
  for (int i = 0; i < MUSE_GATHER_SIZES; i++) sizes.s[i] = sz[i];
  muse_sim::launch(name, grid, block, [&] {
    kernel((T *)bufs[0], (const T *)bufs[1], (const long long *)bufs[2], (const long long *)bufs[3],
           (const long long *)bufs[4], sizes, seed);
  });
}
extern "C" void muse_gather_sim(void **bufs, const long long *sz, unsigned long long seed, long long grid, long long block) {
  muse_gather_sim_as<unsigned int>(muse_gather, "muse_gather", bufs, sz, seed, grid, block);
}
extern "C" void muse_gather16_sim(void **bufs, const long long *sz, unsigned long long seed, long long grid, long long block) {
  muse_gather_sim_as<unsigned short>(muse_gather16, "muse_gather16", bufs, sz, seed, grid, block);
}
#endif
