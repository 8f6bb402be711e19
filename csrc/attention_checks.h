// Argument validation of the native attention ops (csrc/ops.cpp), shared by the CPU and CUDA
// implementations.
//
// Each check_* function validates ranks, shapes, dtypes and devices of one op's arguments and the
// key lengths' values (raising a c10::Error that names the argument, what was expected and what
// was given) and returns the sizes the kernels run with. `device` is the device type the kernels
// run on: every tensor must be on it, and on the device of the queries.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <optional>

namespace fused_rnn {

/// B batch rows, Tq queries, Tk keys, F score features (A additive, D dot), Dv value size.
struct AttentionSizes {
  int64_t batch;
  int64_t queries;
  int64_t keys;
  int64_t features;
  int64_t value_size;
};

AttentionSizes check_additive_attention_forward(c10::DeviceType device, const at::Tensor& pq,
                                                const at::Tensor& pk, const at::Tensor& v,
                                                const at::Tensor& values,
                                                const std::optional<at::Tensor>& key_lengths);

AttentionSizes check_dot_attention_forward(c10::DeviceType device, const at::Tensor& query,
                                           const at::Tensor& keys, const at::Tensor& values,
                                           const std::optional<at::Tensor>& key_lengths, double scale);

/// The forward's checks, plus the tensors the backward receives from the forward and autograd:
/// grad_context and context [B, Tq, Dv], lse [B, Tq] in the accumulation dtype, and grad_weights
/// and weights [B, Tq, Tk] both or neither.
AttentionSizes check_additive_attention_backward(
    c10::DeviceType device, const at::Tensor& grad_context, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& pq, const at::Tensor& pk, const at::Tensor& v, const at::Tensor& values,
    const std::optional<at::Tensor>& key_lengths, const at::Tensor& context, const at::Tensor& lse,
    const std::optional<at::Tensor>& weights);

AttentionSizes check_dot_attention_backward(
    c10::DeviceType device, const at::Tensor& grad_context, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
    const std::optional<at::Tensor>& key_lengths, const at::Tensor& context, const at::Tensor& lse,
    const std::optional<at::Tensor>& weights, double scale);

}  // namespace fused_rnn
