// Vocabulary shared by the planner (plain C++), the kernels and the host tests of the CUDA
// recurrence: cells, directions, the arithmetic of the recurrent product, where the weights live,
// and the fixed block shape.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FUSED_RNN_HD __host__ __device__ __forceinline__
#else
#define FUSED_RNN_HD inline
#endif

namespace fused_rnn::cuda {

enum class CellKind : int32_t { kRnn, kLstm, kGru };
enum class Direction : int32_t { kForward, kBackward };

/// How the recurrent product is computed: tensor-core MMA on half types (m16n8k16) or on tf32
/// (m16n8k8, float32 storage), or exact fused multiply-adds in float32 / float64.
enum class Math : int32_t { kBf16Mma, kF16Mma, kTf32Mma, kF32Fma, kF64Fma };

/// Where a block keeps its slice of the recurrent weights for the whole sequence.
enum class Regime : int32_t { kRegisters, kShared, kGlobal };

/// Every kernel runs 8 warps; a warp owns m-tiles of 16 weight rows and a range of the reduction.
inline constexpr int kWarps = 8;
inline constexpr int kThreads = kWarps * 32;
/// The batch columns of one product pass: two n-tiles of 8 columns.
inline constexpr int kNTiles = 2;
inline constexpr int kGroupColumns = 8 * kNTiles;
/// At most this many (unit, column) pairs per thread in the pointwise stage of one group.
inline constexpr int kPairsPerThread = 2;
inline constexpr int kMaxUnitsPerBlock = kThreads * kPairsPerThread / kGroupColumns;  // 32
/// Stages of the shared-memory pipeline that brings h (or the gate gradients) in.
inline constexpr int kMaxStages = 4;

FUSED_RNN_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
FUSED_RNN_HD constexpr int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

/// Gates per hidden unit: 1 (RNN), 4 (LSTM), 3 (GRU).
FUSED_RNN_HD constexpr int gate_count(CellKind cell) {
  return cell == CellKind::kRnn ? 1 : cell == CellKind::kLstm ? 4 : 3;
}

/// Bytes of one element of the product's operands (the exchange buffer and the packed weights).
FUSED_RNN_HD constexpr int operand_bytes(Math math) {
  return math == Math::kF64Fma ? 8 : (math == Math::kBf16Mma || math == Math::kF16Mma) ? 2 : 4;
}

/// Bytes of one accumulator (partial sums, carried state).
FUSED_RNN_HD constexpr int accumulator_bytes(Math math) { return math == Math::kF64Fma ? 8 : 4; }

/// The reduction length of one MMA (or of one FMA step).
FUSED_RNN_HD constexpr int k_per_step(Math math) {
  return (math == Math::kBf16Mma || math == Math::kF16Mma) ? 16 : math == Math::kTf32Mma ? 8 : 4;
}

/// The packed weights of one 16-row fragment and one k-step, in elements: MMA fragments hold
/// 16 x k_per_step distinct elements, spread over the lanes; FMA tiles are 16 x 4, read by row.
FUSED_RNN_HD constexpr int fragment_elements(Math math) { return 16 * k_per_step(math); }

}  // namespace fused_rnn::cuda
