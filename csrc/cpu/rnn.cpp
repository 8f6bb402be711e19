// Vanilla RNN recurrence on the CPU: the ops' checks, buffers and row order around the sequence
// kernels (sequence_kernels.h), for padded [T, B, H] and packed [N, H] per-step tensors.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "step_loop.h"

namespace fused_rnn::cpu {
namespace {

using at::Tensor;

constexpr const char* kForward = "fused_rnn::native_rnn_forward";
constexpr const char* kBackward = "fused_rnn::native_rnn_backward";
constexpr const char* kPackedForward = "fused_rnn::native_rnn_packed_forward";
constexpr const char* kPackedBackward = "fused_rnn::native_rnn_packed_backward";

/// xw [T, B, H] (packed: [N, H]), w_hh [H, H], h0 [B, H] in the layout `order` (a RowOrder or
/// PackedRows) of the checked sizes n -> hs [T, B, H] (packed: [N, H]), h_n [B, H].
template <typename Layout>
std::tuple<Tensor, Tensor> run_rnn_forward(const Layout& order, const RecurrenceSizes& n,
                                           const Tensor& xw_arg, const Tensor& w_hh_arg,
                                           const Tensor& h0, bool relu) {
  const int64_t H = n.hidden;
  const Tensor xw = order.in(xw_arg, 1).contiguous();
  const at::ScalarType dtype = xw.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const Tensor w_hh = read_as(w_hh_arg, acc);
  const Tensor h = read_as(order.in(h0, 0), acc);
  Tensor hs = empty_sequence(order.sequence(H), xw.options());

  const SequenceRows rows = order.rows();
  sequence_kernels().rnn_forward({dtype, rows, H, relu, xw.const_data_ptr(), w_hh.const_data_ptr(),
                                  h.const_data_ptr(), hs.data_ptr()});
  return {order.out(hs, 1), order.out(final_states(hs, rows), 0)};
}

/// grad_hs [T, B, H] (packed: [N, H]), grad_h_n [B, H] in the layout `order`
/// -> dxw [T, B, H] (packed: [N, H]), dh0 [B, H].
template <typename Layout>
std::tuple<Tensor, Tensor> run_rnn_backward(const Layout& order, const RecurrenceSizes& n,
                                            const Tensor& grad_hs_arg, const Tensor& grad_h_n,
                                            const Tensor& w_hh_arg, const Tensor& h0,
                                            const Tensor& hs_arg, bool relu) {
  const int64_t B = n.batch, H = n.hidden;
  const Tensor grad_hs = order.in(grad_hs_arg, 1).contiguous();
  const Tensor hs = order.in(hs_arg, 1).contiguous();
  const at::ScalarType dtype = hs.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const Tensor w_hh = read_as(w_hh_arg, acc);
  const Tensor dh_final = read_as(order.in(grad_h_n, 0), acc);
  Tensor dh0 = at::empty({B, H}, hs.options().dtype(acc));
  Tensor dxw = empty_sequence(order.sequence(H), hs.options());

  sequence_kernels().rnn_backward({dtype, order.rows(), H, relu, grad_hs.const_data_ptr(),
                                   hs.const_data_ptr(), w_hh.const_data_ptr(),
                                   dh_final.const_data_ptr(), dxw.data_ptr(), dh0.data_ptr()});
  return {order.out(dxw, 1), order.out(dh0.to(h0.scalar_type()), 0)};
}

std::tuple<Tensor, Tensor> rnn_forward(const Tensor& xw, const Tensor& w_hh, const Tensor& h0,
                                       const std::optional<Tensor>& lengths, bool relu) {
  const RecurrenceSizes n = check_rnn_forward(kForward, xw, w_hh, h0, lengths);
  return run_rnn_forward(RowOrder(kForward, lengths, n.batch, n.steps), n, xw, w_hh, h0, relu);
}

std::tuple<Tensor, Tensor> rnn_backward(const Tensor& grad_hs, const Tensor& grad_h_n,
                                        const Tensor& w_hh, const Tensor& h0,
                                        const std::optional<Tensor>& lengths, const Tensor& hs,
                                        bool relu) {
  const RecurrenceSizes n = check_rnn_backward(kBackward, grad_hs, grad_h_n, w_hh, h0, lengths, hs);
  return run_rnn_backward(RowOrder(kBackward, lengths, n.batch, n.steps), n, grad_hs, grad_h_n,
                          w_hh, h0, hs, relu);
}

/// xw [N, H] packed by batch_sizes [T] -> hs [N, H], h_n [B, H].
std::tuple<Tensor, Tensor> rnn_packed_forward(const Tensor& xw, const Tensor& w_hh,
                                              const Tensor& h0, const Tensor& batch_sizes,
                                              bool relu) {
  const PackedRows packed(kPackedForward, batch_sizes, "xw", xw);
  const RecurrenceSizes n =
      check_rnn_forward(kPackedForward, packed.checked_view("xw", xw), w_hh, h0, std::nullopt);
  return run_rnn_forward(packed, n, xw, w_hh, h0, relu);
}

std::tuple<Tensor, Tensor> rnn_packed_backward(const Tensor& grad_hs, const Tensor& grad_h_n,
                                               const Tensor& w_hh, const Tensor& h0,
                                               const Tensor& batch_sizes, const Tensor& hs,
                                               bool relu) {
  const PackedRows packed(kPackedBackward, batch_sizes, "hs", hs);
  const RecurrenceSizes n =
      check_rnn_backward(kPackedBackward, packed.checked_view("grad_hs", grad_hs), grad_h_n, w_hh,
                         h0, std::nullopt, packed.checked_view("hs", hs));
  return run_rnn_backward(packed, n, grad_hs, grad_h_n, w_hh, h0, hs, relu);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("native_rnn_forward", &rnn_forward);
  m.impl("native_rnn_backward", &rnn_backward);
  m.impl("native_rnn_packed_forward", &rnn_packed_forward);
  m.impl("native_rnn_packed_backward", &rnn_packed_backward);
}

}  // namespace fused_rnn::cpu
