// The torch-facing layer of the CUDA attention kernels: argument checks (../attention_checks.h,
// shared with the CPU kernels), contiguous inputs, the tiling (attention_plan.h), allocation of
// the outputs and workspaces, the current stream, and the registration of
// fused_rnn::native_{additive,dot}_attention_{forward,backward} for CUDA tensors.
//
// The forward returns (context, lse, weights or an empty [0] tensor); the backward computes
// delta = rowsum(grad_context * context) (+ rowsum(grad_weights * weights)) with ATen, runs the
// three backward passes, and sums the split-K partials of d_query and the key blocks' shares of
// d_v in a fixed order (deterministic).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <cstdint>
#include <optional>
#include <tuple>

#include "../attention_checks.h"
#include "../recurrence_checks.h"  // accumulation_dtype
#include "attention_launch.h"

namespace fused_rnn::cuda {
namespace {

using at::Tensor;

DType attention_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "fused_rnn CUDA attention kernels: unsupported dtype ", dtype);
  }
}

void check_status(const char* what, cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, "fused_rnn CUDA attention ", what, " failed: ", cudaGetErrorString(status));
}

AttentionDeviceLimits device_limits(const Tensor& anchor) {
  AttentionDeviceLimits limits{};
  check_status("device query", attention_device_limits(anchor.device().index(), &limits));
  return limits;
}

/// The tiling of `pass`, checked to fit the device and the grid's limits.
AttentionTiling plan(AttentionPass pass, AttentionScore score, DType dtype, const AttentionShape& shape,
                     const AttentionDeviceLimits& limits) {
  const AttentionTiling tiling = plan_attention(pass, score, dtype, shape, limits);
  TORCH_CHECK(tiling.shared_bytes <= limits.shared_bytes, "fused_rnn CUDA attention: features F = ",
              shape.features, " and value size Dv = ", shape.value_size, " need ", tiling.shared_bytes,
              " bytes of shared memory per block even in the smallest tiling; this GPU allows ",
              limits.shared_bytes);
  const AttentionGrid grid = attention_grid(pass, shape, tiling);
  TORCH_CHECK(grid.x <= INT_MAX && grid.z <= 65535 && shape.batch * shape.queries <= INT_MAX,
              "fused_rnn CUDA attention: B = ", shape.batch,
              " batch rows of ", shape.queries, " queries and ", shape.keys,
              " keys need more thread blocks than one launch holds");
  return tiling;
}

AttentionShape shape_of(const AttentionSizes& n) {
  return {n.batch, n.queries, n.keys, n.features, n.value_size};
}

bool aligned_16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0; }

/// Rows of [*, F] and [*, Dv] matrices of these tensors all start 16-byte aligned.
bool rows_aligned(const AttentionShape& n, int64_t element_bytes, std::initializer_list<const Tensor*> tensors) {
  const int64_t vector = 16 / element_bytes;
  bool aligned = n.features % vector == 0 && n.value_size % vector == 0;
  for (const Tensor* t : tensors) aligned = aligned && aligned_16(*t);
  return aligned;
}

cudaStream_t stream_of(const Tensor& anchor) {
  return c10::cuda::getCurrentCUDAStream(anchor.device().index()).stream();
}

