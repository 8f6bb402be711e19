// Argument validation of the native attention ops (see attention_checks.h).
#include "attention_checks.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <utility>
#include <vector>

#include "recurrence_checks.h"  // accumulation_dtype

namespace fused_rnn {

namespace {

using at::Tensor;

/// `t` lives where the kernels run: a `device` tensor, on the device of the queries.
void check_device(c10::DeviceType device, const char* name, const Tensor& t, const char* query_name,
                  const Tensor& query) {
  const char* kind = device == c10::DeviceType::CUDA ? "CUDA" : "CPU";
  TORCH_CHECK(t.device().type() == device, name, " must be a ", kind, " tensor for the native ", kind,
              " kernels, got a ", t.device(), " tensor");
  TORCH_CHECK(t.device() == query.device(), name, " must be on ", query.device(), " (the device of ",
              query_name, "), got ", t.device());
}

void check_shape(const char* name, const Tensor& t, at::IntArrayRef expected, const char* layout) {
  TORCH_CHECK(t.sizes() == expected, name, " must have shape ", layout, " = ", expected, ", got ",
              t.sizes());
}

void check_dtype(const char* name, const Tensor& t, at::ScalarType expected, const char* why) {
  TORCH_CHECK(t.scalar_type() == expected, name, " must have dtype ", expected, " (", why, "), got ",
              t.scalar_type());
}

/// query [B, Tq, F], keys [B, Tk, F], values [B, Tk, Dv], key_lengths [B] in [1, Tk].
AttentionSizes check_inputs(c10::DeviceType device, const char* query_name, const Tensor& query,
                            const char* keys_name, const Tensor& keys, const Tensor& values,
                            const std::optional<Tensor>& key_lengths) {
  check_device(device, query_name, query, query_name, query);
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
    check_device(device, name, *t, query_name, query);
    check_dtype(name, *t, dtype, "the dtype of the queries");
  }
  const AttentionSizes sizes{query.size(0), query.size(1), keys.size(1), query.size(2), values.size(2)};
  if (key_lengths.has_value()) {
    const Tensor& lengths = *key_lengths;
    check_device(device, "key_lengths", lengths, query_name, query);
    check_dtype("key_lengths", lengths, at::kLong, "int64 lengths");
    check_shape("key_lengths", lengths, {sizes.batch}, "[B]");
    if (sizes.batch > 0) {
      const int64_t low = lengths.min().item<int64_t>(), high = lengths.max().item<int64_t>();
      TORCH_CHECK(low >= 1 && high <= sizes.keys, "key_lengths must lie in [1, ", sizes.keys,
                  "] (Tk = ", sizes.keys, " keys), got values in [", low, ", ", high, "]");
    }
  }
  return sizes;
}

void check_v(c10::DeviceType device, const Tensor& v, const Tensor& pq, const AttentionSizes& sizes) {
  check_device(device, "v", v, "pq", pq);
  check_dtype("v", v, pq.scalar_type(), "the dtype of pq");
  check_shape("v", v, {sizes.features}, "[A]");
}

void check_scale(double scale) {
  TORCH_CHECK(scale > 0 && std::isfinite(scale), "scale must be a finite positive number, got ",
              scale);
}

/// The tensors the backward receives from the forward and from autograd, checked against `s`.
void check_backward_inputs(c10::DeviceType device, const AttentionSizes& s, const char* query_name,
                           const Tensor& query, const Tensor& grad_context,
                           const std::optional<Tensor>& grad_weights, const Tensor& context,
                           const Tensor& lse, const std::optional<Tensor>& weights) {
  const auto dtype = query.scalar_type();
  const std::vector<int64_t> out{s.batch, s.queries, s.value_size}, rows{s.batch, s.queries},
      scores{s.batch, s.queries, s.keys};
  for (const auto& [name, t] : {std::pair{"grad_context", &grad_context}, std::pair{"context", &context}}) {
    check_device(device, name, *t, query_name, query);
    check_dtype(name, *t, dtype, "the dtype of the queries");
    check_shape(name, *t, out, "[B, Tq, Dv]");
  }
  check_device(device, "lse", lse, query_name, query);
  check_dtype("lse", lse, accumulation_dtype(dtype), "the accumulation dtype of the queries");
  check_shape("lse", lse, rows, "[B, Tq]");
  TORCH_CHECK(grad_weights.has_value() == weights.has_value(),
              "grad_weights and weights must be given together (the forward's weights receive a "
              "gradient) or both be None, got grad_weights ",
              grad_weights.has_value() ? "given" : "None", " and weights ",
              weights.has_value() ? "given" : "None");
  if (weights.has_value()) {
    for (const auto& [name, t] : {std::pair{"grad_weights", &*grad_weights}, std::pair{"weights", &*weights}}) {
      check_device(device, name, *t, query_name, query);
      check_dtype(name, *t, dtype, "the dtype of the queries");
      check_shape(name, *t, scores, "[B, Tq, Tk]");
    }
  }
}

}  // namespace

AttentionSizes check_additive_attention_forward(c10::DeviceType device, const Tensor& pq, const Tensor& pk,
                                                const Tensor& v, const Tensor& values,
                                                const std::optional<Tensor>& key_lengths) {
  const AttentionSizes sizes = check_inputs(device, "pq", pq, "pk", pk, values, key_lengths);
  check_v(device, v, pq, sizes);
  return sizes;
}

AttentionSizes check_dot_attention_forward(c10::DeviceType device, const Tensor& query, const Tensor& keys,
                                           const Tensor& values, const std::optional<Tensor>& key_lengths,
                                           double scale) {
  const AttentionSizes sizes = check_inputs(device, "query", query, "keys", keys, values, key_lengths);
  check_scale(scale);
  return sizes;
}

AttentionSizes check_additive_attention_backward(
    c10::DeviceType device, const Tensor& grad_context, const std::optional<Tensor>& grad_weights,
    const Tensor& pq, const Tensor& pk, const Tensor& v, const Tensor& values,
    const std::optional<Tensor>& key_lengths, const Tensor& context, const Tensor& lse,
    const std::optional<Tensor>& weights) {
  const AttentionSizes sizes = check_additive_attention_forward(device, pq, pk, v, values, key_lengths);
  check_backward_inputs(device, sizes, "pq", pq, grad_context, grad_weights, context, lse, weights);
  return sizes;
}

AttentionSizes check_dot_attention_backward(
    c10::DeviceType device, const Tensor& grad_context, const std::optional<Tensor>& grad_weights,
    const Tensor& query, const Tensor& keys, const Tensor& values,
    const std::optional<Tensor>& key_lengths, const Tensor& context, const Tensor& lse,
    const std::optional<Tensor>& weights, double scale) {
  const AttentionSizes sizes = check_dot_attention_forward(device, query, keys, values, key_lengths, scale);
  check_backward_inputs(device, sizes, "query", query, grad_context, grad_weights, context, lse, weights);
  return sizes;
}

}  // namespace fused_rnn
