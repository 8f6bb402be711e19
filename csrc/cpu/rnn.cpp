// Vanilla RNN recurrence on the CPU: the ops' checks, buffers and row order around the sequence
// kernels (sequence_kernels.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "step_loop.h"

namespace fused_rnn::cpu {
namespace {

using at::Tensor;

constexpr const char* kForward = "fused_rnn::native_rnn_forward";
constexpr const char* kBackward = "fused_rnn::native_rnn_backward";

/// xw [T, B, H], w_hh [H, H], h0 [B, H], lengths [B] -> hs [T, B, H], h_n [B, H].
std::tuple<Tensor, Tensor> rnn_forward(const Tensor& xw_arg, const Tensor& w_hh_arg,
                                       const Tensor& h0, const std::optional<Tensor>& lengths,
                                       bool relu) {
  const RecurrenceSizes n = check_rnn_forward(kForward, xw_arg, w_hh_arg, h0, lengths);
  const int64_t T = n.steps, B = n.batch, H = n.hidden;
  const RowOrder order(kForward, lengths, B, T);
  const Tensor xw = order.in(xw_arg, 1).contiguous();
  const at::ScalarType dtype = xw.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const Tensor w_hh = read_as(w_hh_arg, acc);
  const Tensor h = read_as(order.in(h0, 0), acc);
  Tensor hs = empty_sequence({T, B, H}, xw.options());

  const SequenceRows rows = order.rows();
  sequence_kernels().rnn_forward({dtype, rows, H, relu, xw.const_data_ptr(), w_hh.const_data_ptr(),
                                  h.const_data_ptr(), hs.data_ptr()});
  return {order.out(hs, 1), order.out(final_states(hs, rows), 0)};
}

/// grad_hs [T, B, H], grad_h_n [B, H] -> dxw [T, B, H], dh0 [B, H].
std::tuple<Tensor, Tensor> rnn_backward(const Tensor& grad_hs_arg, const Tensor& grad_h_n,
                                        const Tensor& w_hh_arg, const Tensor& h0,
                                        const std::optional<Tensor>& lengths,
                                        const Tensor& hs_arg, bool relu) {
  const RecurrenceSizes n =
      check_rnn_backward(kBackward, grad_hs_arg, grad_h_n, w_hh_arg, h0, lengths, hs_arg);
  const int64_t T = n.steps, B = n.batch, H = n.hidden;
  const RowOrder order(kBackward, lengths, B, T);
  const Tensor grad_hs = order.in(grad_hs_arg, 1).contiguous();
  const Tensor hs = order.in(hs_arg, 1).contiguous();
  const at::ScalarType dtype = hs.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const Tensor w_hh = read_as(w_hh_arg, acc);
  const Tensor dh_final = read_as(order.in(grad_h_n, 0), acc);
  Tensor dh0 = at::empty({B, H}, hs.options().dtype(acc));
  Tensor dxw = empty_sequence({T, B, H}, hs.options());

  sequence_kernels().rnn_backward({dtype, order.rows(), H, relu, grad_hs.const_data_ptr(),
                                   hs.const_data_ptr(), w_hh.const_data_ptr(),
                                   dh_final.const_data_ptr(), dxw.data_ptr(), dh0.data_ptr()});
  return {order.out(dxw, 1), order.out(dh0.to(h0.scalar_type()), 0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("native_rnn_forward", &rnn_forward);
  m.impl("native_rnn_backward", &rnn_backward);
}

}  // namespace fused_rnn::cpu
