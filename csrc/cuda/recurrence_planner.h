// The launch planner of the CUDA recurrence kernels: plain C++, no CUDA runtime calls, so that host
// tests can plan for an H100 or an H200 on a machine without a GPU.
//
// A plan splits the hidden units into unit slices and the batch into batch slices; each block of
// the persistent grid owns one (unit slice, batch slice) pair with all the gates of its units, and
// holds the weights of its unit slice on-chip for the whole sequence:
//
//   forward   gates^T [rows, batch] = W_slice [rows, K] . h^T [K, batch]
//             rows = G * units (gate-major), K = P (the state fed back)
//   backward  dh^T [units, batch] = (W_hh^T)_slice [units, K] . d_gates^T [K, batch],  K = G * H
//
// Inside a block, 8 warps form a warps_m x warps_k grid: warp (wm, wk) multiplies m-tiles
// wm*m_tiles .. +m_tiles (16 rows each) over k-steps wk*k_steps_per_warp .. +k_steps_per_warp,
// and the warps_k partial sums are added in shared memory in a fixed order (deterministic).
// The batch columns of a block are processed in groups of 16 (two n-tiles of 8), and the reduction
// in k_chunks chunks of warps_k * k_steps_per_chunk k-steps (warp wk takes k-steps
// (chunk * warps_k + wk) * k_steps_per_chunk ..): h (or the gate gradients) of one (group, chunk)
// is brought from L2 into shared memory through a pipeline of `stages` buffers, `stages` of them in
// flight. The register regime keeps one chunk (its fragments are indexed at compile time).
//
// Regimes (where the weight slice lives; the planner takes the first that fits, then the cheapest
// estimated step among the shapes of that regime):
//   registers  MMA fragments held by the warps (bf16/f16/tf32): a warp holds at most
//              m_tiles * k_steps fragments of the catalogue entry (<= 32 fragments, 128 registers);
//   shared     packed fragments in shared memory: the slice must fit in the opt-in shared memory
//              per block (232,448 B on H100/H200) beside the pipeline buffers;
//   global     packed fragments read from L2 (or HBM) every step: any size, at the cost of
//              reading the slice once per group per step.
// exact float32 and float64 (FMA) never use registers for the slice.
#pragma once

#include <cstdint>

#include "engine_catalogue.h"
#include "recurrence_params.h"
#include "recurrence_types.h"

namespace fused_rnn::cuda {

/// What the planner needs to know of a GPU (cudaDeviceProp fields of the same meaning).
struct DeviceDescription {
  int sm_count;                     // multiProcessorCount
  int registers_per_sm;             // regsPerMultiprocessor
  int shared_per_sm;                // sharedMemPerMultiprocessor
  int shared_per_block_optin;       // sharedMemPerBlockOptin
  int shared_reserved_per_block;    // reservedSharedMemPerBlock
  int threads_per_sm;               // maxThreadsPerMultiProcessor
  int blocks_per_sm;                // maxBlocksPerMultiProcessor
  int registers_per_thread;         // 255 on every architecture the kernels compile for
  int64_t l2_bytes;                 // l2CacheSize
  int major;
  int minor;
};

/// H100 SXM and H200 (sm_90): 132 SMs, 64K registers and 228 KB shared memory per SM.
DeviceDescription h100_description();
DeviceDescription h200_description();

struct ProblemShape {
  CellKind cell;
  Direction direction;
  Math math;
  int64_t batch;   // B
  int64_t hidden;  // H
  int64_t state;   // P (= H without projection)
  bool projected;  // LSTM with proj_size: the projection runs between per-step launches
};

/// The arithmetic of the recurrent product for a dtype: tensor cores for half types, tf32 tensor
/// cores for float32 only when TF32 matmuls are allowed, else exact FMA.
Math math_for(DType dtype, bool allow_tf32);

/// Everything a kernel needs to know about its launch, passed to it by value. Shapes are those of
/// recurrence_params.h; `k` is the reduction length of the product (forward P, backward G*H).
struct RecurrenceGeometry {
  int64_t steps;
  int64_t batch;
  int64_t hidden;
  int64_t state;
  int32_t gates;
  int32_t rows_per_unit;  // G forward, 1 backward
  int64_t k;
  int64_t k_pad;          // k rounded up to 32: the row length of the exchange buffer
  int32_t k_steps;        // ceil(k / k_per_step)

