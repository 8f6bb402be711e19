// The product of a single-step call: the step's one GEMM is gemm.h's over the weight where it is
// (a transposed view), since packing the whole weight into the step loops' panels
// (panel_gemm_impl.h) would cost a copy of it per call, more than the one product it would serve.
// (gemm.h's float64 GEMM packs one panel at a time, which stays in cache until it is used.)
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fused_rnn::cpu {

/// out [rows, N] = a [rows, K] @ op(W), or out += a @ op(W) when `accumulate`, in `dtype`:
/// op(W) = W^T for `weight` [N, K] when `transposed`, else W itself for `weight` [K, N].
/// a, weight and out are contiguous (row strides K, and N for out); nothing is copied.
void direct_product(c10::ScalarType dtype, const void* a, int64_t rows, const void* weight,
                    int64_t n, int64_t k, bool transposed, void* out, bool accumulate);

}  // namespace fused_rnn::cpu
