// GRU recurrence on the CPU: the ops' checks, buffers and row order around the sequence kernels
// (sequence_kernels.h), for padded [T, B, ...] and packed [N, ...] per-step tensors.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "step_loop.h"

namespace fused_rnn::cpu {
namespace {

using at::Tensor;

constexpr const char* kForward = "fused_rnn::native_gru_forward";
constexpr const char* kInference = "fused_rnn::native_gru_inference";
constexpr const char* kBackward = "fused_rnn::native_gru_backward";
constexpr const char* kPackedForward = "fused_rnn::native_gru_packed_forward";
constexpr const char* kPackedInference = "fused_rnn::native_gru_packed_inference";
constexpr const char* kPackedBackward = "fused_rnn::native_gru_packed_backward";

/// xw [T, B, 3H] (packed: [N, 3H]), w_hh [3H, H], b_hn [H], h0 [B, H] in the layout `order` (a
/// RowOrder or PackedRows) of the checked sizes n
/// -> hs [T, B, H], h_n [B, H] and, when `save`, gates [T, B, 4H] (r, z, n, W_hn h + b_hn) for the
///    backward pass (undefined otherwise); packed: [N, ...] in place of [T, B, ...].
template <typename Layout>
std::tuple<Tensor, Tensor, Tensor> run_gru_forward(const Layout& order, const RecurrenceSizes& n,
                                                   const Tensor& xw_arg, const Tensor& w_hh_arg,
                                                   const std::optional<Tensor>& b_hn_arg,
                                                   const Tensor& h0, bool save) {
  const int64_t H = n.hidden;
  const Tensor xw = order.in(xw_arg, 1).contiguous();
  const at::ScalarType dtype = xw.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const Tensor w_hh = read_as(w_hh_arg, acc);
  const Tensor b_hn = b_hn_arg.has_value() ? b_hn_arg->contiguous() : Tensor();
  const Tensor h = read_as(order.in(h0, 0), acc);
  Tensor hs = empty_sequence(order.sequence(H), xw.options());
  Tensor gates = save ? empty_sequence(order.sequence(4 * H), xw.options()) : Tensor();

  const SequenceRows rows = order.rows();
  sequence_kernels().gru_forward({dtype, rows, H, xw.const_data_ptr(), w_hh.const_data_ptr(),
                                  b_hn.defined() ? b_hn.const_data_ptr() : nullptr,
                                  h.const_data_ptr(), hs.data_ptr(),
                                  save ? gates.data_ptr() : nullptr});
  return {order.out(hs, 1), order.out(final_states(hs, rows), 0),
          save ? order.out(gates, 1) : gates};
}

/// grad_hs [T, B, H] (packed: [N, H]), grad_h_n [B, H] in the layout `order`
/// -> dxw [T, B, 3H], d_hn [T, B, H], dh0 [B, H]; packed: [N, ...] in place of [T, B, ...].
template <typename Layout>
std::tuple<Tensor, Tensor, Tensor> run_gru_backward(const Layout& order, const RecurrenceSizes& n,
                                                    const Tensor& grad_hs_arg,
                                                    const Tensor& grad_h_n, const Tensor& w_hh_arg,
                                                    const Tensor& h0_arg, const Tensor& hs_arg,
                                                    const Tensor& gates_arg) {
  const int64_t B = n.batch, H = n.hidden;
  const Tensor grad_hs = order.in(grad_hs_arg, 1).contiguous();
  const Tensor hs = order.in(hs_arg, 1).contiguous();
  const Tensor gates = order.in(gates_arg, 1).contiguous();
  const Tensor h0 = order.in(h0_arg, 0).contiguous();
  const at::ScalarType dtype = hs.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const Tensor w_hh = read_as(w_hh_arg, acc);
  const Tensor dh_final = read_as(order.in(grad_h_n, 0), acc);
  Tensor dh0 = at::empty({B, H}, hs.options().dtype(acc));
  Tensor dxw = empty_sequence(order.sequence(3 * H), hs.options());
  Tensor d_hn = empty_sequence(order.sequence(H), hs.options());

  sequence_kernels().gru_backward({dtype, order.rows(), H, grad_hs.const_data_ptr(),
                                   gates.const_data_ptr(), hs.const_data_ptr(),
                                   h0.const_data_ptr(), w_hh.const_data_ptr(),
                                   dh_final.const_data_ptr(), dxw.data_ptr(), d_hn.data_ptr(),
                                   dh0.data_ptr()});
  return {order.out(dxw, 1), order.out(d_hn, 1), order.out(dh0.to(h0.scalar_type()), 0)};
}

std::tuple<Tensor, Tensor, Tensor> padded_forward(const char* op, const Tensor& xw,
                                                  const Tensor& w_hh,
                                                  const std::optional<Tensor>& b_hn,
                                                  const Tensor& h0,
                                                  const std::optional<Tensor>& lengths, bool save) {
  const RecurrenceSizes n = check_gru_forward(op, xw, w_hh, b_hn, h0, lengths);
  return run_gru_forward(RowOrder(op, lengths, n.batch, n.steps), n, xw, w_hh, b_hn, h0, save);
}

std::tuple<Tensor, Tensor, Tensor> packed_forward(const char* op, const Tensor& xw,
                                                  const Tensor& w_hh,
                                                  const std::optional<Tensor>& b_hn,
                                                  const Tensor& h0, const Tensor& batch_sizes,
                                                  bool save) {
  const PackedRows packed(op, batch_sizes, "xw", xw);
  const RecurrenceSizes n =
      check_gru_forward(op, packed.checked_view("xw", xw), w_hh, b_hn, h0, std::nullopt);
  return run_gru_forward(packed, n, xw, w_hh, b_hn, h0, save);
}

/// -> hs, h_n, gates (see run_gru_forward).
std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& xw, const Tensor& w_hh,
                                               const std::optional<Tensor>& b_hn, const Tensor& h0,
                                               const std::optional<Tensor>& lengths) {
  return padded_forward(kForward, xw, w_hh, b_hn, h0, lengths, /*save=*/true);
}

/// The forward pass without the tensors saved for backward: -> hs, h_n.
std::tuple<Tensor, Tensor> gru_inference(const Tensor& xw, const Tensor& w_hh,
                                         const std::optional<Tensor>& b_hn, const Tensor& h0,
                                         const std::optional<Tensor>& lengths) {
  auto [hs, h_n, gates] = padded_forward(kInference, xw, w_hh, b_hn, h0, lengths, /*save=*/false);
  return {hs, h_n};
}

/// xw [N, 3H] packed by batch_sizes [T] -> hs [N, H], h_n [B, H], gates [N, 4H].
std::tuple<Tensor, Tensor, Tensor> gru_packed_forward(const Tensor& xw, const Tensor& w_hh,
                                                      const std::optional<Tensor>& b_hn,
                                                      const Tensor& h0, const Tensor& batch_sizes) {
  return packed_forward(kPackedForward, xw, w_hh, b_hn, h0, batch_sizes, /*save=*/true);
}

std::tuple<Tensor, Tensor> gru_packed_inference(const Tensor& xw, const Tensor& w_hh,
                                                const std::optional<Tensor>& b_hn,
                                                const Tensor& h0, const Tensor& batch_sizes) {
  auto [hs, h_n, gates] =
      packed_forward(kPackedInference, xw, w_hh, b_hn, h0, batch_sizes, /*save=*/false);
  return {hs, h_n};
}

std::tuple<Tensor, Tensor, Tensor> gru_backward(const Tensor& grad_hs, const Tensor& grad_h_n,
                                                const Tensor& w_hh,
                                                const std::optional<Tensor>& b_hn,
                                                const Tensor& h0,
                                                const std::optional<Tensor>& lengths,
                                                const Tensor& hs, const Tensor& gates) {
  const RecurrenceSizes n = check_gru_backward(kBackward, grad_hs, grad_h_n, w_hh, b_hn, h0,
                                               lengths, hs, gates);
  return run_gru_backward(RowOrder(kBackward, lengths, n.batch, n.steps), n, grad_hs, grad_h_n,
                          w_hh, h0, hs, gates);
}

/// The backward pass of gru_packed_forward: grad_hs [N, H] -> dxw [N, 3H], d_hn [N, H], dh0.
std::tuple<Tensor, Tensor, Tensor> gru_packed_backward(
    const Tensor& grad_hs, const Tensor& grad_h_n, const Tensor& w_hh,
    const std::optional<Tensor>& b_hn, const Tensor& h0, const Tensor& batch_sizes,
    const Tensor& hs, const Tensor& gates) {
  const PackedRows packed(kPackedBackward, batch_sizes, "hs", hs);
  const RecurrenceSizes n = check_gru_backward(
      kPackedBackward, packed.checked_view("grad_hs", grad_hs), grad_h_n, w_hh, b_hn, h0,
      std::nullopt, packed.checked_view("hs", hs), packed.checked_view("gates", gates));
  return run_gru_backward(packed, n, grad_hs, grad_h_n, w_hh, h0, hs, gates);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("native_gru_forward", &gru_forward);
  m.impl("native_gru_inference", &gru_inference);
  m.impl("native_gru_backward", &gru_backward);
  m.impl("native_gru_packed_forward", &gru_packed_forward);
  m.impl("native_gru_packed_inference", &gru_packed_inference);
  m.impl("native_gru_packed_backward", &gru_packed_backward);
}

}  // namespace fused_rnn::cpu
