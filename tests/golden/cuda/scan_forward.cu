/* k32: scan */
/*   b0: %428 mul @layers.0.mixer */
/*   b1: %288 matmul @layers.0.mixer.dt_proj */
/*   b2: %285 param @layers.0.mixer.dt_proj */
/*   b3: %300 param @layers.0.mixer */
/*   b4: %275 mul @layers.0.mixer.silu */
/*   b5: %279 matmul @layers.0.mixer.x_proj */
/*   b6: %301 param @layers.0.mixer */
/*   b7: %419 add @layers.0.mixer.backward */
/*   b8: %229 add @layers.0.mixer */
extern "C" __global__ void __launch_bounds__(256) k32(float *__restrict__ b0, const float *__restrict__ b1, const float *__restrict__ b2, const float *__restrict__ b3, const float *__restrict__ b4, const float *__restrict__ b5, const float *__restrict__ b6, const float *__restrict__ b7, const float *__restrict__ b8, const MuseSizes sizes, const unsigned long long seed) {
  (void)seed;
  const long long t0 = 1LL;
  const long long t1 = sizes.s[0];
  const long long t2 = 16LL;
  const long long t3 = t1 * t2;
  const long long t8 = 9LL;
  const long long t10 = 2LL;
  const float t24 = 2e1f;
  const long long t32 = 32LL;
  const long long t45 = 5LL;
  const long long t54 = 3LL;
  const float t71 = 1e0f;
  MUSE_SHARED(float, scan_p, 256);
  MUSE_SHARED(float, scan_h, 256);
  const int sidx = threadIdx.x % 2, chunk = threadIdx.x / 2, nchunks = blockDim.x / 2;
  for (long long lane = blockIdx.x; lane < t3; lane += gridDim.x) {
    __syncthreads();
    const long long t4 = lane;
    const long long t5 = t4 % t2;
    const long long t6 = t4 / t2;
    const long long t13 = t6 * t8;
    const float t22 = b2[t5];
    const long long t30 = t5 * t10;
    const float t62 = b6[t5];
    const long long t67 = t5 + t2;
    const long long clen = (t8 + nchunks - 1) / nchunks;
    const long long it0 = chunk * clen, it1 = it0 + clen < t8 ? it0 + clen : t8;
    float hv33[1];
    float hv34[1];
    float hv35[1];
      #pragma unroll
      for (int j = 0; j < 1; j++) {
        const long long st = sidx + 2 * j;
        if (st < 2) {
          const long long t11 = st;
          const long long t31 = t30 + t11;
          const float t33 = b3[t31];
          const float t34 = expf(t33);
          const float t35 = -t34;
          hv33[j] = t33;
          hv34[j] = t34;
          hv35[j] = t35;
        }
      }
    float h[1];
    {
    float cp[1], ch[1];
    for (int j = 0; j < 1; j++) { cp[j] = 1.0f; ch[j] = 0.0f; }
    for (long long it = it0; it < it1; it++) {
      const long long step = it;
      const long long t9 = step;
      const long long t14 = t13 + t9;
      const long long t15 = t14 * t2;
      const long long t16 = t15 + t5;
      const float t21 = b1[t16];
      const float t23 = t21 + t22;
      const int t25 = t23 > t24;
      const float t26 = muse_fmin(t23, t24);
      const float t27 = expf(t26);
      const float t28 = log1pf(t27);
      const float t29 = t25 ? t23 : t28;
      const float t38 = b4[t16];
      const float t39 = t29 * t38;
      const long long t46 = t14 * t45;
      #pragma unroll
      for (int j = 0; j < 1; j++) {
        const long long st = sidx + 2 * j;
        if (st < 2) {
          const float t33 = hv33[j];
          const float t34 = hv34[j];
          const float t35 = hv35[j];
          const long long t11 = st;
          const long long t31 = t30 + t11;
          const float t36 = t29 * t35;
          const float t37 = expf(t36);
          const long long t48 = t0 + t11;
          const long long t50 = t46 + t48;
          const float t51 = b5[t50];
          const float t52 = t39 * t51;
          cp[j] *= t37;
          ch[j] = t37 * ch[j] + t52;
        }
      }
    }
    for (int j = 0; j < 1; j++) { scan_p[chunk * 2 + j * 2 + sidx] = cp[j]; scan_h[chunk * 2 + j * 2 + sidx] = ch[j]; }
    }
    __syncthreads();
    if (chunk == 0) {
      for (int j = 0; j < 1; j++) {
        float carry = 0.0f;
        for (int c = 0; c < nchunks; c++) {
          const int at = c * 2 + j * 2 + sidx;
          const float p = scan_p[at], hh = scan_h[at];
          scan_h[at] = carry;
          carry = p * carry + hh;
        }
      }
    }
    __syncthreads();
    for (int j = 0; j < 1; j++) h[j] = scan_h[chunk * 2 + j * 2 + sidx];
    for (long long q = 0; q < clen; q++) {
      const long long it = it0 + q;
      const bool active = it < it1;
      const long long itc = it < t8 ? it : t8 - 1;
      const long long step = itc;
      const long long t9 = step;
      const long long t14 = t13 + t9;
      const long long t15 = t14 * t2;
      const long long t16 = t15 + t5;
      const float t21 = b1[t16];
      const float t23 = t21 + t22;
      const int t25 = t23 > t24;
      const float t26 = muse_fmin(t23, t24);
      const float t27 = expf(t26);
      const float t28 = log1pf(t27);
      const float t29 = t25 ? t23 : t28;
      const float t38 = b4[t16];
      const float t39 = t29 * t38;
      const long long t46 = t14 * t45;
      const float t63 = t38 * t62;
      const float t65 = b7[t16];
      const long long t68 = t14 * t32;
      const long long t69 = t68 + t67;
      const float t70 = b8[t69];
      const float t72 = -t70;
      const float t73 = expf(t72);
      const float t74 = t71 + t73;
      const float t75 = t71 / t74;
      const float t76 = t70 * t75;
      float red0 = 0.0f;
      #pragma unroll
      for (int j = 0; j < 1; j++) {
        const long long st = sidx + 2 * j;
        if (st < 2) {
          const float t33 = hv33[j];
          const float t34 = hv34[j];
          const float t35 = hv35[j];
          const long long t11 = st;
          const long long t31 = t30 + t11;
          const float t36 = t29 * t35;
          const float t37 = expf(t36);
          const long long t48 = t0 + t11;
          const long long t50 = t46 + t48;
          const float t51 = b5[t50];
          const float t52 = t39 * t51;
          if (active) h[j] = t37 * h[j] + t52;
          const float t53 = h[j];
          const long long t57 = t54 + t11;
          const long long t58 = t46 + t57;
          const float t59 = b5[t58];
          const float t60 = t53 * t59;
          if (active) {
            red0 += t60;
          }
        }
      }
      const float r0 = (float)muse_group_reduce(red0, MuseSum(), 2);
      const float t61 = r0;
      const float t64 = t61 + t63;
      const float t66 = t64 + t65;
      const float t77 = t66 * t76;
      if (active && sidx == 0) {
        b0[t16] = t77;
      }
    }
  }
}
#ifdef MUSE_SIM
extern "C" void k32_sim(void **bufs, const long long *sz, unsigned long long seed, long long grid, long long block) {
  MuseSizes sizes;
  for (int i = 0; i < MUSE_MAX_SIZES; i++) sizes.s[i] = sz[i];
  muse_sim::launch("k32", grid, block, [&] { k32((float *)bufs[0], (const float *)bufs[1], (const float *)bufs[2], (const float *)bufs[3], (const float *)bufs[4], (const float *)bufs[5], (const float *)bufs[6], (const float *)bufs[7], (const float *)bufs[8], sizes, seed); });
}
#endif
