// LSTM recurrence on the CPU (with and without projection): the ops' checks, buffers and row
// order around the sequence kernels (sequence_kernels.h), for padded [T, B, ...] and packed [N, ...]
// per-step tensors.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "gemm.h"
#include "row_split.h"
#include "step_loop.h"
#include "team.h"

namespace fused_rnn::cpu {
namespace {

using at::Tensor;

constexpr const char* kForward = "fused_rnn::native_lstm_forward";
constexpr const char* kInference = "fused_rnn::native_lstm_inference";
constexpr const char* kInputInference = "fused_rnn::native_lstm_input_inference";
constexpr const char* kPackedInputInference = "fused_rnn::native_lstm_packed_input_inference";
constexpr const char* kBackward = "fused_rnn::native_lstm_backward";
constexpr const char* kPackedForward = "fused_rnn::native_lstm_packed_forward";
constexpr const char* kPackedInference = "fused_rnn::native_lstm_packed_inference";
constexpr const char* kPackedBackward = "fused_rnn::native_lstm_packed_backward";

/// The input projection xw = x @ w_ih^T + bias of lstm_input_inference, for the steps to run:
/// x [T, B, I] (packed: [N, I]), w_ih [4H, I], bias [4H] (zeros for a layer without), float32 or
/// float64.
struct StepInput {
  Tensor x;
  Tensor w_ih;
  Tensor bias;
};

/// xw [T, B, 4H] (packed: [N, 4H]) or, with `input`, its projection, w_hh [4H, P], w_hr [P, H] or
/// None, h0 [B, P], c0 [B, H], in the layout `order` (a RowOrder or PackedRows) of the checked
/// sizes n
/// -> hs [T, B, P], h_n [B, P], c_n [B, H] and, when `save`, cs [T, B, H] (accumulation dtype)
///    and gates [T, B, 4H] (activated i, f, g, o) for the backward pass (undefined otherwise);
///    packed: [N, ...] in place of [T, B, ...].
template <typename Layout>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> run_lstm_forward(
    const Layout& order, const RecurrenceSizes& n, const Tensor& xw_arg, const Tensor& w_hh_arg,
    const std::optional<Tensor>& w_hr_arg, const Tensor& h0, const Tensor& c0, bool save,
    const StepInput* input = nullptr) {
  const int64_t H = n.hidden, P = n.state;
  const Tensor xw = order.in(input ? input->x : xw_arg, 1).contiguous();  // x with an input
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
  LstmForwardSequence sequence{dtype, rows, H, P, input ? nullptr : xw.const_data_ptr(),
                               w_hh.const_data_ptr(), w_hr.defined() ? w_hr.const_data_ptr() : nullptr,
                               h.const_data_ptr(), c.data_ptr(), hs.data_ptr(),
                               save ? gates.data_ptr() : nullptr, save ? cs.data_ptr() : nullptr};
  const Tensor w_ih = input ? input->w_ih.contiguous() : Tensor();
  const Tensor bias = input ? input->bias.contiguous() : Tensor();
  if (input) {
    sequence.x = xw.const_data_ptr();
    sequence.w_ih = w_ih.const_data_ptr();
    sequence.bias = bias.const_data_ptr();
    sequence.input = w_ih.size(1);
  }
  sequence_kernels().lstm_forward(sequence);
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

// lstm_input_inference runs the input projection inside the steps where each member of the team
// has at least this many rows of its own: a step multiplies them by W_ih beside W_hh, and x[t] @
// W_ih^T + h[t-1] @ W_hh^T never leaves the member's cache, where one GEMM over every step writes
// xw [T, B, 4H] to memory for the steps to read back (at B = 64, T = 256, I = H = 128, 32 MiB).
constexpr int64_t kInputInsideRowsPerMember = 8;

/// Whether lstm_input_inference's steps take x (see kInputInsideRowsPerMember): float32 or
/// float64, and a team that splits the rows (splits_rows, over the weights of every stage). On a
/// CPU MKL is tuned for (mkl_tuned_cpu), only while the weights stay in each member's L2
/// (kCachedWeightBytes): there one GEMM over every step outruns the panels once they stream from
/// L3 (2 Xeon threads, B = 64, T = 64: 273 ms inside against 246 ms with the projection first at
/// I = H = 1024 in float32, 149 against 134 ms at I = H = 512 in float64), not before (B = 64,
/// T = 1024, I = H = 128, float32: 0.67 against 0.82 of torch.nn's time).
bool runs_input_inside(at::ScalarType dtype, const RecurrenceSizes& n, int64_t input, bool projected) {
  if (dtype != at::kFloat && dtype != at::kDouble) {
    return false;
  }
  const int members = team_threads();
  const int64_t H = n.hidden, P = n.state;
  const int64_t weight_bytes =
      static_cast<int64_t>(c10::elementSize(dtype)) * (4 * H * (input + P) + (projected ? P * H : 0));
  if (mkl_tuned_cpu() && weight_bytes > kCachedWeightBytes) {
    return false;
  }
  return n.batch >= kInputInsideRowsPerMember * members && splits_rows(n.batch, members, weight_bytes);
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

/// The checks of an input inference op on x_like [T, B, I] (x, or a view of packed x with
/// x's shape over time and batch) and of lstm_inference on a tensor of xw's shape (no storage).
RecurrenceSizes check_input_inference(const char* op, const Tensor& x_like, const Tensor& w_ih,
                                      const std::optional<Tensor>& bias, const Tensor& w_hh,
                                      const std::optional<Tensor>& w_hr, const Tensor& h0,
                                      const Tensor& c0, const std::optional<Tensor>& lengths) {
  check_lstm_input(op, x_like, w_ih, bias, w_hh);
  const Tensor xw_like = x_like.new_empty({}).expand({x_like.size(0), x_like.size(1), w_hh.size(0)});
  return check_lstm_forward(op, xw_like, w_hh, w_hr, h0, c0, lengths);
}

/// The steps of lstm_input_inference (padded or packed layout `order`): -> hs, h_n, c_n.
template <typename Layout>
std::tuple<Tensor, Tensor, Tensor> steps_with_input(const Layout& order, const RecurrenceSizes& n,
                                                    const Tensor& x, const Tensor& w_ih,
                                                    const std::optional<Tensor>& bias, const Tensor& w_hh,
                                                    const std::optional<Tensor>& w_hr,
                                                    const Tensor& h0, const Tensor& c0) {
  const StepInput input{x, w_ih, bias.has_value() ? *bias : at::zeros({w_ih.size(0)}, x.options())};
  auto [hs, h_n, c_n, cs, gates] =
      run_lstm_forward(order, n, Tensor(), w_hh, w_hr, h0, c0, /*save=*/false, &input);
  return {hs, h_n, c_n};
}

/// lstm_inference of xw = x @ w_ih^T + bias for x [T, B, I], w_ih [4H, I], bias [4H] or None:
/// the projection runs inside the steps (runs_input_inside) or as one GEMM before them.
std::tuple<Tensor, Tensor, Tensor> lstm_input_inference(
    const Tensor& x, const Tensor& w_ih, const std::optional<Tensor>& bias, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0,
    const std::optional<Tensor>& lengths) {
  const RecurrenceSizes n =
      check_input_inference(kInputInference, x, w_ih, bias, w_hh, w_hr, h0, c0, lengths);
  const int64_t I = x.size(2);
  if (!runs_input_inside(x.scalar_type(), n, I, w_hr.has_value())) {
    const Tensor xw = linear(x.reshape({n.steps * n.batch, I}), w_ih, bias);
    return lstm_inference(xw.view({n.steps, n.batch, 4 * n.hidden}), w_hh, w_hr, h0, c0, lengths);
  }
  return steps_with_input(RowOrder(kInputInference, lengths, n.batch, n.steps), n, x, w_ih, bias,
                          w_hh, w_hr, h0, c0);
}

/// lstm_input_inference on packed rows x [N, I] by batch_sizes [T] -> hs [N, P], h_n, c_n.
std::tuple<Tensor, Tensor, Tensor> lstm_packed_input_inference(
    const Tensor& x, const Tensor& w_ih, const std::optional<Tensor>& bias, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0,
    const Tensor& batch_sizes) {
  const PackedRows packed(kPackedInputInference, batch_sizes, "x", x);
  const RecurrenceSizes n = check_input_inference(kPackedInputInference, packed.checked_view("x", x),
                                                  w_ih, bias, w_hh, w_hr, h0, c0, std::nullopt);
  if (!runs_input_inside(x.scalar_type(), n, x.size(1), w_hr.has_value())) {
    return lstm_packed_inference(linear(x, w_ih, bias), w_hh, w_hr, h0, c0, batch_sizes);
  }
  return steps_with_input(packed, n, x, w_ih, bias, w_hh, w_hr, h0, c0);
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
  m.impl("native_lstm_input_inference", &lstm_input_inference);
  m.impl("native_lstm_backward", &lstm_backward);
  m.impl("native_lstm_packed_forward", &lstm_packed_forward);
  m.impl("native_lstm_packed_inference", &lstm_packed_inference);
  m.impl("native_lstm_packed_input_inference", &lstm_packed_input_inference);
  m.impl("native_lstm_packed_backward", &lstm_packed_backward);
}

}  // namespace fused_rnn::cpu
