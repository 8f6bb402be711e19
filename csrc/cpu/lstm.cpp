// LSTM recurrence on the CPU (with and without projection): per time step one GEMM (step_gemm.h)
// into a buffer made once per call, then one fused pointwise kernel (cell_steps.h); a projection
// adds a second GEMM and pass per step.
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

/// xw [T, B, 4H], w_hh [4H, P], w_hr [P, H] or None, h0 [B, P], c0 [B, H], lengths [B]
/// -> hs [T, B, P], h_n [B, P], c_n [B, H] and, when `save`, cs [T, B, H] (accumulation dtype)
///    and gates [T, B, 4H] (activated i, f, g, o) for the backward pass (undefined otherwise).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> run_lstm_forward(
    const char* op, const Tensor& xw_arg, const Tensor& w_hh, const std::optional<Tensor>& w_hr,
    const Tensor& h0, const Tensor& c0, const std::optional<Tensor>& lengths_arg, bool save) {
  const RecurrenceSizes n = check_lstm_forward(op, xw_arg, w_hh, w_hr, h0, c0, lengths_arg);
  const Lengths lengths(op, lengths_arg, n.steps);
  const Tensor xw = xw_arg.contiguous();
  const at::ScalarType dtype = xw.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const auto acc_options = xw.options().dtype(acc);
  const int64_t T = n.steps, B = n.batch, H = n.hidden, P = n.state;

  const StepGemm times_w_hh_t(w_hh, /*transposed=*/true, B, T, acc);
  Tensor hs = empty_sequence({T, B, P}, xw.options());
  Tensor cs = save ? empty_sequence({T, B, H}, acc_options) : Tensor();
  Tensor gates = save ? empty_sequence({T, B, 4 * H}, xw.options()) : Tensor();
  Tensor h = working_copy(h0, acc);  // [B, P]
  Tensor c = working_copy(c0, acc);  // [B, H]
  Tensor hw = at::empty({B, 4 * H}, acc_options);

  // With a projection: h = (o * tanh(c)) @ W_hr^T, a second GEMM per step.
  const bool projected = w_hr.has_value();
  const std::optional<StepGemm> times_w_hr_t =
      projected ? std::make_optional<StepGemm>(*w_hr, /*transposed=*/true, B, T, acc)
                : std::nullopt;
  const Tensor unprojected = projected ? at::empty({B, H}, acc_options) : Tensor();
  Tensor h_projected = projected ? at::empty({B, P}, acc_options) : Tensor();

  const CellStepKernels& kernels = cell_step_kernels();
  for (int64_t t = 0; t < T; ++t) {
    const StepRows rows = lengths.rows(n, t);
    times_w_hh_t(h, hw);
    kernels.lstm_forward({dtype, rows, H, at_step(xw, t), hw.data_ptr(),
                          save ? at_step(gates, t) : nullptr, save ? at_step(cs, t) : nullptr,
                          c.data_ptr(), projected ? nullptr : at_step(hs, t),
                          projected ? nullptr : h.data_ptr(),
                          projected ? unprojected.data_ptr() : nullptr});
    if (projected) {
      (*times_w_hr_t)(unprojected, h_projected);
      kernels.projected_state({dtype, rows, P, h_projected.data_ptr(), at_step(hs, t),
                               h.data_ptr()});
    }
  }
  return {hs, h.to(dtype), c.to(dtype), cs, gates};
}

/// -> hs, h_n, c_n, cs, gates (see run_lstm_forward).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& xw, const Tensor& w_hh, const std::optional<Tensor>& w_hr, const Tensor& h0,
    const Tensor& c0, const std::optional<Tensor>& lengths) {
  return run_lstm_forward(kForward, xw, w_hh, w_hr, h0, c0, lengths, /*save=*/true);
}

/// The forward pass without the tensors saved for backward: -> hs, h_n, c_n.
std::tuple<Tensor, Tensor, Tensor> lstm_inference(const Tensor& xw, const Tensor& w_hh,
                                                  const std::optional<Tensor>& w_hr,
                                                  const Tensor& h0, const Tensor& c0,
                                                  const std::optional<Tensor>& lengths) {
  auto [hs, h_n, c_n, cs, gates] =
      run_lstm_forward(kInference, xw, w_hh, w_hr, h0, c0, lengths, /*save=*/false);
  return {hs, h_n, c_n};
}