  int32_t units_per_block;
  int32_t unit_slices;
  int32_t batch_per_block;  // a multiple of 16
  int32_t batch_slices;
  int32_t blocks;           // unit_slices * batch_slices; block = batch_slice * unit_slices + unit_slice
  int64_t batch_pad;        // batch_slices * batch_per_block: the rows of the exchange buffer

  int32_t warps_m;
  int32_t warps_k;
  int32_t m_tiles;            // per warp
  int32_t k_chunks;
  int32_t k_steps_per_chunk;  // per warp
  int32_t k_steps_per_warp;   // k_chunks * k_steps_per_chunk: the warp's fragments per m-tile
  int32_t rows_per_block;     // 16 * m_tiles * warps_m

  int32_t carries;            // values carried per (unit, batch row) from step to step
  int32_t stages;
  int32_t chunk_elements;     // the k values of one chunk (the last may be shorter)
  int32_t slab_row_bytes;     // one batch row of a pipeline buffer
  int32_t partial_row_stride; // accumulators per row of the partial sums
  int64_t fragments_per_slice;  // packed weight fragments of one unit slice
  int32_t fragment_bytes;

  // Dynamic shared memory, in bytes from its start.
  int32_t weights_offset;   // Regime::kShared: the block's packed slice
  int32_t slabs_offset;
  int32_t partials_offset;
  int32_t carries_offset;
  int32_t shared_bytes;
};

struct RecurrencePlan {
  int engine;  // index into engines(direction)
  EngineConfig config;
  RecurrenceGeometry geometry;
  /// Every block resident at once (one per SM): the persistent, cooperative launch is possible.
  /// Otherwise the kernel runs one launch per step.
  bool persistent;
  double estimated_step_us;  // first-principles estimate (see estimate_step_us), not a measurement
};

/// The cheapest plan for `problem` on `device` (always succeeds for B, H >= 1); with `only`, the
/// cheapest of that regime when it has one.
RecurrencePlan plan_recurrence(const ProblemShape& problem, const DeviceDescription& device,
                               const Regime* only = nullptr);

/// The plan of one candidate the planner considers: catalogue entry `engine` of the problem's
/// direction, warps_m x (8 / warps_m) warps, `units` per block, `batch_per_block` rows per block
/// (a multiple of 16), reduction chunks of at most `max_chunk_steps` k-steps per warp (0: as
/// large as fits). False when it does not fit the engine or the device.
bool plan_candidate(const ProblemShape& problem, int engine, int warps_m, int64_t units, int64_t batch_per_block,
                    const DeviceDescription& device, RecurrencePlan& plan, int max_chunk_steps = 0);

/// Estimated microseconds per time step of a plan on an H100-class GPU: grid barrier + dependent L2
/// read of the group buffers + the product + the pointwise stage (constants in the .cpp).
double estimate_step_us(const RecurrencePlan& plan, const DeviceDescription& device);

/// Device workspace of one op call, in bytes from its start (each region 256-byte aligned):
/// packed weights [unit_slices][fragments_per_slice], the exchange ring [2][batch_pad][k_pad]
/// (operand dtype), the carried state [carries][B][H] (accumulation dtype) and, with a projection,
/// one [B, H] accumulation-dtype buffer (unprojected output forward, its gradient backward).
struct WorkspaceLayout {
  int64_t weights_offset;
  int64_t ring_offset;
  int64_t ring_rows;           // batch_pad
  int64_t ring_row_elements;   // k_pad
  int64_t ring_slot_elements;  // batch_pad * k_pad
  int64_t carries_offset;
  int64_t projection_offset;
  int64_t bytes;
};
WorkspaceLayout workspace_layout(const RecurrencePlan& plan, bool projected);

}  // namespace fused_rnn::cuda
