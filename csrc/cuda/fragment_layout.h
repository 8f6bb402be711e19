// Element types and fragment layouts of the recurrent product, as __host__ __device__ functions:
// which weight element each packed slot holds, which h element each lane reads, where each lane's
// accumulators sit. The kernels, the weight-packing kernel and the host tests share them.
//
// Tensor-core fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 / m16n8k8"), lane = 4g + q:
//   m16n8k16 (bf16/f16)  A a_i: row g + 8*((i>>1)&1), k 2q + (i&1) + 8*(i>>2)     (i = 0..7)
//                        B b_i: k 2q + (i&1) + 8*(i>>1), column g                   (i = 0..3)
//   m16n8k8 (tf32)       A a_i: row g + 8*(i&1), k q + 4*(i>>1)                     (i = 0..3)
//                        B b_i: k q + 4*i, column g                                 (i = 0..1)
//   accumulators c_i:    row g + 8*(i>>1), column 2q + (i&1)                        (i = 0..3)
// The reduction order inside one MMA is free, so the k index of both operands is permuted the same
// way: the k values a lane holds become contiguous in memory. m16n8k16: logical k 2q+e+8j is
// physical 4q+2j+e, so a lane's B elements are the 4 contiguous values k = 4q..4q+3 of row g (one
// 8-byte load); m16n8k8: logical q+4j is physical 2q+j (one 8-byte load of k = 2q, 2q+1).
// A fragments are packed in lane order (16 bytes a lane, one coalesced load).
//
// The FMA "fragment" (exact float32/float64) mirrors the accumulator layout: lane (g, q) computes
// rows g, g+8 and columns 2q, 2q+1 over 4 k values; its A slots are the 16 x 4 tile row by row
// (lanes of one g read the same two rows), its B values the 4 k values of columns 2q and 2q+1.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

#include "recurrence_planner.h"
#include "recurrence_types.h"

namespace fused_rnn::cuda {

// ---- Element conversions between storage, accumulation and operand types. ----

FUSED_RNN_HD float to_accumulator(__nv_bfloat16 value) { return __bfloat162float(value); }
FUSED_RNN_HD float to_accumulator(__half value) { return __half2float(value); }
FUSED_RNN_HD float to_accumulator(float value) { return value; }
FUSED_RNN_HD double to_accumulator(double value) { return value; }

template <typename Storage>
FUSED_RNN_HD Storage from_accumulator(float value);
template <>
FUSED_RNN_HD __nv_bfloat16 from_accumulator<__nv_bfloat16>(float value) { return __float2bfloat16_rn(value); }
template <>
FUSED_RNN_HD __half from_accumulator<__half>(float value) { return __float2half_rn(value); }
template <>
FUSED_RNN_HD float from_accumulator<float>(float value) { return value; }
template <typename Storage>
FUSED_RNN_HD Storage from_accumulator(double value) { return value; }

/// float32 rounded to tf32 (10 mantissa bits), ties away from zero, as cvt.rna.tf32.f32 does.
FUSED_RNN_HD float round_to_tf32(float value) {
#if defined(__CUDA_ARCH__)
  uint32_t bits;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(bits) : "f"(value));
  return __uint_as_float(bits);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7f800000u) != 0x7f800000u) {  // finite: round the magnitude half up
    bits = (bits + 0x1000u) & 0xffffe000u;
  }
  std::memcpy(&value, &bits, sizeof(bits));
  return value;
#endif
}

template <Math M>
struct MathTypes;
template <>
struct MathTypes<Math::kBf16Mma> {
  using Storage = __nv_bfloat16;  // the op's dtype
  using Operand = __nv_bfloat16;  // what the product multiplies (packed weights, exchange buffer)
  using Accumulator = float;
};
template <>
struct MathTypes<Math::kF16Mma> {
  using Storage = __half;
  using Operand = __half;
  using Accumulator = float;
};
template <>
struct MathTypes<Math::kTf32Mma> {
  using Storage = float;
  using Operand = float;  // holding tf32 values
  using Accumulator = float;
};
template <>
struct MathTypes<Math::kF32Fma> {
  using Storage = float;
  using Operand = float;
  using Accumulator = float;
};
template <>
struct MathTypes<Math::kF64Fma> {
  using Storage = double;
  using Operand = double;
  using Accumulator = double;
};

