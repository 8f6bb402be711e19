// The CPU kernels of fused_rnn::native_{additive,dot}_attention_{forward,backward}: argument
// checks (../attention_checks.h, shared with the CUDA kernels), conversion to the accumulation
// dtype, allocation (the outputs and the kernels' scratch from the buffer pool, as the recurrences'
// sequences: a fresh multi-MiB buffer per call costs more to fault in than the kernel to fill), and
// the call into attention_impl.h (see attention.h for the algorithm).
#include "attention.h"

#include "../attention_checks.h"
#include "empty_sequence.h"
#include "../recurrence_checks.h"  // accumulation_dtype

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Version.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace fused_rnn::cpu {

const AttentionKernels& attention_kernels() {
  static const AttentionKernels& chosen = []() -> const AttentionKernels& {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512") {
      return AVX512::attention;
    }
    if (capability == "AVX2") {
      return AVX2::attention;
    }
#endif
    return DEFAULT::attention;
  }();
  return chosen;
}

namespace {

using at::Tensor;

/// The kernels' shape: the checked sizes and the key lengths' data (set by the caller).
AttentionShape shape_of(const AttentionSizes& n) {
  return {n.batch, n.queries, n.keys, n.features, n.value_size, nullptr};
}

/// t in the accumulation dtype, contiguous (no copy when it already is).
Tensor acc(const Tensor& t) { return t.to(accumulation_dtype(t.scalar_type())).contiguous(); }

std::optional<Tensor> acc(const std::optional<Tensor>& t) {
  return t.has_value() ? std::optional<Tensor>(acc(*t)) : std::nullopt;
}

const void* data_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? t->const_data_ptr() : nullptr;
}

/// Scratch for a transposed copy of rows [B, Tk, width] (TransposedRows in attention_impl.h).
Tensor transposed_scratch(const AttentionShape& shape, int64_t width, const at::TensorOptions& options) {
  return empty_sequence({shape.batch, width, transposed_key_stride(shape.keys)}, options);
}

std::tuple<Tensor, Tensor, Tensor> attention_forward(AttentionScore score, const Tensor& query,
                                                     const Tensor& keys, const Tensor* v,
                                                     const Tensor& values,
                                                     const std::optional<Tensor>& key_lengths,
                                                     AttentionShape shape, double scale,
                                                     bool need_weights) {
  const auto dtype = query.scalar_type();
  const auto options = query.options().dtype(accumulation_dtype(dtype));
  const Tensor query_acc = acc(query), keys_acc = acc(keys), values_acc = acc(values);
  const Tensor v_acc = v ? acc(*v) : Tensor();
  const Tensor lengths = key_lengths.has_value() ? key_lengths->contiguous() : Tensor();
  shape.key_lengths = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
  Tensor context = empty_sequence({shape.batch, shape.queries, shape.value_size}, options);
  Tensor lse = at::empty({shape.batch, shape.queries}, options);
  Tensor weights = need_weights ? empty_sequence({shape.batch, shape.queries, shape.keys}, options)
                                : at::empty({0}, query.options());
  if (shape.batch * shape.queries > 0) {
    const bool copy_keys = !v && transposes_keys(shape);
    const Tensor keys_across = copy_keys ? transposed_scratch(shape, shape.features, options) : Tensor();
    attention_kernels().forward(AttentionForward{
        dtype, score, shape, scale, query_acc.const_data_ptr(), keys_acc.const_data_ptr(),
        v ? v_acc.const_data_ptr() : nullptr, values_acc.const_data_ptr(),
        context.mutable_data_ptr(), lse.mutable_data_ptr(),
        need_weights ? weights.mutable_data_ptr() : nullptr,
        copy_keys ? keys_across.mutable_data_ptr() : nullptr});
  }
  return {context.to(dtype), lse, need_weights ? weights.to(dtype) : weights};
}

/// rows [N, F], contiguous -> [F]: the rows added one after another, row 0 first, so that the sum
/// does not depend on how ATen would split a reduction across threads. (One ATen add_ per row
/// cost about 1 us each: 3.5 ms of a 5 ms backward at B = 64, Tk = 60.)
Tensor sum_rows_in_order(const Tensor& rows) {
  Tensor sum = at::zeros({rows.size(1)}, rows.options());
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "sum_rows_in_order", [&] {
    const int64_t count = rows.size(0), width = rows.size(1);
    const scalar_t* row = rows.const_data_ptr<scalar_t>();
    scalar_t* out = sum.mutable_data_ptr<scalar_t>();
    for (int64_t r = 0; r < count; ++r, row += width) {
      for (int64_t f = 0; f < width; ++f) {
        out[f] += row[f];
      }
    }
  });
  return sum;
}

