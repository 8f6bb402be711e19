// The persistent recurrence kernel, one template for every cell and both directions:
//
//   recurrence_kernel<Pass, Engine>   Pass   = ForwardPass<Cell, Math> or BackwardPass<Cell, Math>
//                                              (recurrence_passes.h: what is multiplied, the
//                                              pointwise stage, the saved tensors)
//                                     Engine = ProductEngine<Math, Regime, kMTiles, kKSteps>
//                                              (where the weight slice lives, how it multiplies)
//
// Block b owns unit slice b % unit_slices and batch slice b / unit_slices (recurrence_planner.h).
// Per phase (one time step), for each group of 16 of its batch rows:
//   1. load    the pointwise inputs of the group (xw[t], or grad_hs and the saved tensors) into
//              registers, and prefetch the next phase's into L2;
//   2. product for each chunk of the reduction, wait for the group's exchange rows (h[t-1], or the
//              gate gradients of t+1) of that chunk to land in shared memory (cp.async.cg, issued
//              `stages` buffers ahead), multiply them by the warp's weight fragments; then write
//              the warps' partial sums to shared memory;
//   3. finish  each (unit, row) pair adds the warps_k partial sums in a fixed order and runs the
//              pass's pointwise stage: outputs, saved tensors, carried state, and its exchange
//              element for the next phase.
// Between phases all blocks meet at grid.sync() (cooperative launch: every block resident, so it
// cannot deadlock); with one launch per phase the launch boundary is the barrier. The carried
// state lives in shared memory during a launch and in the workspace between launches.
//
// The exchange of h between steps (grid.sync + cp.async.cg): a block writes its elements of the
// next slot with ordinary stores during phase p; grid.sync() orders every block's phase-p writes
// before every block's phase-(p+1) reads (it is a grid-wide memory barrier: each block fences,
// arrives, and waits for all); the reads bypass L1 (.cg), which is not coherent across SMs. Two
// slots suffice: slot s is rewritten in phase p+1 only after the grid.sync() that follows every
// read of it in phase p. The flag-in-data ring (each word carrying its step, readers polling it, a
// third slot instead of the barrier) is not implemented: an 8-byte word holding 4 bytes of data
// and a 4-byte step doubles the bytes read from L2 (quadruples for one bf16 value per word), and
// pairing two units' values into one word crosses the pairs of the pointwise stage.
//
// Per-step cost from first principles (H100; the constants, all estimates, are in
// recurrence_planner.cpp): one grid barrier (~1.0 us) + one dependent L2 read of the block's
// exchange rows (~0.6 us latency + its bytes at min(64 B/clock, the block's share of 5.5 TB/s))
// + the MMAs (rows x K x columns multiply-adds at ~1024 per clock per SM for bf16/f16, 512 for
// tf32, ~64 / ~32 for exact float32 / float64 FMA, at least one warp's accumulator chain at
// ~33 clocks per k-step) + the pointwise stage (~0.15 us per group of 16 rows). At B16 H768 bf16
// the planner's plans give (bytes from L2 per block and step; m16n8k16 MMAs per block and step):
//
//   kernel      blocks  L2 bytes/block  MMAs/block  estimated us/step
//   RNN fwd       48       24,576          192          2.24
//   RNN bwd       48       24,576           96          2.13
//   LSTM fwd      96       24,576          192          2.45
//   LSTM bwd      48       98,304          384          3.13
//   GRU fwd       77       24,576          192          2.36
//   GRU bwd       48       73,728          288          2.79
//
// The barrier and the L2 round trip (~1.6 us) dominate. csrc/cuda/tests/plan_report.cpp prints the
// plan and the estimate of any shape.
#pragma once

#include <cooperative_groups.h>

#include <cstdint>

#include "fragment_ops.cuh"
#include "recurrence_passes.h"

