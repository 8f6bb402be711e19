// The CPU kernels of fused_rnn::native_{additive,dot}_attention_{forward,backward}: argument
// checks, conversion to the accumulation dtype, allocation, and the call into attention_impl.h
// (see attention.h for the algorithm).
#include "attention.h"

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

at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 ? at::kFloat : dtype;
}

void check_cpu(const char* name, const Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor for the native CPU kernels, got a ",
              t.device(), " tensor");
}

void check_shape(const char* name, const Tensor& t, at::IntArrayRef expected, const char* layout) {
  TORCH_CHECK(t.sizes() == expected, name, " must have shape ", layout, " = ", expected, ", got ",
              t.sizes());
}

void check_dtype(const char* name, const Tensor& t, at::ScalarType expected, const char* why) {
  TORCH_CHECK(t.scalar_type() == expected, name, " must have dtype ", expected, " (", why, "), got ",
              t.scalar_type());
}

/// query [B, Tq, F], keys [B, Tk, F], values [B, Tk, Dv]: the shape, with dtype and device checked.
AttentionShape check_inputs(const char* query_name, const Tensor& query, const char* keys_name,
                            const Tensor& keys, const Tensor& values,
                            const std::optional<Tensor>& key_lengths) {
  check_cpu(query_name, query);
  TORCH_CHECK(query.dim() == 3, query_name, " must have shape [B, Tq, F], got ", query.sizes());
  const auto dtype = query.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat ||
                  dtype == at::kDouble,
              query_name, " must be float16, bfloat16, float32 or float64, got ", dtype);
  TORCH_CHECK(keys.dim() == 3 && keys.size(0) == query.size(0) && keys.size(2) == query.size(2),
              keys_name, " must have shape [B, Tk, F] = [", query.size(0), ", Tk, ", query.size(2),
              "] (B and F of ", query_name, "), got ", keys.sizes());
  TORCH_CHECK(keys.size(1) >= 1, keys_name, " must hold at least one key (Tk >= 1), got shape ",
              keys.sizes());
  TORCH_CHECK(values.dim() == 3 && values.size(0) == keys.size(0) && values.size(1) == keys.size(1),
              "values must have shape [B, Tk, Dv] = [", keys.size(0), ", ", keys.size(1),
              ", Dv] (B and Tk of ", keys_name, "), got ", values.sizes());
  for (const auto& [name, t] : {std::pair{keys_name, &keys}, std::pair{"values", &values}}) {
    check_cpu(name, *t);
    check_dtype(name, *t, dtype, "the dtype of the queries");
  }
  AttentionShape shape{query.size(0), query.size(1), keys.size(1), query.size(2), values.size(2),
                       nullptr};
  if (key_lengths.has_value()) {
    const Tensor& lengths = *key_lengths;
    check_cpu("key_lengths", lengths);
    check_dtype("key_lengths", lengths, at::kLong, "int64 lengths");
    check_shape("key_lengths", lengths, {shape.batch}, "[B]");
    if (shape.batch > 0) {
      const int64_t low = lengths.min().item<int64_t>(), high = lengths.max().item<int64_t>();
      TORCH_CHECK(low >= 1 && high <= shape.keys, "key_lengths must lie in [1, ", shape.keys,
                  "] (Tk = ", shape.keys, " keys), got values in [", low, ", ", high, "]");
    }
  }
  return shape;
}

void check_v(const Tensor& v, const Tensor& pq, const AttentionShape& shape) {
  check_cpu("v", v);
  check_dtype("v", v, pq.scalar_type(), "the dtype of pq");
  check_shape("v", v, {shape.features}, "[A]");
}

void check_scale(double scale) {
  TORCH_CHECK(scale > 0 && std::isfinite(scale), "scale must be a finite positive number, got ",
              scale);
}

/// The tensors the backward receives from the forward and from autograd, checked against `shape`.
void check_backward_inputs(const AttentionShape& s, at::ScalarType dtype, const Tensor& grad_context,
                           const std::optional<Tensor>& grad_weights, const Tensor& context,
                           const Tensor& lse, const std::optional<Tensor>& weights) {
  const std::vector<int64_t> out{s.batch, s.queries, s.value_size}, rows{s.batch, s.queries},
      scores{s.batch, s.queries, s.keys};
  for (const auto& [name, t] : {std::pair{"grad_context", &grad_context}, std::pair{"context", &context}}) {
    check_cpu(name, *t);
    check_dtype(name, *t, dtype, "the dtype of the queries");
    check_shape(name, *t, out, "[B, Tq, Dv]");
  }
  check_cpu("lse", lse);
  check_dtype("lse", lse, accumulation_dtype(dtype), "the accumulation dtype of the queries");
  check_shape("lse", lse, rows, "[B, Tq]");
  TORCH_CHECK(grad_weights.has_value() == weights.has_value(),
              "grad_weights and weights must be given together (the forward's weights receive a "
              "gradient) or both be None, got grad_weights ",
              grad_weights.has_value() ? "given" : "None", " and weights ",
              weights.has_value() ? "given" : "None");
  if (weights.has_value()) {
    for (const auto& [name, t] : {std::pair{"grad_weights", &*grad_weights}, std::pair{"weights", &*weights}}) {
      check_cpu(name, *t);
      check_dtype(name, *t, dtype, "the dtype of the queries");
      check_shape(name, *t, scores, "[B, Tq, Tk]");
    }
  }
}