/// -> d_query, d_keys, d_v (additive; undefined for dot), d_values, in the input dtype.
std::tuple<Tensor, Tensor, Tensor, Tensor> attention_backward(
    AttentionScore score, const Tensor& grad_context, const std::optional<Tensor>& grad_weights,
    const Tensor& query, const Tensor& keys, const Tensor* v, const Tensor& values,
    const std::optional<Tensor>& key_lengths, const Tensor& context, const Tensor& lse,
    const std::optional<Tensor>& weights, AttentionShape shape, double scale) {
  const auto dtype = query.scalar_type();
  const auto options = query.options().dtype(accumulation_dtype(dtype));
  const Tensor query_acc = acc(query), keys_acc = acc(keys), values_acc = acc(values);
  const Tensor grad_context_acc = acc(grad_context), context_acc = acc(context), lse_acc = acc(lse);
  const auto grad_weights_acc = acc(grad_weights), weights_acc = acc(weights);
  const Tensor v_acc = v ? acc(*v) : Tensor();
  const Tensor lengths = key_lengths.has_value() ? key_lengths->contiguous() : Tensor();
  shape.key_lengths = lengths.defined() ? lengths.const_data_ptr<int64_t>() : nullptr;
  Tensor d_query = empty_sequence(query.sizes(), options);
  Tensor d_keys = empty_sequence(keys.sizes(), options);
  Tensor d_values = empty_sequence(values.sizes(), options);
  Tensor d_v_rows = v ? empty_sequence(keys.sizes(), options) : Tensor();
  const bool transposed = transposes_keys(shape);
  const Tensor keys_across = transposed && !v ? transposed_scratch(shape, shape.features, options) : Tensor();
  const Tensor values_across = transposed ? transposed_scratch(shape, shape.value_size, options) : Tensor();
  attention_kernels().backward(AttentionBackward{
      dtype, score, shape, scale, grad_context_acc.const_data_ptr(), data_or_null(grad_weights_acc),
      query_acc.const_data_ptr(), keys_acc.const_data_ptr(), v ? v_acc.const_data_ptr() : nullptr,
      values_acc.const_data_ptr(), context_acc.const_data_ptr(), lse_acc.const_data_ptr(),
      data_or_null(weights_acc), d_query.mutable_data_ptr(), d_keys.mutable_data_ptr(),
      v ? d_v_rows.mutable_data_ptr() : nullptr, d_values.mutable_data_ptr(),
      keys_across.defined() ? keys_across.mutable_data_ptr() : nullptr,
      values_across.defined() ? values_across.mutable_data_ptr() : nullptr});
  const Tensor d_v =
      v ? sum_rows_in_order(d_v_rows.view({shape.batch * shape.keys, shape.features})) : Tensor();
  return {d_query.to(dtype), d_keys.to(dtype), v ? d_v.to(dtype) : d_v, d_values.to(dtype)};
}

std::tuple<Tensor, Tensor, Tensor> native_additive_attention_forward(
    const Tensor& pq, const Tensor& pk, const Tensor& v, const Tensor& values,
    const std::optional<Tensor>& key_lengths, bool need_weights) {
  const auto sizes = check_additive_attention_forward(at::kCPU, pq, pk, v, values, key_lengths);
  return attention_forward(AttentionScore::kAdditive, pq, pk, &v, values, key_lengths, shape_of(sizes), 1.0,
                           need_weights);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> native_additive_attention_backward(
    const Tensor& grad_context, const std::optional<Tensor>& grad_weights, const Tensor& pq,
    const Tensor& pk, const Tensor& v, const Tensor& values,
    const std::optional<Tensor>& key_lengths, const Tensor& context, const Tensor& lse,
    const std::optional<Tensor>& weights) {
  const auto sizes = check_additive_attention_backward(at::kCPU, grad_context, grad_weights, pq, pk, v, values,
                                                       key_lengths, context, lse, weights);
  return attention_backward(AttentionScore::kAdditive, grad_context, grad_weights, pq, pk, &v,
                            values, key_lengths, context, lse, weights, shape_of(sizes), 1.0);
}

std::tuple<Tensor, Tensor, Tensor> native_dot_attention_forward(
    const Tensor& query, const Tensor& keys, const Tensor& values,
    const std::optional<Tensor>& key_lengths, double scale, bool need_weights) {
  const auto sizes = check_dot_attention_forward(at::kCPU, query, keys, values, key_lengths, scale);
  return attention_forward(AttentionScore::kDot, query, keys, nullptr, values, key_lengths, shape_of(sizes),
                           scale, need_weights);
}

std::tuple<Tensor, Tensor, Tensor> native_dot_attention_backward(
    const Tensor& grad_context, const std::optional<Tensor>& grad_weights, const Tensor& query,
    const Tensor& keys, const Tensor& values, const std::optional<Tensor>& key_lengths,
    const Tensor& context, const Tensor& lse, const std::optional<Tensor>& weights, double scale) {
  const auto sizes = check_dot_attention_backward(at::kCPU, grad_context, grad_weights, query, keys, values,
                                                  key_lengths, context, lse, weights, scale);
  auto [d_query, d_keys, d_v, d_values] =
      attention_backward(AttentionScore::kDot, grad_context, grad_weights, query, keys, nullptr,
                         values, key_lengths, context, lse, weights, shape_of(sizes), scale);
  return {d_query, d_keys, d_values};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("native_additive_attention_forward", &native_additive_attention_forward);
  m.impl("native_additive_attention_backward", &native_additive_attention_backward);
  m.impl("native_dot_attention_forward", &native_dot_attention_forward);
  m.impl("native_dot_attention_backward", &native_dot_attention_backward);
}

}  // namespace fused_rnn::cpu