std::tuple<Tensor, Tensor, Tensor> attention_forward(AttentionScore score, const AttentionSizes& sizes,
                                                     const Tensor& query_in, const Tensor& keys_in,
                                                     const Tensor* v_in, const Tensor& values_in,
                                                     const std::optional<Tensor>& key_lengths, double scale,
                                                     bool need_weights) {
  const c10::cuda::CUDAGuard guard(query_in.device());
  const auto dtype = query_in.scalar_type();
  const auto acc = query_in.options().dtype(accumulation_dtype(dtype));
  const AttentionShape n = shape_of(sizes);
  const Tensor query = query_in.contiguous(), keys = keys_in.contiguous(), values = values_in.contiguous();
  const Tensor v = v_in ? v_in->contiguous() : Tensor();
  const Tensor lengths = key_lengths.has_value() ? key_lengths->contiguous() : Tensor();
  Tensor context = at::empty({n.batch, n.queries, n.value_size}, query.options());
  Tensor lse = at::empty({n.batch, n.queries}, acc);
  Tensor weights = need_weights ? at::empty({n.batch, n.queries, n.keys}, query.options())
                                : at::empty({0}, query.options());
  if (n.batch * n.queries == 0) return {context, lse, weights};

  const DType kind = attention_dtype(dtype);
  const AttentionTiling tiling = plan(AttentionPass::kForward, score, kind, n, device_limits(query));
  // Raw scores in the accumulation dtype until every row's lse is known (the weights themselves
  // when that is the input dtype).
  const Tensor scores = !need_weights ? Tensor()
                        : acc.dtype() == query.dtype() ? weights
                                                       : at::empty({n.batch, n.queries, n.keys}, acc);
  const Tensor split_context =
      tiling.splits > 1 ? at::empty({tiling.splits, n.batch, n.queries, n.value_size}, acc) : Tensor();
  const Tensor split_lse = tiling.splits > 1 ? at::empty({tiling.splits, n.batch, n.queries}, acc) : Tensor();

  AttentionForwardParams p{};
  p.dtype = kind;
  p.score = score;
  p.shape = n;
  p.scale = scale;
  p.aligned = rows_aligned(n, query.element_size(), {&query, &keys, &values});
  p.query = query.const_data_ptr();
  p.keys = keys.const_data_ptr();
  p.v = v.defined() ? v.const_data_ptr() : nullptr;
  p.values = values.const_data_ptr();
  p.key_lengths = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
  p.context = context.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr();
  p.scores = need_weights ? scores.mutable_data_ptr() : nullptr;
  p.weights = need_weights ? weights.mutable_data_ptr() : nullptr;
  p.split_context = split_context.defined() ? split_context.mutable_data_ptr() : nullptr;
  p.split_lse = split_lse.defined() ? split_lse.mutable_data_ptr() : nullptr;
  check_status("forward launch", launch_attention_forward(p, tiling, stream_of(query)));
  return {context, lse, weights};
}

/// -> d_query, d_keys, d_v (additive; undefined for dot), d_values.
std::tuple<Tensor, Tensor, Tensor, Tensor> attention_backward(
    AttentionScore score, const AttentionSizes& sizes, const Tensor& grad_context_in,
    const std::optional<Tensor>& grad_weights_in, const Tensor& query_in, const Tensor& keys_in,
    const Tensor* v_in, const Tensor& values_in, const std::optional<Tensor>& key_lengths,
    const Tensor& context, const Tensor& lse_in, const std::optional<Tensor>& weights, double scale) {
  const c10::cuda::CUDAGuard guard(query_in.device());
  const auto dtype = query_in.scalar_type();
  const auto acc = query_in.options().dtype(accumulation_dtype(dtype));
  const AttentionShape n = shape_of(sizes);
  const bool additive = score == AttentionScore::kAdditive;
  const Tensor query = query_in.contiguous(), keys = keys_in.contiguous(), values = values_in.contiguous();
  const Tensor grad_context = grad_context_in.contiguous(), lse = lse_in.contiguous();
  const Tensor v = additive ? v_in->contiguous() : Tensor();
  const Tensor lengths = key_lengths.has_value() ? key_lengths->contiguous() : Tensor();
  const Tensor grad_weights = grad_weights_in.has_value() ? grad_weights_in->contiguous() : Tensor();
  Tensor d_query = at::empty(query.sizes(), query.options());
  Tensor d_keys = at::empty(keys.sizes(), keys.options());
  Tensor d_values = at::empty(values.sizes(), values.options());
  if (n.batch * n.queries == 0) {
    d_keys.zero_();
    d_values.zero_();
    return {d_query, d_keys, additive ? at::zeros_like(v) : Tensor(), d_values};
  }
  Tensor delta = (grad_context.to(acc.dtype()) * context.to(acc.dtype())).sum(-1);
  if (grad_weights.defined()) delta = delta + (grad_weights.to(acc.dtype()) * weights->to(acc.dtype())).sum(-1);
  delta = delta.contiguous();

  const DType kind = attention_dtype(dtype);
  const AttentionDeviceLimits limits = device_limits(query);
  const AttentionBackwardTilings tilings{plan(AttentionPass::kQueries, score, kind, n, limits),
                                         plan(AttentionPass::kKeys, score, kind, n, limits),
                                         plan(AttentionPass::kValues, score, kind, n, limits)};
  const Tensor split_d_query = tilings.queries.splits > 1
                                   ? at::empty({tilings.queries.splits, n.batch, n.queries, n.features}, acc)
                                   : Tensor();
  const Tensor d_v_blocks = additive ? at::empty({n.batch, tilings.keys.row_blocks, n.features}, acc) : Tensor();

  AttentionBackwardParams p{};
  p.dtype = kind;
  p.score = score;
  p.shape = n;
  p.scale = scale;
  p.aligned = rows_aligned(n, query.element_size(), {&query, &keys, &values, &grad_context});
  p.grad_context = grad_context.const_data_ptr();
  p.grad_weights = grad_weights.defined() ? grad_weights.const_data_ptr() : nullptr;
  p.query = query.const_data_ptr();
  p.keys = keys.const_data_ptr();
  p.v = additive ? v.const_data_ptr() : nullptr;
  p.values = values.const_data_ptr();
  p.key_lengths = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
  p.lse = lse.const_data_ptr();
  p.delta = delta.const_data_ptr();
  p.d_query = d_query.mutable_data_ptr();
  p.split_d_query = split_d_query.defined() ? split_d_query.mutable_data_ptr() : nullptr;
  p.d_keys = d_keys.mutable_data_ptr();
  p.d_values = d_values.mutable_data_ptr();
  p.d_v_blocks = additive ? d_v_blocks.mutable_data_ptr() : nullptr;
  check_status("backward launch", launch_attention_backward(p, tilings, stream_of(query)));

  if (split_d_query.defined()) {  // the splits' partial sums, added in split order
    const Tensor summed = split_d_query.sum(0);
    d_query.copy_(additive ? summed * v.to(acc.dtype()) : summed);
  }
  Tensor d_v = additive ? d_v_blocks.sum({0, 1}).to(dtype) : Tensor();
  return {d_query, d_keys, d_v, d_values};
}

