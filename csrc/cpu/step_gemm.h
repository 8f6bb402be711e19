// The GEMM half of one recurrence time step on the CPU (the pointwise half is cell_steps.h).
//
// Every step of one call multiplies by the same weight. A plain GEMM call re-packs that weight
// into its kernel's panel layout at every step (a copy of the whole weight per step, about a third
// of the step's time at B = 32, H = 512 on two cores). StepGemm packs it once per call where MKL's
// packed-GEMM API is in the process (PyTorch built with MKL: float32 weights) and falls back to
// at::mm_out on a row-major copy otherwise.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fused_rnn::cpu {

/// Whether MKL's packed-GEMM API was found in the process (StepGemm then packs float32 weights).
bool mkl_packed_gemm_available();

class StepGemm {
 public:
  /// op(W) = W^T for `weight` [N, K] when `transposed`, else W itself for `weight` [K, N], read in
  /// `dtype`; `rows` is M of every product and `steps` how many products the call runs.
  StepGemm(const at::Tensor& weight, bool transposed, int64_t rows, int64_t steps,
           at::ScalarType dtype);

  /// out [M, N] = a [M, K] @ op(W), or out += a @ op(W) when `accumulate`; a and out contiguous,
  /// in the dtype given at construction.
  void operator()(const at::Tensor& a, at::Tensor& out, bool accumulate = false) const;

  /// Whether the weight was packed once for MKL's packed GEMM (else every step runs at::mm_out).
  bool packed() const { return packed_.defined(); }

 private:
  at::Tensor operand_;  // op(W) [K, N], row-major, when not packed
  at::Tensor packed_;   // op(W) in MKL's packed layout (bytes), when packed
  int64_t rows_, cols_, depth_;  // M, N, K
};

}  // namespace fused_rnn::cpu
