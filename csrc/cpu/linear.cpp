// fused_rnn::native_linear: y = x @ w^T + b on the CPU through gemm.h (oneDNN for float32).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>

#include "empty_sequence.h"
#include "gemm.h"

namespace fused_rnn::cpu {
namespace {

using at::Tensor;

constexpr const char* kOp = "fused_rnn::native_linear";

/// glibc serves a chunk of up to 32 MiB (the bytes, its header and alignment, rounded up to
/// pages) from its heap: one of exactly 32 MiB already is mapped afresh.
constexpr size_t kLargestFusedBiasBytes = size_t{31} << 20;

}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), kOp,
              ": x must be [M, K] and w [N, K], got shapes ", x.sizes(), " and ", w.sizes());
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), kOp, ": w must have the dtype of x (",
              x.scalar_type(), "), got ", w.scalar_type());
  const int64_t M = x.size(0), N = w.size(0);
  if (b.has_value()) {
    TORCH_CHECK(b->scalar_type() == x.scalar_type(), kOp, ": b must have the dtype of x (",
                x.scalar_type(), "), got ", b->scalar_type());
    TORCH_CHECK(b->sizes() == at::IntArrayRef({N}) || b->sizes() == at::IntArrayRef({M, N}), kOp,
                ": b must have shape [N] = [", N, "] or [M, N] = [", M, ", ", N, "], got ",
                b->sizes());
  }
  // oneDNN's fused bias writes an output ATen allocates. glibc maps one above 32 MiB afresh at
  // every call, whose first touch costs as much as the GEMM at large M: such an output comes from
  // the buffer pool instead and takes the bias in a pass after the GEMM (oneDNN's GEMM
  // accumulating onto a copy of the bias is slower: [16384, 256] @ [256, 1024] with 2 threads,
  // 20.6 ms without bias, 24.1 ms onto the bias, 20.5 ms with the pass after). A smaller one
  // keeps the fused bias, which the pass would cost 3-7 % of the GEMM ([1024 to 7000, 256] @
  // [256, 1024]), though glibc may fault it in afresh after trimming its heap.
  const bool beyond_glibc_heap =
      static_cast<uint64_t>(M * N * x.element_size()) > kLargestFusedBiasBytes;
  if (b.has_value() && b->dim() == 1 && !beyond_glibc_heap) {
    return linear_with_bias(x, w, *b);
  }
  Tensor y = empty_sequence({M, N}, x.options());
  gemm_into(x, w.t(), y, /*accumulate=*/false);
  if (b.has_value()) {
    y.add_(*b);
  }
  return y;
}

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) { m.impl("native_linear", &linear); }

}  // namespace fused_rnn::cpu
