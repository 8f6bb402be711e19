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

/// x [M, K], w [N, K], b [N] or [M, N] or None -> x @ w^T + b [M, N] (any strides).
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
  // oneDNN's fused bias writes an output ATen allocates. glibc serves allocations up to its
  // largest mmap threshold (32 MiB on 64-bit Linux) from memory freed by earlier calls, but maps
  // larger ones afresh, whose first touch costs as much as the GEMM at large M: an output that
  // large comes from the buffer pool instead and takes the bias as a first pass over it
  // (measured with 2 threads: 16 MiB output 5.6 ms fused against 7.1 ms with the first pass,
  // 128 MiB on fresh memory 34 ms with the first pass in huge pages against 58 ms fused).
  const bool large = static_cast<uint64_t>(M * N * x.element_size()) > kLargestUnpooledBytes;
  if (b.has_value() && b->dim() == 1 && !large) {
    return linear_with_bias(x, w, *b);
  }
  Tensor y = empty_sequence({M, N}, x.options());
  if (b.has_value()) {
    y.copy_(b->expand({M, N}));
  }
  gemm_into(x, w.t(), y, /*accumulate=*/b.has_value());
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) { m.impl("native_linear", &linear); }

}  // namespace fused_rnn::cpu
