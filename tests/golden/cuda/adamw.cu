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
  const bool aligned = (((unsigned long long)b0 | (unsigned long long)b1 | (unsigned long long)b2 | (unsigned long long)b3) & 15ull) == 0;
  for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; 4 * q < t36; q += (long long)gridDim.x * blockDim.x) {
    if (aligned && 4 * q + 4 <= t36) {
      const float4 vb0 = reinterpret_cast<const float4 *>(b0)[q];
      const float4 vb1 = reinterpret_cast<const float4 *>(b1)[q];
      const float4 vb2 = reinterpret_cast<const float4 *>(b2)[q];
      const float4 vb3 = reinterpret_cast<const float4 *>(b3)[q];
      float4 vo0;
      float4 vo1;
      float4 vo2;
      {
        const long long e = 4 * q + 0;
        const long long lane = e;
        const long long t0 = lane;
        const float t1 = vb0.x;
        const float t2 = vb1.x;
        const float t3 = vb2.x;
        const float t4 = vb3.x;
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
        vo0.x = t35;
        vo1.x = t25;
        vo2.x = t29;
      }
      {
        const long long e = 4 * q + 1;
        const long long lane = e;
        const long long t0 = lane;
        const float t1 = vb0.y;
        const float t2 = vb1.y;
        const float t3 = vb2.y;
        const float t4 = vb3.y;
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
        vo0.y = t35;
        vo1.y = t25;
        vo2.y = t29;
      }
      {
        const long long e = 4 * q + 2;
        const long long lane = e;
        const long long t0 = lane;
        const float t1 = vb0.z;
        const float t2 = vb1.z;
        const float t3 = vb2.z;
        const float t4 = vb3.z;
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
        vo0.z = t35;
        vo1.z = t25;
        vo2.z = t29;
      }
      {
        const long long e = 4 * q + 3;
        const long long lane = e;
        const long long t0 = lane;
        const float t1 = vb0.w;
        const float t2 = vb1.w;
        const float t3 = vb2.w;
        const float t4 = vb3.w;
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
        vo0.w = t35;
        vo1.w = t25;
        vo2.w = t29;
      }
      reinterpret_cast<float4 *>(b0)[q] = vo0;
      reinterpret_cast<float4 *>(b1)[q] = vo1;
      reinterpret_cast<float4 *>(b2)[q] = vo2;
    } else {
      for (long long e = 4 * q; e < 4 * q + 4 && e < t36; e++) {
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
  }
}
#ifdef MUSE_SIM
extern "C" void opt_adamw_sim(void **bufs, const long long *sz, unsigned long long seed, long long grid, long long block) {
  MuseSizes sizes;
  for (int i = 0; i < MUSE_MAX_SIZES; i++) sizes.s[i] = sz[i];
  muse_sim::launch("opt_adamw", grid, block, [&] { opt_adamw((float *)bufs[0], (float *)bufs[1], (float *)bufs[2], (const float *)bufs[3], (const float *)bufs[4], sizes, seed); });
}
#endif
