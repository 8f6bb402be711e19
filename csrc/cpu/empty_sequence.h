// Allocation of the large buffers of one call ([T, B, ...] sequences, the input projection of
// every step), from the buffer pool (buffer_pool.h).
#pragma once

#include <ATen/Context.h>
#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>

#include <limits>

#include "buffer_pool.h"

namespace fused_rnn::cpu {

/// at::empty for a per-sequence CPU buffer (often tens of MB): above kLargestUnpooledBytes its
/// memory is a huge-page block reused from an earlier call, or freshly mapped and faulted in.
/// Filled with NaN, as at::empty is, under torch.use_deterministic_algorithms with
/// fill_uninitialized_memory.
inline at::Tensor empty_sequence(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  at::Tensor tensor(at::detail::empty_generic(sizes, buffer_pool(),
                                              c10::DispatchKeySet(c10::DispatchKey::CPU),
                                              options.dtype().toScalarType(), std::nullopt));
  const at::Context& context = at::globalContext();
  if (C10_UNLIKELY(context.deterministicAlgorithms() &&
                   context.deterministicFillUninitializedMemory())) {
    tensor.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return tensor;
}

}  // namespace fused_rnn::cpu
