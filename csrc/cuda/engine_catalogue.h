// The product engines compiled into each recurrence kernel, per direction: the arithmetic, where
// the weight slice lives, and (registers only) the capacity of a warp's register-held slice.
//
//   X(Math, Regime, kMTiles, kKSteps)
//
// kMTiles: 16-row m-tiles each warp multiplies (its accumulators: kMTiles x kNTiles tiles).
// kKSteps: the k-steps a warp holds in registers (Regime::kRegisters only; 0 otherwise: the
//          shared and global engines walk any number of k-steps). A warp's register slice is
//          kMTiles * kKSteps fragments of 4 registers.
//
// The planner (recurrence_planner.cpp) chooses among these entries by index; every .cu file
// instantiates each entry with the catalogue's X-macro, so the two cannot disagree. Register
// entries cover the sizes where the slice fits in registers (see the planner); every size fits a
// shared or global entry.
#pragma once

#include "recurrence_types.h"

#define FUSED_RNN_MMA_FORWARD_REGISTER_ENGINES(X, MATH) \
  X(MATH, Regime::kRegisters, 1, 4)                     \
  X(MATH, Regime::kRegisters, 2, 4)                     \
  X(MATH, Regime::kRegisters, 2, 8)                     \
  X(MATH, Regime::kRegisters, 2, 16)

#define FUSED_RNN_MMA_BACKWARD_REGISTER_ENGINES(X, MATH) \
  X(MATH, Regime::kRegisters, 1, 8)                      \
  X(MATH, Regime::kRegisters, 1, 16)                     \
  X(MATH, Regime::kRegisters, 1, 32)

#define FUSED_RNN_STREAMING_ENGINES(X, MATH) \
  X(MATH, Regime::kShared, 2, 0)             \
  X(MATH, Regime::kGlobal, 2, 0)

#define FUSED_RNN_FORWARD_ENGINES(X)                          \
  FUSED_RNN_MMA_FORWARD_REGISTER_ENGINES(X, Math::kBf16Mma)   \
  FUSED_RNN_MMA_FORWARD_REGISTER_ENGINES(X, Math::kF16Mma)    \
  FUSED_RNN_MMA_FORWARD_REGISTER_ENGINES(X, Math::kTf32Mma)   \
  FUSED_RNN_STREAMING_ENGINES(X, Math::kBf16Mma)              \
  FUSED_RNN_STREAMING_ENGINES(X, Math::kF16Mma)               \
  FUSED_RNN_STREAMING_ENGINES(X, Math::kTf32Mma)              \
  FUSED_RNN_STREAMING_ENGINES(X, Math::kF32Fma)               \
  FUSED_RNN_STREAMING_ENGINES(X, Math::kF64Fma)

#define FUSED_RNN_BACKWARD_ENGINES(X)                         \
  FUSED_RNN_MMA_BACKWARD_REGISTER_ENGINES(X, Math::kBf16Mma)  \
  FUSED_RNN_MMA_BACKWARD_REGISTER_ENGINES(X, Math::kF16Mma)   \
  FUSED_RNN_MMA_BACKWARD_REGISTER_ENGINES(X, Math::kTf32Mma)  \
  FUSED_RNN_STREAMING_ENGINES(X, Math::kBf16Mma)              \
  FUSED_RNN_STREAMING_ENGINES(X, Math::kF16Mma)               \
  FUSED_RNN_STREAMING_ENGINES(X, Math::kTf32Mma)              \
  FUSED_RNN_STREAMING_ENGINES(X, Math::kF32Fma)               \
  FUSED_RNN_STREAMING_ENGINES(X, Math::kF64Fma)

namespace fused_rnn::cuda {

struct EngineConfig {
  Math math;
  Regime regime;
  int m_tiles;  // per warp
  int k_steps;  // register capacity per warp (0: unbounded)
};

#define FUSED_RNN_ENGINE_ENTRY(MATH, REGIME, M_TILES, K_STEPS) EngineConfig{MATH, REGIME, M_TILES, K_STEPS},
inline constexpr EngineConfig kForwardEngines[] = {FUSED_RNN_FORWARD_ENGINES(FUSED_RNN_ENGINE_ENTRY)};
inline constexpr EngineConfig kBackwardEngines[] = {FUSED_RNN_BACKWARD_ENGINES(FUSED_RNN_ENGINE_ENTRY)};
#undef FUSED_RNN_ENGINE_ENTRY

inline constexpr int kForwardEngineCount = sizeof(kForwardEngines) / sizeof(EngineConfig);
inline constexpr int kBackwardEngineCount = sizeof(kBackwardEngines) / sizeof(EngineConfig);

inline constexpr const EngineConfig* engines(Direction direction) {
  return direction == Direction::kForward ? kForwardEngines : kBackwardEngines;
}
inline constexpr int engine_count(Direction direction) {
  return direction == Direction::kForward ? kForwardEngineCount : kBackwardEngineCount;
}

}  // namespace fused_rnn::cuda
