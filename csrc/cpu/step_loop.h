// Helpers shared by the torch-facing CPU recurrence ops (rnn.cpp, lstm.cpp, gru.cpp): buffers made
// once per call, the rows of a call in length order (padded [T, B, ...] per-step tensors) or the
// packed layout of a PackedSequence ([N, ...]), the final states.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "../recurrence_checks.h"
#include "empty_sequence.h"
#include "sequence_kernels.h"

namespace fused_rnn::cpu {

/// `tensor` in `dtype` and contiguous; `tensor` itself when it already is (read only).
inline at::Tensor read_as(const at::Tensor& tensor, at::ScalarType dtype) {
  return tensor.to(dtype).contiguous();
}

/// A fresh contiguous copy of `tensor` in `dtype`, which the step loop overwrites.
inline at::Tensor working_copy(const at::Tensor& tensor, at::ScalarType dtype) {
  return tensor.to(tensor.options().dtype(dtype), /*non_blocking=*/false, /*copy=*/true,
                   at::MemoryFormat::Contiguous);
}

/// The rows of one call in the order the sequence kernels need: lengths non-increasing, so that
/// the rows live at each step are a prefix. Lengths in any other order are sorted once: the
/// row-indexed arguments are permuted on the way in (`in`) and the results back (`out`).
class RowOrder {
 public:
  /// Checks the lengths' values (in [1, steps]); no lengths: every row runs every step.
  RowOrder(const char* op, const std::optional<at::Tensor>& lengths, int64_t batch, int64_t steps)
      : batch_(batch), steps_(steps) {
    if (!lengths.has_value()) {
      return;
    }
    check_lengths_values(op, *lengths, steps);
    lengths_ = lengths->contiguous();
    const int64_t* values = lengths_.const_data_ptr<int64_t>();
    for (int64_t b = 1; b < batch; ++b) {
      if (values[b] > values[b - 1]) {
        order_ = at::argsort(lengths_, /*stable=*/true, /*dim=*/0, /*descending=*/true);
        inverse_ = at::argsort(order_);
        lengths_ = lengths_.index_select(0, order_);
        break;
      }
    }
  }

  SequenceRows rows() const {
    return {batch_, steps_, lengths_.defined() ? lengths_.const_data_ptr<int64_t>() : nullptr,
            nullptr};
  }

  /// The shape of a per-step tensor of `width` columns: [T, B, width].
  std::vector<int64_t> sequence(int64_t width) const { return {steps_, batch_, width}; }

  /// `tensor` with its rows (dimension `dim`) in the kernels' order.
  at::Tensor in(const at::Tensor& tensor, int64_t dim) const {
    return order_.defined() ? tensor.index_select(dim, order_) : tensor;
  }

  /// `tensor` (rows in the kernels' order along `dim`) with its rows in the caller's order.
  at::Tensor out(const at::Tensor& tensor, int64_t dim) const {
    return order_.defined() ? tensor.index_select(dim, inverse_) : tensor;
  }

 private:
  int64_t batch_, steps_;
  at::Tensor lengths_;  // sorted, or undefined without lengths
  at::Tensor order_;    // row i of the kernels is row order_[i] of the caller; undefined if sorted
  at::Tensor inverse_;
};

/// The packed layout of a PackedSequence's per-step tensors [N, ...]: step t holds rows
/// [0, batch_sizes[t]) of the batch, sorted by non-increasing length, from row offset(t) on.
/// The rows are already in the kernels' order: `in` and `out` keep them.
class PackedRows {
 public:
  /// Checks batch_sizes [T] (int64 on the CPU, non-increasing, each >= 1, summing to `rows`, the
  /// N of the packed tensor named `name`).
  PackedRows(const char* op, const at::Tensor& batch_sizes, const char* name, const at::Tensor& packed);

  int64_t steps() const { return steps_; }
  int64_t batch() const { return batch_; }
  SequenceRows rows() const {
    return {batch_, steps_, lengths_.const_data_ptr<int64_t>(), offsets_.const_data_ptr<int64_t>()};
  }
  std::vector<int64_t> sequence(int64_t width) const { return {rows_, width}; }
  at::Tensor in(const at::Tensor& tensor, int64_t) const { return tensor; }
  at::Tensor out(const at::Tensor& tensor, int64_t) const { return tensor; }

  /// Checks that the per-step tensor `name` is [N, ...] and returns a [T, B, ...] view of it with
  /// strides 0 over time and batch: what the padded ops' argument checks (recurrence_checks.h)
  /// read, its dtype, device and width, without a copy. Never read its elements.
  at::Tensor checked_view(const char* name, const at::Tensor& packed) const;

 private:
  const char* op_;
  int64_t steps_ = 0, batch_ = 0, rows_ = 0;
  at::Tensor lengths_;  // [B]: lengths[b] = the number of steps whose batch size exceeds b
  at::Tensor offsets_;  // [T + 1]: offsets[t] = sum(batch_sizes[:t])
};

/// h_n [B, P]: each row's output at its last step, hs[length - 1, b] (hs [T, B, P] in the
/// kernels' row order, or packed [N, P]), which is the carried state rounded to hs's dtype.
inline at::Tensor final_states(const at::Tensor& hs, const SequenceRows& rows) {
  const int64_t P = hs.size(-1);
  at::Tensor h_n = at::empty({rows.batch, P}, hs.options());
  const int64_t bytes = P * hs.element_size();
  const auto* source = static_cast<const char*>(hs.const_data_ptr());
  auto* target = static_cast<char*>(h_n.data_ptr());
  for (int64_t b = 0; b < rows.batch; ++b) {
    const int64_t last = (rows.lengths == nullptr ? rows.steps : rows.lengths[b]) - 1;
    std::memcpy(target + b * bytes, source + (rows.offset(last) + b) * bytes, bytes);
  }
  return h_n;
}

}  // namespace fused_rnn::cpu
