// LSTM recurrence on the CPU (with and without projection): the ops' checks, buffers and row
// order around the sequence kernels (sequence_kernels.h), for padded [T, B, ...] and packed [N, ...]
// per-step tensors.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "step_loop.h"

namespace fused_rnn::cpu {
namespace {

using at::Tensor;

constexpr const char* kForward = "fused_rnn::native_lstm_forward";
constexpr const char* kInference = "fused_rnn::native_lstm_inference";
constexpr const char* kBackward = "fused_rnn::native_lstm_backward";
constexpr const char* kPackedForward = "fused_rnn::native_lstm_packed_forward";
constexpr const char* kPackedInference = "fused_rnn::native_lstm_packed_inference";
constexpr const char* kPackedBackward = "fused_rnn::native_lstm_packed_backward";

/// xw [T, B, 4H] (packed: [N, 4H]), w_hh [4H, P], w_hr [P, H] or None, h0 [B, P], c0 [B, H], in
/// the layout `order` (a RowOrder or PackedRows) of the checked sizes n
/// -> hs [T, B, P], h_n [B, P], c_n [B, H] and, when `save`, cs [T, B, H] (accumulation dtype)
///    and gates [T, B, 4H] (activated i, f, g, o) for the backward pass (undefined otherwise);
///    packed: [N, ...] in place of [T, B, ...].
template <typename Layout>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> run_lstm_forward(
    const Layout& order, const RecurrenceSizes& n, const Tensor& xw_arg, const Tensor& w_hh_arg,
    const std::optional<Tensor>& w_hr_arg, const Tensor& h0, const Tensor& c0, bool save) {
  const int64_t H = n.hidden, P = n.state;
  const Tensor xw = order.in(xw_arg, 1).contiguous();
  const at::ScalarType dtype = xw.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const auto acc_options = xw.options().dtype(acc);
  const Tensor w_hh = read_as(w_hh_arg, acc);
  const Tensor w_hr = w_hr_arg.has_value() ? read_as(*w_hr_arg, acc) : Tensor();
  const Tensor h = read_as(order.in(h0, 0), acc);
  Tensor c = working_copy(order.in(c0, 0), acc);
  Tensor hs = empty_sequence(order.sequence(P), xw.options());
  Tensor cs = save ? empty_sequence(order.sequence(H), acc_options) : Tensor();
  Tensor gates = save ? empty_sequence(order.sequence(4 * H), xw.options()) : Tensor();

  const SequenceRows rows = order.rows();
  sequence_kernels().lstm_forward({dtype, rows, H, P, xw.const_data_ptr(), w_hh.const_data_ptr(),
                                   w_hr.defined() ? w_hr.const_data_ptr() : nullptr,
                                   h.const_data_ptr(), c.data_ptr(), hs.data_ptr(),
                                   save ? gates.data_ptr() : nullptr,
                                   save ? cs.data_ptr() : nullptr});
  return {order.out(hs, 1), order.out(final_states(hs, rows), 0), order.out(c.to(dtype), 0),
          save ? order.out(cs, 1) : cs, save ? order.out(gates, 1) : gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> padded_forward(
    const char* op, const Tensor& xw, const Tensor& w_hh, const std::optional<Tensor>& w_hr,
    const Tensor& h0, const Tensor& c0, const std::optional<Tensor>& lengths, bool save) {
  const RecurrenceSizes n = check_lstm_forward(op, xw, w_hh, w_hr, h0, c0, lengths);
  return run_lstm_forward(RowOrder(op, lengths, n.batch, n.steps), n, xw, w_hh, w_hr, h0, c0, save);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> packed_forward(
    const char* op, const Tensor& xw, const Tensor& w_hh, const std::optional<Tensor>& w_hr,
    const Tensor& h0, const Tensor& c0, const Tensor& batch_sizes, bool save) {
  const PackedRows packed(op, batch_sizes, "xw", xw);
  const RecurrenceSizes n =
      check_lstm_forward(op, packed.checked_view("xw", xw), w_hh, w_hr, h0, c0, std::nullopt);
  return run_lstm_forward(packed, n, xw, w_hh, w_hr, h0, c0, save);
}

/// -> hs, h_n, c_n, cs, gates (see run_lstm_forward).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& xw, const Tensor& w_hh, const std::optional<Tensor>& w_hr, const Tensor& h0,
    const Tensor& c0, const std::optional<Tensor>& lengths) {
  return padded_forward(kForward, xw, w_hh, w_hr, h0, c0, lengths, /*save=*/true);
}

/// The forward pass without the tensors saved for backward: -> hs, h_n, c_n.
std::tuple<Tensor, Tensor, Tensor> lstm_inference(const Tensor& xw, const Tensor& w_hh,
                                                  const std::optional<Tensor>& w_hr,
                                                  const Tensor& h0, const Tensor& c0,
                                                  const std::optional<Tensor>& lengths) {
  auto [hs, h_n, c_n, cs, gates] =
      padded_forward(kInference, xw, w_hh, w_hr, h0, c0, lengths, /*save=*/false);
  return {hs, h_n, c_n};
}

/// xw [N, 4H] packed by batch_sizes [T] -> hs [N, P], h_n, c_n, cs [N, H], gates [N, 4H].
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_packed_forward(
    const Tensor& xw, const Tensor& w_hh, const std::optional<Tensor>& w_hr, const Tensor& h0,
    const Tensor& c0, const Tensor& batch_sizes) {
  return packed_forward(kPackedForward, xw, w_hh, w_hr, h0, c0, batch_sizes, /*save=*/true);
}

std::tuple<Tensor, Tensor, Tensor> lstm_packed_inference(
    const Tensor& xw, const Tensor& w_hh, const std::optional<Tensor>& w_hr, const Tensor& h0,
    const Tensor& c0, const Tensor& batch_sizes) {
  auto [hs, h_n, c_n, cs, gates] =
      packed_forward(kPackedInference, xw, w_hh, w_hr, h0, c0, batch_sizes, /*save=*/false);
  return {hs, h_n, c_n};
}

/// grad_hs [T, B, P] (packed: [N, P]), grad_h_n [B, P], grad_c_n [B, H], in the layout `order`
/// -> dxw [T, B, 4H] (packed: [N, 4H]), dh0 [B, P], dc0 [B, H], dw_hr [P, H] (shape [0] without
///    projection).
template <typename Layout>
std::tuple<Tensor, Tensor, Tensor, Tensor> run_lstm_backward(
    const Layout& order, const RecurrenceSizes& n, const Tensor& grad_hs_arg,
    const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_hh_arg,
    const std::optional<Tensor>& w_hr_arg, const Tensor& h0, const Tensor& c0, const Tensor& hs,
    const Tensor& cs_arg, const Tensor& gates_arg) {
  const int64_t B = n.batch, H = n.hidden, P = n.state;
  const Tensor grad_hs = order.in(grad_hs_arg, 1).contiguous();
  const Tensor cs = order.in(cs_arg, 1).contiguous();
  const Tensor gates = order.in(gates_arg, 1).contiguous();
  const at::ScalarType dtype = hs.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const auto acc_options = hs.options().dtype(acc);
  const Tensor w_hh = read_as(w_hh_arg, acc);
  const bool projected = w_hr_arg.has_value();
  const Tensor w_hr = projected ? read_as(*w_hr_arg, acc) : Tensor();
  const Tensor dh_final = read_as(order.in(grad_h_n, 0), acc);
  const Tensor c0_acc = read_as(order.in(c0, 0), acc);
  Tensor dc = working_copy(order.in(grad_c_n, 0), acc);
  Tensor dh0 = at::empty({B, P}, acc_options);
  Tensor dxw = empty_sequence(order.sequence(4 * H), hs.options());
  // With a projection: the gradient of each step's output and o * tanh(c) are kept for
  // dW_hr = sum_t grad_out[t]^T unprojected[t], one GEMM after the loop.
  const Tensor grad_out = projected ? empty_sequence(order.sequence(P), acc_options) : Tensor();
  const Tensor unprojected = projected ? empty_sequence(order.sequence(H), acc_options) : Tensor();

  sequence_kernels().lstm_backward(
      {dtype, order.rows(), H, P, grad_hs.const_data_ptr(), gates.const_data_ptr(),
       cs.const_data_ptr(), c0_acc.const_data_ptr(), w_hh.const_data_ptr(),
       projected ? w_hr.const_data_ptr() : nullptr, dh_final.const_data_ptr(), dc.data_ptr(),
       dxw.data_ptr(), dh0.data_ptr(), projected ? grad_out.data_ptr() : nullptr,
       projected ? unprojected.data_ptr() : nullptr});
  // Rows past their length have zero grad_out and unprojected (padded) or are absent (packed):
  // the sum is over rows in any order.
  const Tensor dw_hr =
      projected ? at::mm(grad_out.view({-1, P}).t(), unprojected.view({-1, H}))
                      .to(w_hr_arg->scalar_type())
                : at::empty({0}, grad_hs.options());
  return {order.out(dxw, 1), order.out(dh0.to(h0.scalar_type()), 0),
          order.out(dc.to(c0.scalar_type()), 0), dw_hr};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_hs, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0,
    const std::optional<Tensor>& lengths, const Tensor& hs, const Tensor& cs,
    const Tensor& gates) {
  const RecurrenceSizes n = check_lstm_backward(kBackward, grad_hs, grad_h_n, grad_c_n, w_hh, w_hr,
                                                h0, c0, lengths, hs, cs, gates);
  return run_lstm_backward(RowOrder(kBackward, lengths, n.batch, n.steps), n, grad_hs, grad_h_n,
                           grad_c_n, w_hh, w_hr, h0, c0, hs, cs, gates);
}

/// The backward pass of lstm_packed_forward: grad_hs [N, P] -> dxw [N, 4H], dh0, dc0, dw_hr.
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_packed_backward(
    const Tensor& grad_hs, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0,
    const Tensor& batch_sizes, const Tensor& hs, const Tensor& cs, const Tensor& gates) {
  const PackedRows packed(kPackedBackward, batch_sizes, "hs", hs);
  const RecurrenceSizes n = check_lstm_backward(
      kPackedBackward, packed.checked_view("grad_hs", grad_hs), grad_h_n, grad_c_n, w_hh, w_hr, h0,
      c0, std::nullopt, packed.checked_view("hs", hs), packed.checked_view("cs", cs),
      packed.checked_view("gates", gates));
  return run_lstm_backward(packed, n, grad_hs, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, hs, cs,
                           gates);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("native_lstm_forward", &lstm_forward);
  m.impl("native_lstm_inference", &lstm_inference);
  m.impl("native_lstm_backward", &lstm_backward);
  m.impl("native_lstm_packed_forward", &lstm_packed_forward);
  m.impl("native_lstm_packed_inference", &lstm_packed_inference);
  m.impl("native_lstm_packed_backward", &lstm_packed_backward);
}

}  // namespace fused_rnn::cpu