/// t in the accumulation dtype, contiguous (no copy when it already is).
Tensor acc(const Tensor& t) { return t.to(accumulation_dtype(t.scalar_type())).contiguous(); }

std::optional<Tensor> acc(const std::optional<Tensor>& t) {
  return t.has_value() ? std::optional<Tensor>(acc(*t)) : std::nullopt;
}

const void* data_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? t->const_data_ptr() : nullptr;
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
  Tensor context = at::empty({shape.batch, shape.queries, shape.value_size}, options);
  Tensor lse = at::empty({shape.batch, shape.queries}, options);
  Tensor weights = need_weights ? at::empty({shape.batch, shape.queries, shape.keys}, options)
                                : at::empty({0}, query.options());
  if (shape.batch * shape.queries > 0) {
    attention_kernels().forward(AttentionForward{
        dtype, score, shape, scale, query_acc.const_data_ptr(), keys_acc.const_data_ptr(),
        v ? v_acc.const_data_ptr() : nullptr, values_acc.const_data_ptr(),
        context.mutable_data_ptr(), lse.mutable_data_ptr(),
        need_weights ? weights.mutable_data_ptr() : nullptr});
  }
  return {context.to(dtype), lse, need_weights ? weights.to(dtype) : weights};
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
  Tensor d_query = at::empty(query.sizes(), options);
  Tensor d_keys = at::empty(keys.sizes(), options);
  Tensor d_values = at::empty(values.sizes(), options);
  Tensor d_v_rows = v ? at::empty(keys.sizes(), options) : Tensor();
  attention_kernels().backward(AttentionBackward{
      dtype, score, shape, scale, grad_context_acc.const_data_ptr(), data_or_null(grad_weights_acc),
      query_acc.const_data_ptr(), keys_acc.const_data_ptr(), v ? v_acc.const_data_ptr() : nullptr,
      values_acc.const_data_ptr(), context_acc.const_data_ptr(), lse_acc.const_data_ptr(),
      data_or_null(weights_acc), d_query.mutable_data_ptr(), d_keys.mutable_data_ptr(),
      v ? d_v_rows.mutable_data_ptr() : nullptr, d_values.mutable_data_ptr()});
  // d_v: the key rows' shares added in row order, so the sum does not depend on how ATen would
  // split a reduction across threads.
  Tensor d_v;
  if (v) {
    d_v = at::zeros({shape.features}, options);
    const Tensor rows = d_v_rows.view({shape.batch * shape.keys, shape.features});
    for (int64_t r = 0; r < rows.size(0); ++r) d_v.add_(rows[r]);
  }
  return {d_query.to(dtype), d_keys.to(dtype), v ? d_v.to(dtype) : d_v, d_values.to(dtype)};
}

std::tuple<Tensor, Tensor, Tensor> native_additive_attention_forward(
    const Tensor& pq, const Tensor& pk, const Tensor& v, const Tensor& values,
    const std::optional<Tensor>& key_lengths, bool need_weights) {
  const AttentionShape shape = check_inputs("pq", pq, "pk", pk, values, key_lengths);
  check_v(v, pq, shape);
  return attention_forward(AttentionScore::kAdditive, pq, pk, &v, values, key_lengths, shape, 1.0,
                           need_weights);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> native_additive_attention_backward(
    const Tensor& grad_context, const std::optional<Tensor>& grad_weights, const Tensor& pq,
    const Tensor& pk, const Tensor& v, const Tensor& values,
    const std::optional<Tensor>& key_lengths, const Tensor& context, const Tensor& lse,
    const std::optional<Tensor>& weights) {
  const AttentionShape shape = check_inputs("pq", pq, "pk", pk, values, key_lengths);
  check_v(v, pq, shape);
  check_backward_inputs(shape, pq.scalar_type(), grad_context, grad_weights, context, lse, weights);
  return attention_backward(AttentionScore::kAdditive, grad_context, grad_weights, pq, pk, &v,
                            values, key_lengths, context, lse, weights, shape, 1.0);
}

std::tuple<Tensor, Tensor, Tensor> native_dot_attention_forward(
    const Tensor& query, const Tensor& keys, const Tensor& values,
    const std::optional<Tensor>& key_lengths, double scale, bool need_weights) {
  const AttentionShape shape = check_inputs("query", query, "keys", keys, values, key_lengths);
  check_scale(scale);
  return attention_forward(AttentionScore::kDot, query, keys, nullptr, values, key_lengths, shape,
                           scale, need_weights);
}

std::tuple<Tensor, Tensor, Tensor> native_dot_attention_backward(
    const Tensor& grad_context, const std::optional<Tensor>& grad_weights, const Tensor& query,
    const Tensor& keys, const Tensor& values, const std::optional<Tensor>& key_lengths,
    const Tensor& context, const Tensor& lse, const std::optional<Tensor>& weights, double scale) {
  const AttentionShape shape = check_inputs("query", query, "keys", keys, values, key_lengths);
  check_scale(scale);
  check_backward_inputs(shape, query.scalar_type(), grad_context, grad_weights, context, lse, weights);
  auto [d_query, d_keys, d_v, d_values] =
      attention_backward(AttentionScore::kDot, grad_context, grad_weights, query, keys, nullptr,
                         values, key_lengths, context, lse, weights, shape, scale);
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