/// grad_hs [T, B, P], grad_h_n [B, P], grad_c_n [B, H]
/// -> dxw [T, B, 4H], dh0 [B, P], dc0 [B, H], dw_hr [P, H] (shape [0] without projection).
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_hs_arg, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& w_hh, const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0,
    const std::optional<Tensor>& lengths_arg, const Tensor& hs, const Tensor& cs_arg,
    const Tensor& gates_arg) {
  const RecurrenceSizes n = check_lstm_backward(kBackward, grad_hs_arg, grad_h_n, grad_c_n, w_hh,
                                                w_hr, h0, c0, lengths_arg, hs, cs_arg, gates_arg);
  const Lengths lengths(kBackward, lengths_arg, n.steps);
  const Tensor grad_hs = grad_hs_arg.contiguous();
  const Tensor cs = cs_arg.contiguous();
  const Tensor gates = gates_arg.contiguous();
  const at::ScalarType dtype = hs.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const auto acc_options = hs.options().dtype(acc);
  const int64_t T = n.steps, B = n.batch, H = n.hidden, P = n.state;

  const StepGemm times_w_hh(w_hh, /*transposed=*/false, B, T, acc);
  const Tensor dh_final = read_as(grad_h_n, acc);
  const Tensor c0_acc = read_as(c0, acc);
  Tensor dh = at::empty({B, P}, acc_options);  // d_pre[t+1] @ W_hh
  Tensor dc = working_copy(grad_c_n, acc);
  Tensor dxw = empty_sequence({T, B, 4 * H}, hs.options());
  // The GEMM reads the unrounded gate gradients: dxw itself unless dtype is a half type.
  Tensor d_pre = dtype == acc ? Tensor() : at::empty({B, 4 * H}, acc_options);

  // With a projection: the gradient of each step's output and o * tanh(c) are kept for
  // dW_hr = sum_t grad_out[t]^T unprojected[t], one GEMM after the loop.
  const bool projected = w_hr.has_value();
  const std::optional<StepGemm> times_w_hr =
      projected ? std::make_optional<StepGemm>(*w_hr, /*transposed=*/false, B, T, acc)
                : std::nullopt;
  const Tensor grad_out = projected ? empty_sequence({T, B, P}, acc_options) : Tensor();
  const Tensor unprojected = projected ? empty_sequence({T, B, H}, acc_options) : Tensor();
  Tensor d_h = projected ? at::empty({B, H}, acc_options) : Tensor();

  const CellStepKernels& kernels = cell_step_kernels();
  for (int64_t t = T - 1; t >= 0; --t) {
    const StepRows rows = lengths.rows(n, t);
    if (projected) {
      kernels.output_grad({dtype, rows, P, at_step(grad_hs, t), dh.data_ptr(),
                           dh_final.data_ptr(), at_step(grad_out, t)});
      (*times_w_hr)(grad_out.select(0, t), d_h);
    }
    kernels.lstm_backward({dtype, rows, H, at_step(gates, t), at_step(cs, t),
                           t > 0 ? at_step(cs, t - 1) : c0_acc.data_ptr(),
                           projected ? nullptr : at_step(grad_hs, t),
                           projected ? nullptr : dh.data_ptr(),
                           projected ? nullptr : dh_final.data_ptr(),
                           projected ? d_h.data_ptr() : nullptr, dc.data_ptr(), at_step(dxw, t),
                           d_pre.defined() ? d_pre.data_ptr() : nullptr,
                           projected ? at_step(unprojected, t) : nullptr});
    times_w_hh(d_pre.defined() ? d_pre : dxw.select(0, t), dh);
  }
  const Tensor dw_hr =
      projected ? at::mm(grad_out.view({T * B, P}).t(), unprojected.view({T * B, H}))
                      .to(w_hr->scalar_type())
                : at::empty({0}, grad_hs.options());
  return {dxw, dh.to(h0.scalar_type()), dc.to(c0.scalar_type()), dw_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("native_lstm_forward", &lstm_forward);
  m.impl("native_lstm_inference", &lstm_inference);
  m.impl("native_lstm_backward", &lstm_backward);
}

}  // namespace fused_rnn::cpu
