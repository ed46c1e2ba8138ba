/* The CUDA execution model on a CPU, so that muse's generated CUDA C runs, and is checked,
   on machines without a GPU (the `cuda-sim` device; see docs/cuda.md).

   A launch runs its blocks one after another, in a random order. The threads of a block are
   fibers (ucontext) on the calling thread: each runs until it reaches a barrier, and the
   scheduler then resumes a runnable thread, chosen at random or (in half of the blocks) by
   random priorities that let one warp run far ahead of the others, so that a schedule
   differs from run to run and a missing barrier shows as a wrong answer instead of hiding
   behind a fixed order. __syncthreads waits for every thread of the block; a warp shuffle is a
   barrier of the 32 threads of its warp (all must take part: the full mask). Shared memory
   is one arena per block, filled with NaN bytes at the block's start, so reading what no
   thread wrote shows. A thread that exits while others wait at a barrier, or a barrier some
   threads never reach, is a deadlock: reported with the kernel's name, then abort.

   MUSE_SIM_SEED=<n> replays one schedule; the seed of a process is printed to stderr when
   MUSE_SIM_VERBOSE is set. Nothing here is thread-safe across OS threads except through
   thread_local state: each OS thread runs its own launches. */
#ifndef MUSE_CUDA_SIM_H
#define MUSE_CUDA_SIM_H

#include <ucontext.h>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define MUSE_SHARED(T, name, n) T *name = muse_sim::shared<T>(n)

struct muse_dim3 {
  unsigned x, y, z;
};

namespace muse_sim {

enum State { RUNNABLE, WAIT_BLOCK, WAIT_WARP, DONE };

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  State state;
  unsigned tid;
  size_t shared_cursor;
};

constexpr size_t STACK = 64 * 1024;

struct Block {
  const char *kernel = "";
  unsigned dim = 0, idx = 0, grid = 0;
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  unsigned current = 0;
  unsigned block_arrived = 0;
  std::vector<unsigned> warp_arrived;
  std::vector<unsigned long long> warp_slots;
  std::vector<std::unique_ptr<unsigned char[]>> shared;
  const std::function<void()> *body = nullptr;
  /* The schedule: uniformly random picks, or (half of the blocks) each thread's priority,
     whole warps ranked above others and re-ranked at every __syncthreads, so that one warp
     runs far ahead of another (what exposes a shared-memory reuse without a barrier). */
  bool by_priority = false;
  std::vector<unsigned> priority;
};

inline thread_local Block *current_block = nullptr;
inline thread_local unsigned long long rng_state = 0;