std::tuple<Tensor, Tensor, Tensor> native_additive_attention_forward(
    const Tensor& pq, const Tensor& pk, const Tensor& v, const Tensor& values,
    const std::optional<Tensor>& key_lengths, bool need_weights) {
  const auto sizes = check_additive_attention_forward(at::kCUDA, pq, pk, v, values, key_lengths);
  return attention_forward(AttentionScore::kAdditive, sizes, pq, pk, &v, values, key_lengths, 1.0, need_weights);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> native_additive_attention_backward(
    const Tensor& grad_context, const std::optional<Tensor>& grad_weights, const Tensor& pq,
    const Tensor& pk, const Tensor& v, const Tensor& values, const std::optional<Tensor>& key_lengths,
    const Tensor& context, const Tensor& lse, const std::optional<Tensor>& weights) {
  const auto sizes = check_additive_attention_backward(at::kCUDA, grad_context, grad_weights, pq, pk, v, values,
                                                       key_lengths, context, lse, weights);
  return attention_backward(AttentionScore::kAdditive, sizes, grad_context, grad_weights, pq, pk, &v, values,
                            key_lengths, context, lse, weights, 1.0);
}

std::tuple<Tensor, Tensor, Tensor> native_dot_attention_forward(
    const Tensor& query, const Tensor& keys, const Tensor& values, const std::optional<Tensor>& key_lengths,
    double scale, bool need_weights) {
  const auto sizes = check_dot_attention_forward(at::kCUDA, query, keys, values, key_lengths, scale);
  return attention_forward(AttentionScore::kDot, sizes, query, keys, nullptr, values, key_lengths, scale,
                           need_weights);
}

std::tuple<Tensor, Tensor, Tensor> native_dot_attention_backward(
    const Tensor& grad_context, const std::optional<Tensor>& grad_weights, const Tensor& query,
    const Tensor& keys, const Tensor& values, const std::optional<Tensor>& key_lengths, const Tensor& context,
    const Tensor& lse, const std::optional<Tensor>& weights, double scale) {
  const auto sizes = check_dot_attention_backward(at::kCUDA, grad_context, grad_weights, query, keys, values,
                                                  key_lengths, context, lse, weights, scale);
  auto [d_query, d_keys, d_v, d_values] = attention_backward(AttentionScore::kDot, sizes, grad_context,
                                                             grad_weights, query, keys, nullptr, values,
                                                             key_lengths, context, lse, weights, scale);
  return {d_query, d_keys, d_values};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("native_additive_attention_forward", &native_additive_attention_forward);
  m.impl("native_additive_attention_backward", &native_additive_attention_backward);
  m.impl("native_dot_attention_forward", &native_dot_attention_forward);
  m.impl("native_dot_attention_backward", &native_dot_attention_backward);
}

}  // namespace fused_rnn::cuda
