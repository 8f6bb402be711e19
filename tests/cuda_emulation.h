// A small CUDA emulation that runs the attention kernels' own source (csrc/cuda/attention_*.cu)
// on the host, force-included (-include) before them; tests/cuda_attention_emulation.cpp drives
// it. Every CUDA thread of a block is a fiber (ucontext) on the calling thread; __syncthreads is a
// barrier of the block's fibers, __syncwarp one of the warp's, each waiting fiber handing over to
// the next in an order shuffled per block (so that a missing barrier shows); warp-collective operations (shuffles, ldmatrix, mma.sync) exchange values through the
// warp's slots between two warp barriers and compute each lane's result as the PTX ISA defines it.
// cp.async copies at once (it completes no later than its wait).
// Blocks run one after another; dynamic shared memory is filled with 0xff bytes (NaN) first, so a
// kernel that reads what it never staged shows NaN. What this cannot show: timing, occupancy,
// bank conflicts, and the hardware's own rounding of tanh.approx, exp2 and mma accumulation.
#pragma once

#define FUSED_RNN_CUDA_EMULATION 1
#define __host__
#define __device__
#define __global__
#define __shared__
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <array>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <algorithm>
#include <functional>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

// The running CUDA thread's indices (one fiber's at a time: the block's threads are fibers).
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

namespace cuda_emulation {

/// A barrier of `size` fibers: each arriving fiber yields until the last one arrives.
struct Barrier {
  explicit Barrier(int size) : size(size) {}
  void arrive_and_wait();
  int size;
  int arrived = 0;
  int64_t generation = 0;
};

struct Warp {
  Warp() : barrier(32) {}
  Barrier barrier;
  alignas(16) unsigned char slots[32][64];
};

/// A block's threads as fibers on the calling thread, switched round-robin at barriers.
struct Block {
  explicit Block(int threads) : barrier(threads), warps(threads / 32), fibers(threads) {
    for (auto& warp : warps) warp = std::make_unique<Warp>();
  }
  Barrier barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned char> shared;
  std::vector<ucontext_t> fibers;
  ucontext_t scheduler;
  int running = 0;
  std::vector<bool> finished;
  std::vector<int> order;  // the order fibers run in between barriers: shuffled per block
  std::vector<int> place;  // place[t]: position of fiber t in `order`
};

inline Block* current_block = nullptr;

inline int lane() { return static_cast<int>(threadIdx.x % 32); }

/// Switches to the next unfinished fiber of the block in its order (back to this one eventually).
inline void yield() {
  Block& block = *current_block;
  const int self = block.running, count = static_cast<int>(block.fibers.size());
  int place = block.place[self], next = self;
  do {
    place = (place + 1) % count;
    next = block.order[place];
  } while (block.finished[next] && next != self);
  if (next == self) return;
  block.running = next;
  threadIdx.x = static_cast<unsigned>(next);
  swapcontext(&block.fibers[self], &block.fibers[next]);
  threadIdx.x = static_cast<unsigned>(self);
}

inline void Barrier::arrive_and_wait() {
  const int64_t mine = generation;
  if (++arrived == size) {
    arrived = 0;
    ++generation;
    return;
  }
  while (generation == mine) yield();
}

inline Warp& warp() { return *current_block->warps[threadIdx.x / 32]; }

/// Publishes `value` in the lane's slot, then returns what `read` makes of the slots.
template <typename T, typename Read>
auto exchange(const T& value, const Read& read) {
  static_assert(sizeof(T) <= sizeof(Warp::slots[0]));
  Warp& w = warp();
  std::memcpy(w.slots[lane()], &value, sizeof(T));
  w.barrier.arrive_and_wait();
  auto result = read(w.slots);
  w.barrier.arrive_and_wait();
  return result;
}

template <typename T>
T slot(const unsigned char (&slots)[32][64], int source) {
  T value;
  std::memcpy(&value, slots[source], sizeof(T));
  return value;
}

inline float b16_to_float(uint16_t bits, bool bfloat) {
  return bfloat ? __bfloat162float(__ushort_as_bfloat16(bits)) : __half2float(__ushort_as_half(bits));
}

}  // namespace cuda_emulation

inline void __syncthreads() { cuda_emulation::current_block->barrier.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { cuda_emulation::warp().barrier.arrive_and_wait(); }

template <typename T>
T __shfl_sync(unsigned, T value, int source, int = 32) {
  return cuda_emulation::exchange(value, [&](const auto& slots) { return cuda_emulation::slot<T>(slots, source); });
}

template <typename T>
T __shfl_xor_sync(unsigned, T value, int mask, int = 32) {
  const int source = cuda_emulation::lane() ^ mask;
  return cuda_emulation::exchange(value, [&](const auto& slots) { return cuda_emulation::slot<T>(slots, source); });
}

inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }

template <typename T>
T min(T a, T b) {
  return b < a ? b : a;
}

// The dynamic shared memory of the running block.
#define FUSED_RNN_DYNAMIC_SHARED_MEMORY(name) unsigned char* name = cuda_emulation::current_block->shared.data()