inline unsigned long long next_random() {
  if (rng_state == 0) {
    const char *s = std::getenv("MUSE_SIM_SEED");
    unsigned long long seed;
    if (s && *s) {
      seed = std::strtoull(s, nullptr, 10);
    } else {
      seed = (unsigned long long)std::time(nullptr) ^ ((unsigned long long)(uintptr_t)&seed << 16);
    }
    if (std::getenv("MUSE_SIM_VERBOSE")) std::fprintf(stderr, "cuda-sim: schedule seed %llu\n", seed);
    rng_state = seed * 2 + 1;
  }
  /* splitmix64 */
  unsigned long long z = (rng_state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

[[noreturn]] inline void fail(const char *what) {
  Block &b = *current_block;
  std::fprintf(stderr, "cuda-sim: kernel %s, block %u of %u, %u threads: %s\n", b.kernel, b.idx, b.grid, b.dim, what);
  std::abort();
}

inline Fiber &me() {
  return current_block->fibers[current_block->current];
}

/* Back to the scheduler until this thread is runnable again. */
inline void yield() {
  Fiber &f = me();
  swapcontext(&f.ctx, &current_block->scheduler);
}

/* Random priorities: warps in a random order, threads within each warp too. */
inline void rank_threads(Block &b) {
  unsigned warps = b.dim / 32;
  std::vector<unsigned> rank(warps), lane(32);
  for (unsigned w = 0; w < warps; w++) rank[w] = w;
  for (unsigned w = warps; w > 1; w--) std::swap(rank[w - 1], rank[next_random() % w]);
  for (unsigned w = 0; w < warps; w++) {
    for (unsigned l = 0; l < 32; l++) lane[l] = l;
    for (unsigned l = 32; l > 1; l--) std::swap(lane[l - 1], lane[next_random() % l]);
    for (unsigned l = 0; l < 32; l++) b.priority[w * 32 + l] = rank[w] * 32 + lane[l];
  }
}

inline void sync_block() {
  Block &b = *current_block;
  me().state = WAIT_BLOCK;
  if (++b.block_arrived == b.dim) {
    b.block_arrived = 0;
    for (auto &f : b.fibers)
      if (f.state == WAIT_BLOCK) f.state = RUNNABLE;
    if (b.by_priority) rank_threads(b);
  }
  yield();
}

inline void sync_warp() {
  Block &b = *current_block;
  Fiber &f = me();
  unsigned w = f.tid / 32;
  f.state = WAIT_WARP;
  if (++b.warp_arrived[w] == 32) {
    b.warp_arrived[w] = 0;
    for (unsigned t = w * 32; t < w * 32 + 32; t++)
      if (b.fibers[t].state == WAIT_WARP) b.fibers[t].state = RUNNABLE;
  }
  yield();
}

template <class T>
T shuffle_xor(T v, int mask) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 64 bits");
  Block &b = *current_block;
  unsigned tid = me().tid;
  if (mask < 0 || mask > 31) fail("a shuffle's lane mask is outside 0..31");
  unsigned long long bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  b.warp_slots[tid] = bits;
  sync_warp();
  unsigned src = (tid & ~31u) | ((tid & 31u) ^ (unsigned)mask);
  bits = b.warp_slots[src];
  sync_warp();
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

template <class T>
T *shared(size_t n) {
  Block &b = *current_block;
  Fiber &f = me();
  if (f.shared_cursor == b.shared.size()) {
    std::unique_ptr<unsigned char[]> p(new unsigned char[n * sizeof(T) + 1]);
    std::memset(p.get(), 0xff, n * sizeof(T) + 1);
    b.shared.push_back(std::move(p));
  }
  return reinterpret_cast<T *>(b.shared[f.shared_cursor++].get());
}

inline void entry() {
  Block &b = *current_block;
  (*b.body)();
  me().state = DONE;
  /* uc_link returns to the scheduler. */
}

inline void run_block(Block &b) {
  b.block_arrived = 0;
  std::fill(b.warp_arrived.begin(), b.warp_arrived.end(), 0u);
  b.shared.clear();
  for (unsigned t = 0; t < b.dim; t++) {
    Fiber &f = b.fibers[t];
    f.tid = t;
    f.state = RUNNABLE;
    f.shared_cursor = 0;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = STACK;
    f.ctx.uc_link = &b.scheduler;
    makecontext(&f.ctx, entry, 0);
  }
  b.by_priority = next_random() % 2 == 0;
  b.priority.assign(b.dim, 0u);
  rank_threads(b);
  std::vector<unsigned> runnable;
  runnable.reserve(b.dim);
  for (;;) {
    runnable.clear();
    bool all_done = true;
    for (unsigned t = 0; t < b.dim; t++) {
      if (b.fibers[t].state == RUNNABLE) runnable.push_back(t);
      if (b.fibers[t].state != DONE) all_done = false;
    }
    if (all_done) return;
    if (runnable.empty()) {
      bool warp = false;
      for (auto &f : b.fibers) warp |= f.state == WAIT_WARP;
      fail(warp ? "deadlock: a warp shuffle that some threads of the warp never reach (divergent or exited)"
                : "deadlock: __syncthreads that some threads of the block never reach (divergent or exited)");
    }
    if (b.by_priority) {
      b.current = runnable[0];
      for (unsigned t : runnable)
        if (b.priority[t] > b.priority[b.current]) b.current = t;
    } else {
      b.current = runnable[next_random() % runnable.size()];
    }
    swapcontext(&b.scheduler, &b.fibers[b.current].ctx);
  }
}

inline thread_local Block *block_storage = nullptr;

/* Runs `body` as kernel `name` over `grid` blocks of `block` threads. */
inline void launch(const char *name, long long grid, long long block, const std::function<void()> &body) {
  if (!block_storage) block_storage = new Block();
  Block &b = *block_storage;
  b.kernel = name;
  current_block = &b;
  if (block <= 0 || block % 32 != 0 || block > 1024 || grid <= 0) fail("a launch needs 1.. blocks of a multiple of 32 threads up to 1024");
  if (b.fibers.size() < (size_t)block) {
    b.fibers.resize(block);
    for (auto &f : b.fibers)
      if (!f.stack) f.stack.reset(new char[STACK]);
  }
  b.dim = (unsigned)block;
  b.grid = (unsigned)grid;
  b.warp_arrived.assign(block / 32, 0u);
  b.warp_slots.assign(block, 0ull);
  b.body = &body;
  std::vector<unsigned> order(grid);
  for (unsigned g = 0; g < grid; g++) order[g] = g;
  for (unsigned g = grid; g > 1; g--) std::swap(order[g - 1], order[next_random() % g]);
  for (unsigned g : order) {
    b.idx = g;
    run_block(b);
  }
  current_block = nullptr;
}

inline muse_dim3 thread_idx() { return {me().tid, 0, 0}; }
inline muse_dim3 block_idx() { return {current_block->idx, 0, 0}; }
inline muse_dim3 block_dim() { return {current_block->dim, 1, 1}; }
inline muse_dim3 grid_dim() { return {current_block->grid, 1, 1}; }

}  // namespace muse_sim

#define threadIdx (muse_sim::thread_idx())
#define blockIdx (muse_sim::block_idx())
#define blockDim (muse_sim::block_dim())
#define gridDim (muse_sim::grid_dim())

inline void __syncthreads() { muse_sim::sync_block(); }
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  if (mask != 0xffffffffu) muse_sim::fail("only full-warp shuffles are simulated");
  return muse_sim::shuffle_xor(v, lane_mask);
}
/* One OS thread runs a block at a time: an atomic is a plain read-modify-write. */
inline float atomicAdd(float *p, float v) {
  float old = *p;
  *p = old + v;
  return old;
}
/* CUDA's float4: four floats, 16-byte aligned (what vector loads and stores move). */
struct alignas(16) float4 {
  float x, y, z, w;
};
/* bfloat16 as cuda_bf16.h defines it: the top half of an f32; conversion from f32 rounds
   to nearest, ties to even, and keeps NaN a NaN. */
struct __nv_bfloat16 {
  unsigned short x;
};
inline float __bfloat162float(__nv_bfloat16 h) {
  unsigned int u = (unsigned int)h.x << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
  unsigned int u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(unsigned short)((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{(unsigned short)(u >> 16)};
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16 *p, __nv_bfloat16 v) {
  __nv_bfloat16 old = *p;
  *p = __float2bfloat16(__bfloat162float(old) + __bfloat162float(v));
  return old;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

#endif
