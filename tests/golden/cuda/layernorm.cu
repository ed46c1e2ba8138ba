/* k1: row (reductions and their epilogue) */
/*   b0: %32 add @text_encoder.layers.0.norm1 */
/*   b1: %6 gather @text_encoder.tok_emb */
/*   b2: %7 param @text_encoder */
/*   b3: %25 param @text_encoder.layers.0.norm1 */
/*   b4: %26 param @text_encoder.layers.0.norm1 */
extern "C" __global__ void __launch_bounds__(256) k1(float *__restrict__ b0, const float *__restrict__ b1, const float *__restrict__ b2, const float *__restrict__ b3, const float *__restrict__ b4, const MuseSizes sizes, const unsigned long long seed) {
  (void)seed;
  const long long t1 = sizes.s[0];
  const long long t2 = 3LL;
  const long long t3 = t1 * t2;
  const long long t9 = 8LL;
  const float t21 = 8e0f;
  const float t27 = 1e-5f;
  MUSE_SHARED(float, red_f, 32);
  for (long long lane = blockIdx.x; lane < t3; lane += gridDim.x) {
    const long long t4 = lane;
    const long long t6 = t4 % t2;
    const long long t12 = t4 * t9;
    const long long t15 = t6 * t9;
    float p0 = 0.0f;
    for (long long step = threadIdx.x; step < t9; step += blockDim.x) {
      const long long t10 = step;
      const long long t13 = t12 + t10;
      const float t14 = b1[t13];
      const long long t16 = t15 + t10;
      const float t18 = b2[t16];
      const float t19 = t14 + t18;
      p0 += t19;
    }
    p0 = muse_block_reduce(p0, MuseSum(), red_f);
    const float r0 = (float)p0;
    const float t20 = r0;
    const float t22 = t20 / t21;
    float p1 = 0.0f;
    for (long long step = threadIdx.x; step < t9; step += blockDim.x) {
      const long long t10 = step;
      const long long t13 = t12 + t10;
      const float t14 = b1[t13];
      const long long t16 = t15 + t10;
      const float t18 = b2[t16];
      const float t19 = t14 + t18;
      const float t23 = t19 - t22;
      const float t24 = t23 * t23;
      p1 += t24;
    }
    p1 = muse_block_reduce(p1, MuseSum(), red_f);
    const float r1 = (float)p1;
    const float t25 = r1;
    const float t26 = t25 / t21;
    const float t28 = t26 + t27;
    const float t29 = 1e0f / sqrtf(t28);
    for (long long step = threadIdx.x; step < t9; step += blockDim.x) {
      const long long t10 = step;
      const long long t13 = t12 + t10;
      const float t14 = b1[t13];
      const long long t16 = t15 + t10;
      const float t18 = b2[t16];
      const float t19 = t14 + t18;
      const float t23 = t19 - t22;
      const float t30 = t23 * t29;
      const float t31 = b3[t10];
      const float t32 = t30 * t31;
      const float t33 = b4[t10];
      const float t34 = t32 + t33;
      b0[t13] = t34;
    }
  }
}
#ifdef MUSE_SIM
extern "C" void k1_sim(void **bufs, const long long *sz, unsigned long long seed, long long grid, long long block) {
  MuseSizes sizes;
  for (int i = 0; i < MUSE_MAX_SIZES; i++) sizes.s[i] = sz[i];
  muse_sim::launch("k1", grid, block, [&] { k1((float *)bufs[0], (const float *)bufs[1], (const float *)bufs[2], (const float *)bufs[3], (const float *)bufs[4], sizes, seed); });
}
#endif
