/* opt_adamw: pointwise */
/*   b0: param */
/*   b1: adamw.m */
/*   b2: adamw.v */
/*   b3: grad */
/*   b4: hyper */
extern "C" __global__ void __launch_bounds__(256) opt_adamw(float *__restrict__ b0, float *__restrict__ b1, float *__restrict__ b2, const float *__restrict__ b3, const float *__restrict__ b4, const MuseSizes sizes, const unsigned long long seed) {
  (void)seed;
  const long long t5 = 0LL;
  const float t6 = b4[t5];
  const long long t7 = 1LL;
  const float t8 = b4[t7];
  const long long t9 = 2LL;
  const float t10 = b4[t9];
  const long long t11 = 3LL;
  const float t12 = b4[t11];
  const long long t13 = 4LL;
  const float t14 = b4[t13];
  const long long t15 = 5LL;
  const float t16 = b4[t15];
  const long long t17 = 6LL;
  const float t18 = b4[t17];
  const long long t19 = 7LL;
  const float t20 = b4[t19];
  const long long t36 = sizes.s[0];
  for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < t36; e += (long long)gridDim.x * blockDim.x) {
    const long long lane = e;
    const long long t0 = lane;
    const float t1 = b0[t0];
    const float t2 = b1[t0];
    const float t3 = b2[t0];
    const float t4 = b3[t0];
    const float t21 = t4 * t6;
    const float t22 = t1 * t8;
    const float t23 = t21 - t2;
    const float t24 = t10 * t23;
    const float t25 = t2 + t24;
    const float t26 = t3 * t12;
    const float t27 = t14 * t21;
    const float t28 = t27 * t21;
    const float t29 = t26 + t28;
    const float t30 = sqrtf(t29);
    const float t31 = t30 / t18;
    const float t32 = t31 + t20;
    const float t33 = t16 * t25;
    const float t34 = t33 / t32;
    const float t35 = t22 - t34;
    b0[e] = t35;
    b1[e] = t25;
    b2[e] = t29;
  }
}
#ifdef MUSE_SIM
extern "C" void opt_adamw_sim(void **bufs, const long long *sz, unsigned long long seed, long long grid, long long block) {
  MuseSizes sizes;
  for (int i = 0; i < MUSE_MAX_SIZES; i++) sizes.s[i] = sz[i];
  muse_sim::launch("opt_adamw", grid, block, [&] { opt_adamw((float *)bufs[0], (float *)bufs[1], (float *)bufs[2], (const float *)bufs[3], (const float *)bufs[4], sizes, seed); });
}
#endif