namespace fused_rnn::cuda {

/// A warp's share of the product: m-tiles wm * kMTiles .. + kMTiles over its k-steps of each chunk
/// (recurrence_planner.h), its weight fragments in registers (Regime::kRegisters: one chunk, at
/// most kKSteps fragments per m-tile), in shared memory or in global memory.
template <Math M, Regime R, int kMTiles, int kKSteps>
struct ProductEngine {
  using Ops = FragmentOps<M>;
  using Operand = typename MathTypes<M>::Operand;
  using Accumulator = typename MathTypes<M>::Accumulator;
  using Tiles = Accumulator[kMTiles][kNTiles][4];
  static constexpr Math kMath = M;
  static constexpr Regime kRegime = R;
  static constexpr int kK = k_per_step(M);
  static constexpr int kSlots = fragment_elements(M);
  static constexpr bool kHeld = R == Regime::kRegisters;

  typename Ops::A held[kHeld ? kMTiles : 1][kHeld ? kKSteps : 1];
  const Operand* fragments;  // the warp's first fragment
  int wk;
  int warps_k;
  int k_steps;
  int chunk_steps;  // k-steps of the warp per chunk
  int m_stride;     // fragments between consecutive m-tiles

  /// The first of the warp's k-steps in `chunk`, and how many there are.
  __device__ __forceinline__ int first_step(int chunk) const { return (chunk * warps_k + wk) * chunk_steps; }
  __device__ __forceinline__ int step_count(int chunk) const {
    return max(0, min(k_steps - first_step(chunk), chunk_steps));
  }

  /// `slice`: the unit slice's packed weights in global memory; `shared_slice`: their copy in
  /// shared memory (Regime::kShared, filled by the block before the first product).
  __device__ __forceinline__ void init(const Operand* slice, const Operand* shared_slice,
                                       const RecurrenceGeometry& g, int wm, int warp_k, int lane) {
    wk = warp_k;
    warps_k = g.warps_k;
    k_steps = g.k_steps;
    chunk_steps = g.k_steps_per_chunk;
    m_stride = g.k_steps_per_warp;
    fragments = (R == Regime::kShared ? shared_slice : slice) + packed_fragment_index(g, wm, wk, 0, 0) * kSlots;
    if constexpr (kHeld) {
      const int count = step_count(0);
#pragma unroll
      for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
        for (int s = 0; s < kKSteps; ++s) {
          if (s < count) {
            held[m][s] = Ops::load_a(fragments + (m * m_stride + s) * kSlots, lane, true);
          }
        }
      }
    }
  }

  /// acc += a x the slab's columns (n-tiles below n_live) for the warp's k-step s of the slab.
  __device__ __forceinline__ void step(const typename Ops::A (&a)[kMTiles], int s, const unsigned char* slab,
                                       int row_bytes, int n_live, Tiles& acc, int lane) const {
    typename Ops::B b[kNTiles];
#pragma unroll
    for (int n = 0; n < kNTiles; ++n) {
      if (n < n_live) {
        b[n] = Ops::load_b(slab + n * 8 * row_bytes, row_bytes, int64_t{wk * chunk_steps + s} * kK, lane);
      }
    }
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
        if (n < n_live) {
          Ops::mma(acc[m][n], a[m], b[n]);
        }
      }
    }
  }

  /// acc += this warp's fragments of `chunk` x the slab (that chunk of the group's rows).
  __device__ __forceinline__ void multiply(const unsigned char* slab, int row_bytes, int chunk, int n_live,
                                           Tiles& acc, int lane) const {
    const int count = step_count(chunk);
    if constexpr (kHeld) {
#pragma unroll
      for (int s = 0; s < kKSteps; ++s) {
        if (s < count) {
          typename Ops::A a[kMTiles];
#pragma unroll
          for (int m = 0; m < kMTiles; ++m) {
            a[m] = held[m][s];
          }
          step(a, s, slab, row_bytes, n_live, acc, lane);
        }
      }
    } else {
      const Operand* first = fragments + int64_t{chunk} * chunk_steps * kSlots;
#pragma unroll 1
      for (int s = 0; s < count; ++s) {
        typename Ops::A a[kMTiles];
#pragma unroll
        for (int m = 0; m < kMTiles; ++m) {
          a[m] = Ops::load_a(first + (m * m_stride + s) * kSlots, lane, R == Regime::kGlobal);
        }
        step(a, s, slab, row_bytes, n_live, acc, lane);
      }
    }
  }

  /// Writes the warp's tiles into partials[wk][row][column].
  __device__ __forceinline__ void store(const Tiles& acc, Accumulator* partials, const RecurrenceGeometry& g,
                                        int wm, int wk, int n_live, int lane) const {
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
        if (n < n_live) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const CPosition at = c_element_position(lane, i);
            const int row = (wm * kMTiles + m) * 16 + at.row;
            partials[partial_index(g, wk, row, n * 8 + at.column)] = acc[m][n][i];
          }
        }
      }
    }
  }
};

