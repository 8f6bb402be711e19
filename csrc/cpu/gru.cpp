// GRU recurrence on the CPU: per time step one GEMM (step_gemm.h) into a buffer made once per call,
// then one fused pointwise kernel (cell_steps.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "step_loop.h"

namespace fused_rnn::cpu {
namespace {

using at::Tensor;

constexpr const char* kForward = "fused_rnn::native_gru_forward";
constexpr const char* kInference = "fused_rnn::native_gru_inference";
constexpr const char* kBackward = "fused_rnn::native_gru_backward";

/// xw [T, B, 3H], w_hh [3H, H], b_hn [H], h0 [B, H], lengths [B]
/// -> hs [T, B, H], h_n [B, H] and, when `save`, gates [T, B, 4H] (r, z, n, W_hn h + b_hn) for the
///    backward pass (undefined otherwise).
std::tuple<Tensor, Tensor, Tensor> run_gru_forward(const char* op, const Tensor& xw_arg,
                                                   const Tensor& w_hh,
                                                   const std::optional<Tensor>& b_hn_arg,
                                                   const Tensor& h0,
                                                   const std::optional<Tensor>& lengths_arg,
                                                   bool save) {
  const RecurrenceSizes n = check_gru_forward(op, xw_arg, w_hh, b_hn_arg, h0, lengths_arg);
  const Lengths lengths(op, lengths_arg, n.steps);
  const Tensor xw = xw_arg.contiguous();
  const at::ScalarType dtype = xw.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const Tensor b_hn = b_hn_arg.has_value() ? b_hn_arg->contiguous() : Tensor();

  const StepGemm times_w_hh_t(w_hh, /*transposed=*/true, n.batch, n.steps, acc);
  Tensor hs = empty_sequence({n.steps, n.batch, n.hidden}, xw.options());
  Tensor gates = save ? empty_sequence({n.steps, n.batch, 4 * n.hidden}, xw.options()) : Tensor();
  Tensor h = working_copy(h0, acc);
  Tensor hw = at::empty({n.batch, 3 * n.hidden}, xw.options().dtype(acc));

  const CellStepKernels& kernels = cell_step_kernels();
  for (int64_t t = 0; t < n.steps; ++t) {
    times_w_hh_t(h, hw);
    kernels.gru_forward({dtype, lengths.rows(n, t), n.hidden, at_step(xw, t), hw.data_ptr(),
                         b_hn.defined() ? b_hn.data_ptr() : nullptr,
                         save ? at_step(gates, t) : nullptr, at_step(hs, t), h.data_ptr()});
  }
  return {hs, h.to(dtype), gates};
}

/// -> hs, h_n, gates (see run_gru_forward).
std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& xw, const Tensor& w_hh,
                                               const std::optional<Tensor>& b_hn, const Tensor& h0,
                                               const std::optional<Tensor>& lengths) {
  return run_gru_forward(kForward, xw, w_hh, b_hn, h0, lengths, /*save=*/true);
}

/// The forward pass without the tensors saved for backward: -> hs, h_n.
std::tuple<Tensor, Tensor> gru_inference(const Tensor& xw, const Tensor& w_hh,
                                         const std::optional<Tensor>& b_hn, const Tensor& h0,
                                         const std::optional<Tensor>& lengths) {
  auto [hs, h_n, gates] = run_gru_forward(kInference, xw, w_hh, b_hn, h0, lengths, /*save=*/false);
  return {hs, h_n};
}

/// grad_hs [T, B, H], grad_h_n [B, H] -> dxw [T, B, 3H], d_hn [T, B, H], dh0 [B, H].
std::tuple<Tensor, Tensor, Tensor> gru_backward(const Tensor& grad_hs_arg, const Tensor& grad_h_n,
                                                const Tensor& w_hh,
                                                const std::optional<Tensor>& b_hn,
                                                const Tensor& h0_arg,
                                                const std::optional<Tensor>& lengths_arg,
                                                const Tensor& hs_arg, const Tensor& gates_arg) {
  const RecurrenceSizes n = check_gru_backward(kBackward, grad_hs_arg, grad_h_n, w_hh, b_hn,
                                               h0_arg, lengths_arg, hs_arg, gates_arg);
  const Lengths lengths(kBackward, lengths_arg, n.steps);
  const Tensor grad_hs = grad_hs_arg.contiguous();
  const Tensor hs = hs_arg.contiguous();
  const Tensor gates = gates_arg.contiguous();
  const Tensor h0 = h0_arg.contiguous();
  const at::ScalarType dtype = hs.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const auto acc_options = hs.options().dtype(acc);

  const StepGemm times_w_hh(w_hh, /*transposed=*/false, n.batch, n.steps, acc);
  const Tensor dh_final = read_as(grad_h_n, acc);
  Tensor dh = at::empty({n.batch, n.hidden}, acc_options);  // g * z + d_hidden @ W_hh
  Tensor d_hidden = at::empty({n.batch, 3 * n.hidden}, acc_options);
  Tensor dxw = empty_sequence({n.steps, n.batch, 3 * n.hidden}, hs.options());
  Tensor d_hn = empty_sequence({n.steps, n.batch, n.hidden}, hs.options());

  const CellStepKernels& kernels = cell_step_kernels();
  for (int64_t t = n.steps - 1; t >= 0; --t) {
    kernels.gru_backward({dtype, lengths.rows(n, t), n.hidden, at_step(grad_hs, t),
                          at_step(gates, t), t > 0 ? at_step(hs, t - 1) : h0.data_ptr(),
                          dh_final.data_ptr(), dh.data_ptr(), at_step(dxw, t), at_step(d_hn, t),
                          d_hidden.data_ptr()});
    times_w_hh(d_hidden, dh, /*accumulate=*/true);
  }
  return {dxw, d_hn, dh.to(h0.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("native_gru_forward", &gru_forward);
  m.impl("native_gru_inference", &gru_inference);
  m.impl("native_gru_backward", &gru_backward);
}

}  // namespace fused_rnn::cpu