namespace fused_rnn::cuda::attention {

inline void copy_async_16(void* shared, const void* global, int valid_bytes) {
  std::memset(shared, 0, 16);
  if (valid_bytes > 0) std::memcpy(shared, global, valid_bytes);
}

inline void copy_async_commit() {}

template <int kPending>
inline void copy_async_wait() {}

/// ldmatrix.x4: lanes 8 m .. 8 m + 7 give the rows of matrix m; lane l receives in register m
/// row l / 4, elements 2 (l % 4) and 2 (l % 4) + 1 of matrix m (of its transpose with .trans).
inline void ldmatrix_x4_impl(uint32_t (&r)[4], const void* row, bool trans) {
  const int l = cuda_emulation::lane();
  const auto* mine = static_cast<const uint16_t*>(row);
  auto result = cuda_emulation::exchange(mine, [&](const auto& slots) {
    std::array<uint32_t, 4> out{};
    for (int m = 0; m < 4; ++m) {
      uint16_t element[2];
      for (int j = 0; j < 2; ++j) {
        const int r_index = l / 4, c_index = 2 * (l % 4) + j;
        const auto* source = cuda_emulation::slot<const uint16_t*>(slots, 8 * m + (trans ? c_index : r_index));
        element[j] = source[trans ? r_index : c_index];
      }
      out[m] = uint32_t{element[0]} | (uint32_t{element[1]} << 16);
    }
    return out;
  });
  for (int m = 0; m < 4; ++m) r[m] = result[m];
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { ldmatrix_x4_impl(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { ldmatrix_x4_impl(r, row, true); }

/// mma.sync.m16n8k16 with float accumulators; fragments as in the PTX ISA's tables (group
/// g = l / 4, t = l % 4): A a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..);
/// B b0 (k = 2t..2t+1, n = g), b1 (k = 2t+8.., n = g); C c0, c1 (g, 2t..2t+1), c2, c3 (g+8, 2t..).
template <typename Scalar>
inline void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  constexpr bool kBfloat = std::is_same_v<Scalar, __nv_bfloat16>;
  struct Fragments {
    uint32_t a[4], b[2];
  };
  const Fragments mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  const int l = cuda_emulation::lane();
  auto products = cuda_emulation::exchange(mine, [&](const auto& slots) {
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; ++lane) {
      const auto f = cuda_emulation::slot<Fragments>(slots, lane);
      const int g = lane / 4, t = lane % 4;
      const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
      for (int r = 0; r < 4; ++r) {
        A[rows[r]][cols[r]] = cuda_emulation::b16_to_float(static_cast<uint16_t>(f.a[r]), kBfloat);
        A[rows[r]][cols[r] + 1] = cuda_emulation::b16_to_float(static_cast<uint16_t>(f.a[r] >> 16), kBfloat);
      }
      for (int r = 0; r < 2; ++r) {
        B[2 * t + 8 * r][g] = cuda_emulation::b16_to_float(static_cast<uint16_t>(f.b[r]), kBfloat);
        B[2 * t + 8 * r + 1][g] = cuda_emulation::b16_to_float(static_cast<uint16_t>(f.b[r] >> 16), kBfloat);
      }
    }
    std::array<float, 4> sums{};
    for (int e = 0; e < 4; ++e) {
      const int row = l / 4 + 8 * (e / 2), col = 2 * (l % 4) + e % 2;
      for (int k = 0; k < 16; ++k) sums[e] += A[row][k] * B[k][col];
    }
    return sums;
  });
  for (int e = 0; e < 4; ++e) c[e] += products[e];
}

/// kernel<<<grid, block, shared_bytes>>>(args...), one block after another, each block's threads
/// as fibers: the scheduler starts (or resumes) each unfinished fiber in turn; a fiber that waits
/// at a barrier hands over to the next one, a fiber that returns comes back to the scheduler.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, int64_t shared_bytes, cudaStream_t,
                          const Args&... args) {
  constexpr size_t kStackBytes = 256 * 1024;
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads % 32 != 0 || block.y != 1 || block.z != 1) return cudaErrorInvalidValue;
  static thread_local std::function<void()> run_kernel;
  run_kernel = [&] { kernel(args...); };
  std::vector<std::unique_ptr<unsigned char[]>> stacks(threads);
  for (auto& stack : stacks) stack.reset(new unsigned char[kStackBytes]);
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        cuda_emulation::Block state(threads);
        state.shared.assign(static_cast<size_t>(shared_bytes), 0xff);
        state.finished.assign(threads, false);
        blockIdx = {x, y, z};
        blockDim = block;
        gridDim = grid;
        cuda_emulation::current_block = &state;
        for (int t = 0; t < threads; ++t) {
          getcontext(&state.fibers[t]);
          state.fibers[t].uc_stack.ss_sp = stacks[t].get();
          state.fibers[t].uc_stack.ss_size = kStackBytes;
          state.fibers[t].uc_link = &state.scheduler;
          makecontext(&state.fibers[t], +[] {
            run_kernel();
            cuda_emulation::current_block->finished[cuda_emulation::current_block->running] = true;
          }, 0);
        }
        // A different order of the threads in every block: a barrier a kernel lacks shows as
        // results that depend on which threads ran first.
        state.order.resize(threads);
        state.place.resize(threads);
        std::iota(state.order.begin(), state.order.end(), 0);
        std::shuffle(state.order.begin(), state.order.end(), std::mt19937(x + 977 * (y + 977 * z)));
        for (int i = 0; i < threads; ++i) state.place[state.order[i]] = i;
        while (std::find(state.finished.begin(), state.finished.end(), false) != state.finished.end()) {
          for (int t : state.order) {
            if (state.finished[t]) continue;
            state.running = t;
            threadIdx = {static_cast<unsigned>(t), 0, 0};
            swapcontext(&state.scheduler, &state.fibers[t]);
          }
        }
      }
    }
  }
  return cudaSuccess;
}

}  // namespace fused_rnn::cuda::attention