/// An accumulation-type value as a product operand.
template <Math M>
FUSED_RNN_HD typename MathTypes<M>::Operand to_operand(typename MathTypes<M>::Accumulator value) {
  if constexpr (M == Math::kTf32Mma) {
    return round_to_tf32(value);
  } else {
    return from_accumulator<typename MathTypes<M>::Operand>(value);
  }
}

// ---- Positions inside one fragment. ----

/// Slot `slot` of a packed A fragment holds W[row][k] of the 16-row tile and the step's k range.
struct APosition {
  int row;
  int k;  // physical
};
template <Math M>
FUSED_RNN_HD APosition a_slot_position(int slot) {
  if constexpr (M == Math::kBf16Mma || M == Math::kF16Mma) {
    const int lane = slot >> 3, i = slot & 7, g = lane >> 2, q = lane & 3;
    return {g + 8 * ((i >> 1) & 1), 4 * q + (i & 1) + 2 * (i >> 2)};
  } else if constexpr (M == Math::kTf32Mma) {
    const int lane = slot >> 2, i = slot & 3, g = lane >> 2, q = lane & 3;
    return {g + 8 * (i & 1), 2 * q + (i >> 1)};
  } else {
    return {slot >> 2, slot & 3};
  }
}

/// Element i of a lane's B fragment is h[column][k] of the 8-column tile.
struct BPosition {
  int column;
  int k;  // physical
};
template <Math M>
FUSED_RNN_HD BPosition b_element_position(int lane, int i) {
  const int g = lane >> 2, q = lane & 3;
  if constexpr (M == Math::kBf16Mma || M == Math::kF16Mma) {
    return {g, 4 * q + i};  // i = 0..3
  } else if constexpr (M == Math::kTf32Mma) {
    return {g, 2 * q + i};  // i = 0..1
  } else {
    return {2 * q + (i >> 2), i & 3};  // i = 0..7
  }
}

/// Accumulator i of a lane (every Math).
struct CPosition {
  int row;
  int column;
};
FUSED_RNN_HD CPosition c_element_position(int lane, int i) {
  return {(lane >> 2) + 8 * (i >> 1), 2 * (lane & 3) + (i & 1)};
}

// ---- The packed weight slice of one unit slice. ----

/// Fragment index of warp (wm, wk), m-tile m, the warp's k-step s (chunk * k_steps_per_chunk +
/// step in chunk) within a unit slice's packed weights.
FUSED_RNN_HD int64_t packed_fragment_index(const RecurrenceGeometry& g, int wm, int wk, int m, int s) {
  return ((int64_t{wm} * g.warps_k + wk) * g.m_tiles + m) * g.k_steps_per_warp + s;
}

/// The (block row, k) of element `index` of a unit slice's packed weights (index < 
/// fragments_per_slice * fragment_elements); k may exceed the reduction length (zero padding).
struct WeightPosition {
  int64_t row;  // row of the block's product: forward gate * units + unit, backward unit
  int64_t k;
};
template <Math M>
FUSED_RNN_HD WeightPosition packed_weight_position(const RecurrenceGeometry& g, int64_t index) {
  constexpr int kSlots = fragment_elements(M);
  const int64_t fragment = index / kSlots;
  const APosition in_fragment = a_slot_position<M>(static_cast<int>(index % kSlots));
  const int64_t s = fragment % g.k_steps_per_warp;  // chunk * k_steps_per_chunk + step in chunk
  int64_t rest = fragment / g.k_steps_per_warp;
  const int64_t m = rest % g.m_tiles;
  rest /= g.m_tiles;
  const int64_t wk = rest % g.warps_k;
  const int64_t wm = rest / g.warps_k;
  const int64_t chunk = s / g.k_steps_per_chunk, in_chunk = s % g.k_steps_per_chunk;
  return {(wm * g.m_tiles + m) * 16 + in_fragment.row,
          ((chunk * g.warps_k + wk) * g.k_steps_per_chunk + in_chunk) * k_per_step(M) + in_fragment.k};
}

}  // namespace fused_rnn::cuda
