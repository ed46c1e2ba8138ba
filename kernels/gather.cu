/* muse's one hand-written GPU kernel: a product operand that cuBLAS cannot read in place
   (no unit stride, a broadcast axis, axes merged from several strides) gathered into a
   contiguous row-major matrix per batch element before the product:

     out[(t * rows + i) * cols + j] = base[offsets[t] + row_at[i] + col_at[j]]

   with the offsets in elements. The runtime's generic launch gives it the same parameters
   as a generated kernel: its buffers, then the sizes (batch, rows, cols), then a seed it
   does not use. Under MUSE_SIM it compiles for kernels/cuda_sim.h like generated code. */
#define MUSE_GATHER_SIZES 16 /* render::cuda::MAX_SIZES */
struct MuseGatherSizes { long long s[MUSE_GATHER_SIZES]; };

extern "C" __global__ void __launch_bounds__(256) muse_gather(float *__restrict__ out, const float *__restrict__ base,
    const long long *__restrict__ offsets, const long long *__restrict__ row_at,
    const long long *__restrict__ col_at, const MuseGatherSizes sizes, const unsigned long long seed) {
  (void)seed;
  const long long rows = sizes.s[1], cols = sizes.s[2];
  const long long n = sizes.s[0] * rows * cols;
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += (long long)gridDim.x * blockDim.x) {
    const long long j = e % cols, i = (e / cols) % rows, t = e / (cols * rows);
    out[e] = base[offsets[t] + row_at[i] + col_at[j]];
  }
}

#ifdef MUSE_SIM
extern "C" void muse_gather_sim(void **bufs, const long long *sz, unsigned long long seed, long long grid, long long block) {
  MuseGatherSizes sizes;
  for (int i = 0; i < MUSE_GATHER_SIZES; i++) sizes.s[i] = sz[i];
  muse_sim::launch("muse_gather", grid, block, [&] {
    muse_gather((float *)bufs[0], (const float *)bufs[1], (const long long *)bufs[2], (const long long *)bufs[3],
                (const long long *)bufs[4], sizes, seed);
  });
}
#endif
