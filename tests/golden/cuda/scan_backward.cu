/* k51: scan */
/*   b0: %410 scan @layers.0.mixer.backward.selective_scan */
/*   b1: %419 add @layers.0.mixer.backward */
/*   b2: %403 exp @layers.0.mixer.backward.selective_scan */
/*   b3: %404 mul @layers.0.mixer.backward.selective_scan */
/*   b4: %373 matmul @layers.0.mixer.backward.x_proj */
/*   b5: %369 mul @layers.0.mixer.backward.silu */
/*   b6: %395 param @layers.0.mixer.backward */
extern "C" __global__ void __launch_bounds__(256) k51(float *__restrict__ b0, float *__restrict__ b1, const float *__restrict__ b2, const float *__restrict__ b3, const float *__restrict__ b4, const float *__restrict__ b5, const float *__restrict__ b6, const MuseSizes sizes, const unsigned long long seed) {
  (void)seed;
  const long long t0 = 1LL;
  const long long t1 = sizes.s[0];
  const long long t2 = 16LL;
  const long long t3 = t1 * t2;
  const long long t8 = 9LL;
  const long long t10 = 2LL;
  const long long t28 = 5LL;
  const long long t38 = 3LL;
  MUSE_SHARED(float, scan_p, 256);
  MUSE_SHARED(float, scan_h, 256);
  const int sidx = threadIdx.x % 2, chunk = threadIdx.x / 2, nchunks = blockDim.x / 2;
  for (long long lane = blockIdx.x; lane < t3; lane += gridDim.x) {
    __syncthreads();
    const long long t4 = lane;
    const long long t5 = t4 % t2;
    const long long t6 = t4 / t2;
    const long long t13 = t6 * t8;
    const float t47 = b6[t5];
    const long long clen = (t8 + nchunks - 1) / nchunks;
    const long long it0 = chunk * clen, it1 = it0 + clen < t8 ? it0 + clen : t8;
    float h[1];
    {
    float cp[1], ch[1];
    for (int j = 0; j < 1; j++) { cp[j] = 1.0f; ch[j] = 0.0f; }
    for (long long it = it0; it < it1; it++) {
      const long long step = t8 - 1 - it;
      const long long t9 = step;
      const long long t14 = t13 + t9;
      const long long t15 = t14 * t2;
      const long long t16 = t15 + t5;
      const long long t17 = t16 * t10;
      const float t22 = b3[t16];
      const long long t29 = t14 * t28;
      #pragma unroll
      for (int j = 0; j < 1; j++) {
        const long long st = sidx + 2 * j;
        if (st < 2) {
          const long long t11 = st;
          const long long t18 = t17 + t11;
          const float t19 = b2[t18];
          const long long t31 = t0 + t11;
          const long long t34 = t29 + t31;
          const float t35 = b4[t34];
          const float t36 = t22 * t35;
          cp[j] *= t19;
          ch[j] = t19 * ch[j] + t36;
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
      const long long step = t8 - 1 - itc;
      const long long t9 = step;
      const long long t14 = t13 + t9;
      const long long t15 = t14 * t2;
      const long long t16 = t15 + t5;
      const long long t17 = t16 * t10;
      const float t22 = b3[t16];
      const long long t29 = t14 * t28;
      const float t46 = b5[t16];
      const float t48 = t46 * t47;
      float red0 = 0.0f;
      #pragma unroll
      for (int j = 0; j < 1; j++) {
        const long long st = sidx + 2 * j;
        if (st < 2) {
          const long long t11 = st;
          const long long t18 = t17 + t11;
          const float t19 = b2[t18];
          const long long t31 = t0 + t11;
          const long long t34 = t29 + t31;
          const float t35 = b4[t34];
          const float t36 = t22 * t35;
          if (active) h[j] = t19 * h[j] + t36;
          const float t37 = h[j];
          const long long t41 = t38 + t11;
          const long long t42 = t29 + t41;
          const float t43 = b4[t42];
          const float t44 = t37 * t43;
          if (active) {
            b0[t18] = t37;
            red0 += t44;
          }
        }
      }
      const float r0 = (float)muse_group_reduce(red0, MuseSum(), 2);
      const float t45 = r0;
      const float t49 = t45 + t48;
      if (active && sidx == 0) {
        b1[t16] = t49;
      }
    }
  }
}
#ifdef MUSE_SIM
extern "C" void k51_sim(void **bufs, const long long *sz, unsigned long long seed, long long grid, long long block) {
  MuseSizes sizes;
  for (int i = 0; i < MUSE_MAX_SIZES; i++) sizes.s[i] = sz[i];
  muse_sim::launch("k51", grid, block, [&] { k51((float *)bufs[0], (float *)bufs[1], (const float *)bufs[2], (const float *)bufs[3], (const float *)bufs[4], (const float *)bufs[5], (const float *)bufs[6], sizes, seed); });
}
#endif
