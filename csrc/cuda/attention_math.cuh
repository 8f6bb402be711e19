// The __host__ __device__ arithmetic of the CUDA attention kernels: dtype traits, the fragment
// layouts of mma.m16n8k16, masking, the online softmax, the split-K combine, the recomputed
// weights and score gradients of the backward, and the additive score's tanh. The kernels call
// these functions; tests/cuda_attention_host.cu calls the same functions on the host and checks
// them against fused_rnn/reference.py.
//
// Scores are kept in base-2 units inside the kernels: s2 = raw score * scale * log2(e), so that
// exp(score - m) = exp2(s2 - m2); lse is stored in natural units.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "attention_params.h"

namespace fused_rnn::cuda::attention {

// ------------------------------------------------------------------------------------------------
// dtype traits
// ------------------------------------------------------------------------------------------------

/// How the additive score's tanh is computed (tests/test_cuda_attention_tanh.py emulates each
/// one's documented error in the float64 reference and compares what it adds with the error the
/// reference makes in the dtype, half of which the tolerance leaves for it):
///   kHardware  tanh.approx.f32, one MUFU op, maximum relative error 2^-11 (PTX ISA): measured at
///              ~0.2x bfloat16's own error, but up to ~1.8x float16's (whose rounding is itself 2^-11);
///   kFromExp   1 - 2 / (exp(2x) + 1) on ex2.approx (2 ulp) and an approximate division (2 ulp), two
///              MUFU ops, absolute error below 2^-20: negligible next to float16's rounding;
///   kAccurate  tanhf / tanh (float32's 1e-5 tolerance leaves no room for either approximation).
enum class TanhKind { kHardware, kFromExp, kAccurate };

/// Acc: accumulation dtype. kTensorCores: score and context products on mma.sync (m16n8k16).
template <typename Scalar>
struct Numerics;

template <>
struct Numerics<__half> {
  using Acc = float;
  static constexpr DType kDType = DType::kFloat16;
  static constexpr bool kTensorCores = true;
  static constexpr TanhKind kTanh = TanhKind::kFromExp;
};

template <>
struct Numerics<__nv_bfloat16> {
  using Acc = float;
  static constexpr DType kDType = DType::kBFloat16;
  static constexpr bool kTensorCores = true;
  static constexpr TanhKind kTanh = TanhKind::kHardware;
};

template <>
struct Numerics<float> {
  using Acc = float;
  static constexpr DType kDType = DType::kFloat32;
  static constexpr bool kTensorCores = false;
  static constexpr TanhKind kTanh = TanhKind::kAccurate;
};

template <>
struct Numerics<double> {
  using Acc = double;
  static constexpr DType kDType = DType::kFloat64;
  static constexpr bool kTensorCores = false;
  static constexpr TanhKind kTanh = TanhKind::kAccurate;
};

template <typename Scalar>
using AccOf = typename Numerics<Scalar>::Acc;

FUSED_RNN_HOST_DEVICE inline float to_acc(__half x) { return __half2float(x); }
FUSED_RNN_HOST_DEVICE inline float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
FUSED_RNN_HOST_DEVICE inline float to_acc(float x) { return x; }
FUSED_RNN_HOST_DEVICE inline double to_acc(double x) { return x; }

template <typename Scalar>
FUSED_RNN_HOST_DEVICE inline Scalar from_acc(typename Numerics<Scalar>::Acc x) {
  if constexpr (std::is_same_v<Scalar, __half>) {
    return __float2half_rn(x);
  } else if constexpr (std::is_same_v<Scalar, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return x;
  }
}

/// x rounded to Scalar and back: what the reference's casts to the input dtype do.
template <typename Scalar>
FUSED_RNN_HOST_DEVICE inline typename Numerics<Scalar>::Acc round_to(typename Numerics<Scalar>::Acc x) {
  return to_acc(from_acc<Scalar>(x));
}

FUSED_RNN_HOST_DEVICE inline float exp2_of(float x) { return exp2f(x); }
FUSED_RNN_HOST_DEVICE inline double exp2_of(double x) { return exp2(x); }
FUSED_RNN_HOST_DEVICE inline float log2_of(float x) { return log2f(x); }
FUSED_RNN_HOST_DEVICE inline double log2_of(double x) { return log2(x); }

template <typename T>
FUSED_RNN_HOST_DEVICE constexpr T infinity() {  // std::numeric_limits is host-only
  if constexpr (std::is_same_v<T, float>) {
    return __builtin_huge_valf();
  } else {
    return __builtin_huge_val();
  }
}

template <typename T>
FUSED_RNN_HOST_DEVICE constexpr T minus_infinity() {
  return -infinity<T>();
}

constexpr double kLog2e = 1.4426950408889634;  // log2(e)
constexpr double kLn2 = 0.6931471805599453;    // ln(2)

// ------------------------------------------------------------------------------------------------
// Fragment layouts of mma.sync.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16 with
// floating point type"). Lane l: group g = l / 4, thread-in-group t = l % 4.
// ------------------------------------------------------------------------------------------------

struct TileIndex {
  int row;
  int col;
};

/// Accumulator element e (0..3) of n-tile n (8 columns): row g + 8 (e / 2), column 8 n + 2 t + e % 2.
FUSED_RNN_HOST_DEVICE inline int accumulator_row(int lane, int e) { return lane / 4 + 8 * (e / 2); }
FUSED_RNN_HOST_DEVICE inline int accumulator_col(int lane, int n, int e) {
  return 8 * n + 2 * (lane % 4) + e % 2;
}

/// An accumulator tile P [16, 8 n] used as the A operand of the k step kk (columns 16 kk..16 kk + 15):
/// A register r (0..3) holds the pair of accumulator elements (element, element + 1) of n-tile `tile`.
struct AccumulatorPair {
  int tile;
  int element;
};

FUSED_RNN_HOST_DEVICE inline AccumulatorPair a_fragment_from_accumulator(int kk, int r) {
  return {2 * kk + r / 2, 2 * (r % 2)};
}

/// The row of a [16, k] row-major tile whose address lane l gives ldmatrix.x4 for the A fragment
/// of the k step at column k0: registers a0..a3 = (rows 0-7, k0), (rows 8-15, k0), (rows 0-7,
/// k0 + 8), (rows 8-15, k0 + 8).
FUSED_RNN_HOST_DEVICE inline TileIndex a_fragment_source(int lane, int k0) {
  return {lane % 16, k0 + 8 * (lane / 16)};
}

/// The same for the B fragments of two n-tiles (columns n0..n0+7 and n0+8..n0+15) of the k step
/// at k0, read from a [n, k] row-major tile (the columns' operand, B = tile^T): registers
/// b0, b1 of n-tile n0, then b0, b1 of n-tile n0 + 8.
FUSED_RNN_HOST_DEVICE inline TileIndex b_fragment_pair_source(int lane, int n0, int k0) {
  return {n0 + 8 * (lane / 16) + lane % 8, k0 + 8 * ((lane / 8) % 2)};
}

/// The same from a [k, n] row-major tile read with ldmatrix.x4.trans (B = tile).
FUSED_RNN_HOST_DEVICE inline TileIndex b_fragment_pair_source_trans(int lane, int k0, int n0) {
  return {k0 + 8 * ((lane / 8) % 2) + lane % 8, n0 + 8 * (lane / 16)};
}

// ------------------------------------------------------------------------------------------------
// Masking, online softmax, split-K combine.
// ------------------------------------------------------------------------------------------------

/// Key j of a batch row with `length` live keys takes part in the softmax.
FUSED_RNN_HOST_DEVICE inline bool key_is_live(int64_t j, int64_t length) { return j < length; }

/// A row of the online softmax: the running maximum of its base-2 scores and the sum of
/// exp2(s2 - max2) over the scores seen so far.
template <typename T>
struct SoftmaxRow {
  T max2;
  T sum;
};

template <typename T>
FUSED_RNN_HOST_DEVICE inline SoftmaxRow<T> softmax_row_start() {
  return {minus_infinity<T>(), T(0)};
}

/// Moves the row's maximum to include a tile whose largest score is tile_max2 and returns the
/// factor that the partial sum (done here) and the partial context (by the caller) are multiplied by.
template <typename T>
FUSED_RNN_HOST_DEVICE inline T softmax_row_rescale(SoftmaxRow<T>& row, T tile_max2) {
  const T new_max = row.max2 > tile_max2 ? row.max2 : tile_max2;
  const T factor = new_max == minus_infinity<T>() ? T(1) : exp2_of(row.max2 - new_max);
  row.max2 = new_max;
  row.sum *= factor;
  return factor;
}

/// exp2(s2 - max2): the unnormalised weight of a score; 0 for a masked score (s2 = -inf).
template <typename T>
FUSED_RNN_HOST_DEVICE inline T softmax_term(T s2, T max2) {
  return s2 == minus_infinity<T>() ? T(0) : exp2_of(s2 - max2);
}

/// The natural-log log-sum-exp of a finished row (-inf for a row that saw no live key).
template <typename T>
FUSED_RNN_HOST_DEVICE inline T softmax_row_lse(const SoftmaxRow<T>& row) {
  return row.sum > T(0) ? (row.max2 + log2_of(row.sum)) * T(kLn2) : minus_infinity<T>();
}

/// log(sum_s exp(lse_s)) over `splits` split-K partial rows at split_lse[s * stride].
template <typename T>
FUSED_RNN_HOST_DEVICE inline T combined_lse(const T* split_lse, int64_t splits, int64_t stride) {
  T top = minus_infinity<T>();
  for (int64_t s = 0; s < splits; ++s) top = split_lse[s * stride] > top ? split_lse[s * stride] : top;
  if (top == minus_infinity<T>()) return top;
  T sum = 0;
  for (int64_t s = 0; s < splits; ++s) sum += exp2_of((split_lse[s * stride] - top) * T(kLog2e));
  return top + log2_of(sum) * T(kLn2);
}

/// The share exp(lse_s - lse) of a split's normalised context in the combined one.
template <typename T>
FUSED_RNN_HOST_DEVICE inline T split_share(T split_lse, T lse) {
  return split_lse == minus_infinity<T>() ? T(0) : exp2_of((split_lse - lse) * T(kLog2e));
}

// ------------------------------------------------------------------------------------------------
// Backward: the recomputed weights and score gradients.
// ------------------------------------------------------------------------------------------------

/// P = exp(score - lse) = exp2(s2 - lse2) of a live score; 0 for a masked one.
template <typename T>
FUSED_RNN_HOST_DEVICE inline T recomputed_weight(T s2, T lse2, bool live) {
  return live ? exp2_of(s2 - lse2) : T(0);
}

/// dS = P (dP - delta), rounded to the input dtype as the reference rounds the score gradient
/// before its GEMMs.
template <typename Scalar>
FUSED_RNN_HOST_DEVICE inline typename Numerics<Scalar>::Acc score_gradient(
    typename Numerics<Scalar>::Acc p, typename Numerics<Scalar>::Acc dp,
    typename Numerics<Scalar>::Acc delta) {
  return round_to<Scalar>(p * (dp - delta));
}

// ------------------------------------------------------------------------------------------------
// The additive score v . tanh(pq_i + pk_j) and its gradient.
// ------------------------------------------------------------------------------------------------

template <TanhKind kTanh>
FUSED_RNN_HOST_DEVICE inline float additive_tanh(float x) {
#if defined(__CUDA_ARCH__)
  if constexpr (kTanh == TanhKind::kHardware) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  } else if constexpr (kTanh == TanhKind::kFromExp) {
    return 1.0f - __fdividef(2.0f, __expf(2.0f * x) + 1.0f);  // exp overflow: 2 / inf = 0, tanh = 1
  }
  return tanhf(x);
#else
  return std::tanh(x);  // the host has neither approximation; tests emulate their errors separately
#endif
}

template <TanhKind kTanh>
FUSED_RNN_HOST_DEVICE inline double additive_tanh(double x) {
  return tanh(x);
}

/// One feature's term of the additive score: v_a tanh(pq_a + pk_a).
template <TanhKind kTanh, typename T>
FUSED_RNN_HOST_DEVICE inline T additive_term(T v, T pq, T pk) {
  return v * additive_tanh<kTanh>(pq + pk);
}

/// One (pair, feature) term of the additive gradient, h = tanh(pq_a + pk_a): ds (1 - h^2) is the
/// share of d_pq_a and d_pk_a before the factor v_a, ds h the share of d_v_a.
template <typename T>
struct AdditiveGradientTerms {
  T pre;
  T v;
};

template <TanhKind kTanh, typename T>
FUSED_RNN_HOST_DEVICE inline AdditiveGradientTerms<T> additive_gradient_terms(T ds, T pq, T pk) {
  const T h = additive_tanh<kTanh>(pq + pk);
  return {ds * (T(1) - h * h), ds * h};
}

}  // namespace fused_rnn::cuda::attention