/// Runs phases [phase_begin, phase_end) of `Pass`; more than one phase only under a cooperative
/// launch with every block resident.
template <typename Pass, typename Engine>
__global__ void __launch_bounds__(kThreads, 1)
    recurrence_kernel(const typename Pass::Args args, const RecurrenceGeometry g, int64_t phase_begin,
                      int64_t phase_end) {
  using Operand = typename Pass::Operand;
  using Accumulator = typename Pass::Accumulator;
  static_assert(Engine::kMath == Pass::kMath, "the engine multiplies the pass's operands");
  extern __shared__ __align__(128) unsigned char shared[];
  Operand* shared_weights = reinterpret_cast<Operand*>(shared + g.weights_offset);
  unsigned char* slabs = shared + g.slabs_offset;
  Accumulator* partials = reinterpret_cast<Accumulator*>(shared + g.partials_offset);
  Accumulator* carries = reinterpret_cast<Accumulator*>(shared + g.carries_offset);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / g.warps_k, wk = warp % g.warps_k;
  const BlockSlice slice = block_slice(g, blockIdx.x);
  const int64_t carry_stride = int64_t{g.units_per_block} * g.batch_per_block;
  const Operand* packed_slice = args.packed + slice.unit_slice * g.fragments_per_slice * Engine::kSlots;

  // Prologue: the weight slice (into shared memory or registers) and the carried state.
  if constexpr (Engine::kRegime == Regime::kShared) {
    const int64_t vectors = g.fragments_per_slice * g.fragment_bytes / 16;
    const uint4* from = reinterpret_cast<const uint4*>(packed_slice);
    uint4* to = reinterpret_cast<uint4*>(shared_weights);
    for (int64_t i = tid; i < vectors; i += kThreads) {
      to[i] = __ldg(from + i);
    }
  }
  Engine engine;
  engine.init(packed_slice, shared_weights, g, wm, wk, lane);
  move_carries(g, slice, carries, args.carries, /*to_shared=*/true, tid, kThreads);
  __syncthreads();

  const int row_bytes = g.slab_row_bytes;
  const int groups = static_cast<int>(ceil_div(slice.rows, kGroupColumns));
  const int buffers = groups * g.k_chunks;  // (group, chunk) pipeline buffers per phase
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();

  for (int64_t phase = phase_begin; phase < phase_end; ++phase) {
    const bool product = Pass::has_product(args, g, phase);
    const Operand* source = Pass::product_source(args, phase) + slice.row0 * g.k_pad;
    // Issues the copies of buffer `index` = (group, chunk): the chunk's k range of the group's rows.
    auto issue = [&](int index) {
      const int group = index / g.k_chunks, chunk = index % g.k_chunks;
      const int rows = min(kGroupColumns, slice.rows - group * kGroupColumns);
      const int64_t k0 = int64_t{chunk} * g.chunk_elements;
      const int vectors = static_cast<int>((min(int64_t{g.chunk_elements}, g.k_pad - k0) * sizeof(Operand)) / 16);
      unsigned char* slab = slabs + (index % g.stages) * kGroupColumns * row_bytes;
      const Operand* from = source + int64_t{group} * kGroupColumns * g.k_pad + k0;
      for (int i = tid; i < rows * vectors; i += kThreads) {
        const int r = i / vectors, v = i % vectors;
        copy_async_16(slab + r * row_bytes + v * 16,
                      reinterpret_cast<const unsigned char*>(from + r * g.k_pad) + v * 16);
      }
    };
    if (product) {
      for (int index = 0; index < g.stages; ++index) {
        if (index < buffers) {
          issue(index);
        }
        commit_copies();  // one group per buffer, empty or not: the waits below count them
      }
    }

    for (int group = 0; group < groups; ++group) {
      const int columns = min(kGroupColumns, slice.rows - group * kGroupColumns);
      const int pairs = slice.units * columns;

      // 1. load
      typename Pass::Inputs inputs[kPairsPerThread];
#pragma unroll
      for (int p = 0; p < kPairsPerThread; ++p) {
        const int pair = tid + p * kThreads;
        if (pair < pairs) {
          const int64_t unit = slice.unit0 + pair % slice.units;
          const int64_t row = slice.row0 + group * kGroupColumns + pair / slice.units;
          inputs[p] = Pass::load(args, g, phase, unit, row);
          Pass::prefetch(args, g, phase + 1, unit, row);
        }
      }

      // 2. product
      if (product) {
        typename Engine::Tiles acc = {};
        const int n_live = static_cast<int>(ceil_div(columns, 8));
        for (int chunk = 0; chunk < g.k_chunks; ++chunk) {
          const int index = group * g.k_chunks + chunk;
          wait_copies(g.stages - 1);
          __syncthreads();
          engine.multiply(slabs + (index % g.stages) * kGroupColumns * row_bytes, row_bytes, chunk, n_live, acc,
                          lane);
          if (chunk + 1 == g.k_chunks) {
            engine.store(acc, partials, g, wm, wk, n_live, lane);
          }
          __syncthreads();
          if (index + g.stages < buffers) {
            issue(index + g.stages);
          }
          commit_copies();
        }
      }

      // 3. finish
#pragma unroll
      for (int p = 0; p < kPairsPerThread; ++p) {
        const int pair = tid + p * kThreads;
        if (pair < pairs) {
          const int u = pair % slice.units, column = pair / slice.units;
          Accumulator values[Pass::kProducts];
#pragma unroll
          for (int i = 0; i < Pass::kProducts; ++i) {
            values[i] = product ? sum_partials(partials, g, Pass::product_row(g, i, u), column) : Accumulator(0);
          }
          Pass::finish(args, g, phase, slice.unit0 + u, slice.row0 + group * kGroupColumns + column, inputs[p],
                       values, carries + shared_carry_index(g, 0, u, group * kGroupColumns + column), carry_stride);
        }
      }
    }
    if (phase + 1 < phase_end) {
      grid.sync();
    }
  }

  __syncthreads();
  move_carries(g, slice, carries, args.carries, /*to_shared=*/false, tid, kThreads);
}

/// pack_weights (recurrence_passes.h), a grid-stride loop.
template <typename Pass>
__global__ void pack_weights_kernel(const typename Pass::Args args, const RecurrenceGeometry g) {
  pack_weights<Pass>(args, g, blockIdx.x * int64_t{blockDim.x} + threadIdx.x, int64_t{gridDim.x} * blockDim.x);
}

/// prepare_workspace (recurrence_passes.h), a grid-stride loop; the ring is zeroed before.
template <typename Pass>
__global__ void prepare_kernel(const typename Pass::Args args, const RecurrenceGeometry g) {
  prepare_workspace<Pass>(args, g, blockIdx.x * int64_t{blockDim.x} + threadIdx.x, int64_t{gridDim.x} * blockDim.x);
}

}  // namespace fused_rnn::cuda
