// Vanilla RNN recurrence on the CPU: per time step one GEMM (step_gemm.h) into a buffer made once
// per call, then one fused pointwise kernel (cell_steps.h).
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
std::tuple<Tensor, Tensor> rnn_forward(const Tensor& xw_arg, const Tensor& w_hh,
                                       const Tensor& h0, const std::optional<Tensor>& lengths_arg,
                                       bool relu) {
  const RecurrenceSizes n = check_rnn_forward(kForward, xw_arg, w_hh, h0, lengths_arg);
  const Lengths lengths(kForward, lengths_arg, n.steps);
  const Tensor xw = xw_arg.contiguous();
  const at::ScalarType dtype = xw.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);

  const StepGemm times_w_hh_t(w_hh, /*transposed=*/true, n.batch, n.steps, acc);
  Tensor hs = empty_sequence({n.steps, n.batch, n.hidden}, xw.options());
  Tensor h = working_copy(h0, acc);                                  // [B, H]
  Tensor hw = at::empty({n.batch, n.hidden}, xw.options().dtype(acc));  // h @ W_hh^T

  const CellStepKernels& kernels = cell_step_kernels();
  for (int64_t t = 0; t < n.steps; ++t) {
    times_w_hh_t(h, hw);
    kernels.rnn_forward({dtype, lengths.rows(n, t), n.hidden, relu, at_step(xw, t), hw.data_ptr(),
                         at_step(hs, t), h.data_ptr()});
  }
  return {hs, h.to(dtype)};
}

/// grad_hs [T, B, H], grad_h_n [B, H] -> dxw [T, B, H], dh0 [B, H].
std::tuple<Tensor, Tensor> rnn_backward(const Tensor& grad_hs_arg, const Tensor& grad_h_n,
                                        const Tensor& w_hh, const Tensor& h0,
                                        const std::optional<Tensor>& lengths_arg,
                                        const Tensor& hs_arg, bool relu) {
  const RecurrenceSizes n =
      check_rnn_backward(kBackward, grad_hs_arg, grad_h_n, w_hh, h0, lengths_arg, hs_arg);
  const Lengths lengths(kBackward, lengths_arg, n.steps);
  const Tensor grad_hs = grad_hs_arg.contiguous();
  const Tensor hs = hs_arg.contiguous();
  const at::ScalarType dtype = hs.scalar_type();
  const at::ScalarType acc = accumulation_dtype(dtype);
  const auto acc_options = hs.options().dtype(acc);

  const StepGemm times_w_hh(w_hh, /*transposed=*/false, n.batch, n.steps, acc);
  const Tensor dh_final = read_as(grad_h_n, acc);
  Tensor dh = at::empty({n.batch, n.hidden}, acc_options);  // d_pre[t+1] @ W_hh
  Tensor dxw = empty_sequence({n.steps, n.batch, n.hidden}, hs.options());
  // The GEMM reads the unrounded gate gradients: dxw itself unless dtype is a half type.
  Tensor d_pre = dtype == acc ? Tensor() : at::empty({n.batch, n.hidden}, acc_options);

  const CellStepKernels& kernels = cell_step_kernels();
  for (int64_t t = n.steps - 1; t >= 0; --t) {
    kernels.rnn_backward({dtype, lengths.rows(n, t), n.hidden, relu, at_step(grad_hs, t),
                          at_step(hs, t), dh.data_ptr(), dh_final.data_ptr(), at_step(dxw, t),
                          d_pre.defined() ? d_pre.data_ptr() : nullptr});
    times_w_hh(d_pre.defined() ? d_pre : dxw.select(0, t), dh);
  }
  return {dxw, dh.to(h0.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("native_rnn_forward", &rnn_forward);
  m.impl("native_rnn_backward", &rnn_backward);
}

}  // namespace fused_rnn::cpu
