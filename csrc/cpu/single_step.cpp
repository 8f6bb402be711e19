// One time step of a layer on the CPU in one op call each way: a cell, or a module called one step
// at a time (a decoder), as fused_rnn/native_step.py runs it eagerly.
//
// Forward: the input projection with the biases folded in (as functional.projection_biases folds
// them), then the recurrence op of one step. Backward: the recurrence's backward op, the recurrent
// weight's product, the projection's products and the bias sums that ops.{rnn,lstm,gru}_grads,
// ops.recurrent_weight_grad, ops.linear_grads and the autograd of the bias fold compose for the
// general path, at T = 1: the same kernels on the same operands, so the results are the general
// path's bit for bit (tests/test_eager_calls.py). Composed in Python, those dozen calls cost about
// 200 us per step more than here (2 threads; GRU, B = 1, H = 32: the whole forward+backward step of
// torch.nn's GRUCell costs 194 us), and a decoder step at B = 64, H = 500 costs about 5 ms.
//
// Shapes: x [1, B, I], w_ih [G*H, I], b_ih and b_hh [G*H] (both or neither), w_hh [G*H, H],
// h0 and c0 [B, H], checked on entry (check_single_step); hs [1, B, H], cs [1, B, H], gates as
// the recurrence ops save them, which those ops check.
// output_mask says which of (dx, dw_ih, db_ih, dw_hh, db_hh) backward computes (the others are
// undefined tensors: None in Python); dh0 and dc0 are always computed. Gradients of the outputs
// may be absent (None: zeros).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/add.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "../recurrence_checks.h"
#include "gemm.h"

namespace fused_rnn::cpu {
namespace {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;
using OutputMask = std::array<bool, 5>;
enum Wanted { kX, kWeightIh, kBiasIh, kWeightHh, kBiasHh };

/// The CPU op `name` of the recurrence (ops.cpp), called through the dispatcher.
template <typename Signature>
c10::TypedOperatorHandle<Signature> recurrence_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using Pair = std::tuple<Tensor, Tensor>;
using Triple = std::tuple<Tensor, Tensor, Tensor>;
using Quadruple = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Quintuple = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using Sextuple = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Septuple = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

bool given(const OptionalTensor& t) { return t.has_value() && t->defined(); }

/// The gradient of an output, zeros where autograd passed none (ops._or_zeros).
Tensor or_zeros(const OptionalTensor& grad, const Tensor& like) {
  return given(grad) ? *grad : at::zeros_like(like);
}

/// x [1, B, I] -> xw [1, B, G*H] = x @ w_ih^T + bias (the native linear of ops.project).
Tensor projection(const Tensor& x, const Tensor& w_ih, const OptionalTensor& bias) {
  return linear(x.reshape({-1, x.size(-1)}), w_ih, bias).unsqueeze(0);
}

/// b_ih + b_hh [G*H], or none for a layer without biases (functional.summed_bias).
OptionalTensor summed_bias(const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  if (!given(b_ih) || !given(b_hh)) {
    return std::nullopt;
  }
  return at::add(*b_ih, *b_hh);
}

/// A GRU's biases outside the recurrence folded into one [3H] (b_ir + b_hr, b_iz + b_hz, b_in),
/// and b_hn [H]; none for a layer without biases (functional.projection_biases).
std::pair<OptionalTensor, OptionalTensor> gru_biases(const OptionalTensor& b_ih,
                                                     const OptionalTensor& b_hh, int64_t hidden) {
  if (!given(b_ih) || !given(b_hh)) {
    return {std::nullopt, std::nullopt};
  }
  const Tensor& ih = *b_ih;
  const Tensor& hh = *b_hh;
  Tensor folded = at::cat({at::add(ih.slice(0, 0, 2 * hidden), hh.slice(0, 0, 2 * hidden)),
                           ih.slice(0, 2 * hidden)});
  return {folded, hh.slice(0, 2 * hidden)};
}

OptionalTensor contiguous(const OptionalTensor& t) {
  return given(t) ? OptionalTensor(t->contiguous()) : std::nullopt;
}

/// The recurrent weight's gradient [sum G_i, H] at one step: d_gates[0]^T h0 for each column
/// block of the gate gradients [1, B, G_i], the blocks joined first where that copy is smaller
/// than the copy of their products (ops.recurrent_weight_grad, ops.joined_when_cheaper).
Tensor recurrent_weight_grad(std::vector<Tensor> blocks, const Tensor& h0, int64_t width) {
  if (blocks.size() > 1 && blocks[0].size(1) < width) {
    blocks = {at::cat(blocks, -1)};
  }
  std::vector<Tensor> grads;
  for (const Tensor& d_gates : blocks) {
    grads.push_back(linear(d_gates.select(0, 0).t(), h0.t(), std::nullopt));
  }
  return grads.size() == 1 ? grads[0] : at::cat(grads);
}

/// The projection's gradients from dxw [1, B, G*H] (ops.linear_grads): dx [1, B, I], dw_ih, and
/// the folded bias's d_bias [G*H] where a bias exists and either bias's gradient is wanted.
Triple projection_grads(const Tensor& dxw, const Tensor& x, const Tensor& w_ih, bool bias,
                        const OutputMask& mask) {
  const Tensor x2d = x.reshape({-1, x.size(-1)});
  const Tensor dxw2d = dxw.view({x2d.size(0), -1});
  const Tensor dx = mask[kX] ? linear(dxw2d, w_ih.t(), std::nullopt).view(x.sizes()) : Tensor();
  const Tensor dw_ih = mask[kWeightIh] ? linear(dxw2d.t(), x2d.t(), std::nullopt) : Tensor();
  const Tensor d_bias = bias && (mask[kBiasIh] || mask[kBiasHh]) ? dxw2d.sum(0) : Tensor();
  return {dx, dw_ih, d_bias};
}

/// `grad` where it is wanted, else undefined.
Tensor wanted(const Tensor& grad, bool want) { return want ? grad : Tensor(); }

/// The gradients of b_ih and b_hh of an LSTM or vanilla RNN: both the folded bias's, distinct
/// tensors (an op's outputs do not alias).
std::pair<Tensor, Tensor> summed_bias_grads(const Tensor& d_bias, const OutputMask& mask) {
  const bool both = mask[kBiasIh] && mask[kBiasHh] && d_bias.defined();
  return {wanted(d_bias, mask[kBiasIh]), both ? d_bias.clone() : wanted(d_bias, mask[kBiasHh])};
}

// ---------------------------------------------------------------------------------------------
// Vanilla RNN.
// ---------------------------------------------------------------------------------------------

/// -> hs [1, B, H], h_n [B, H].
Pair rnn_step_forward(const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                      const Tensor& w_hh, const OptionalTensor& b_hh, const Tensor& h0, bool relu) {
  static const auto forward =
      recurrence_op<Pair(const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&, bool)>(
          "fused_rnn::native_rnn_forward");
  check_single_step("fused_rnn::native_rnn_step_forward", 1, x, w_ih, b_ih, w_hh, b_hh, h0,
                    std::nullopt);
  const Tensor xw = projection(x, w_ih, summed_bias(b_ih, b_hh));
  return forward.call(xw.contiguous(), w_hh.contiguous(), h0.contiguous(), std::nullopt, relu);
}

/// -> dx, dw_ih, db_ih, dw_hh, db_hh, dh0.
Sextuple rnn_step_backward(const OptionalTensor& grad_hs, const OptionalTensor& grad_h_n,
                           const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, bool bias,
                           const Tensor& h0, const Tensor& hs, bool relu, OutputMask mask) {
  static const auto backward =
      recurrence_op<Pair(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                         const OptionalTensor&, const Tensor&, bool)>("fused_rnn::native_rnn_backward");
  check_single_step("fused_rnn::native_rnn_step_backward", 1, x, w_ih, std::nullopt, w_hh,
                    std::nullopt, h0, std::nullopt);
  auto [dxw, dh0] = backward.call(or_zeros(grad_hs, hs).contiguous(),
                                  or_zeros(grad_h_n, h0).contiguous(), w_hh.contiguous(),
                                  h0.contiguous(), std::nullopt, hs.contiguous(), relu);
  const Tensor dw_hh = mask[kWeightHh] ? recurrent_weight_grad({dxw}, h0, hs.size(2)) : Tensor();
  auto [dx, dw_ih, d_bias] = projection_grads(dxw, x, w_ih, bias, mask);
  auto [db_ih, db_hh] = summed_bias_grads(d_bias, mask);
  return {dx, dw_ih, db_ih, dw_hh, db_hh, dh0};
}

// ---------------------------------------------------------------------------------------------
// LSTM (without projection).
// ---------------------------------------------------------------------------------------------

/// -> hs [1, B, H], h_n, c_n [B, H], and with `save` cs [1, B, H] and gates [1, B, 4H] for
/// backward (else undefined: the inference op, which projects inside its step).
Quintuple lstm_step_forward(const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                            const Tensor& w_hh, const OptionalTensor& b_hh, const Tensor& h0,
                            const Tensor& c0, bool save) {
  static const auto forward =
      recurrence_op<Quintuple(const Tensor&, const Tensor&, const OptionalTensor&, const Tensor&,
                              const Tensor&, const OptionalTensor&)>("fused_rnn::native_lstm_forward");
  static const auto inference =
      recurrence_op<Triple(const Tensor&, const Tensor&, const OptionalTensor&, const Tensor&,
                           const OptionalTensor&, const Tensor&, const Tensor&, const OptionalTensor&)>(
          "fused_rnn::native_lstm_input_inference");
  check_single_step("fused_rnn::native_lstm_step_forward", 4, x, w_ih, b_ih, w_hh, b_hh, h0, c0);
  const OptionalTensor bias = summed_bias(b_ih, b_hh);
  if (!save) {
    auto [hs, h_n, c_n] = inference.call(x.contiguous(), w_ih.contiguous(), contiguous(bias),
                                         w_hh.contiguous(), std::nullopt, h0.contiguous(),
                                         c0.contiguous(), std::nullopt);
    return {hs, h_n, c_n, Tensor(), Tensor()};
  }
  const Tensor xw = projection(x, w_ih, bias);
  return forward.call(xw.contiguous(), w_hh.contiguous(), std::nullopt, h0.contiguous(),
                      c0.contiguous(), std::nullopt);
}

/// -> dx, dw_ih, db_ih, dw_hh, db_hh, dh0, dc0.
Septuple lstm_step_backward(const OptionalTensor& grad_hs, const OptionalTensor& grad_h_n,
                            const OptionalTensor& grad_c_n, const Tensor& x, const Tensor& w_ih,
                            const Tensor& w_hh, bool bias, const Tensor& h0, const Tensor& c0,
                            const Tensor& hs, const Tensor& cs, const Tensor& gates,
                            OutputMask mask) {
  static const auto backward =
      recurrence_op<Quadruple(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const OptionalTensor&, const Tensor&, const Tensor&,
                              const OptionalTensor&, const Tensor&, const Tensor&, const Tensor&)>(
          "fused_rnn::native_lstm_backward");
  check_single_step("fused_rnn::native_lstm_step_backward", 4, x, w_ih, std::nullopt, w_hh,
                    std::nullopt, h0, c0);
  auto [dxw, dh0, dc0, dw_hr] = backward.call(
      or_zeros(grad_hs, hs).contiguous(), or_zeros(grad_h_n, h0).contiguous(),
      or_zeros(grad_c_n, c0).contiguous(), w_hh.contiguous(), std::nullopt, h0.contiguous(),
      c0.contiguous(), std::nullopt, hs.contiguous(), cs.contiguous(), gates.contiguous());
  const Tensor dw_hh = mask[kWeightHh] ? recurrent_weight_grad({dxw}, h0, hs.size(2)) : Tensor();
  auto [dx, dw_ih, d_bias] = projection_grads(dxw, x, w_ih, bias, mask);
  auto [db_ih, db_hh] = summed_bias_grads(d_bias, mask);
  return {dx, dw_ih, db_ih, dw_hh, db_hh, dh0, dc0};
}

// ---------------------------------------------------------------------------------------------
// GRU.
// ---------------------------------------------------------------------------------------------

/// -> hs [1, B, H], h_n [B, H], and with `save` gates [1, B, 4H] for backward (else undefined).
Triple gru_step_forward(const Tensor& x, const Tensor& w_ih, const OptionalTensor& b_ih,
                        const Tensor& w_hh, const OptionalTensor& b_hh, const Tensor& h0, bool save) {
  using Signature = Triple(const Tensor&, const Tensor&, const OptionalTensor&, const Tensor&,
                           const OptionalTensor&);
  static const auto forward = recurrence_op<Signature>("fused_rnn::native_gru_forward");
  static const auto inference =
      recurrence_op<Pair(const Tensor&, const Tensor&, const OptionalTensor&, const Tensor&,
                         const OptionalTensor&)>("fused_rnn::native_gru_inference");
  check_single_step("fused_rnn::native_gru_step_forward", 3, x, w_ih, b_ih, w_hh, b_hh, h0,
                    std::nullopt);
  auto [bias, b_hn] = gru_biases(b_ih, b_hh, w_hh.size(1));
  const Tensor xw = projection(x, w_ih, bias).contiguous();
  if (!save) {
    auto [hs, h_n] = inference.call(xw, w_hh.contiguous(), contiguous(b_hn), h0.contiguous(),
                                    std::nullopt);
    return {hs, h_n, Tensor()};
  }
  return forward.call(xw, w_hh.contiguous(), contiguous(b_hn), h0.contiguous(), std::nullopt);
}

/// b_hh: the layer's [3H] bias (none without biases). -> dx, dw_ih, db_ih, dw_hh, db_hh, dh0.
Sextuple gru_step_backward(const OptionalTensor& grad_hs, const OptionalTensor& grad_h_n,
                           const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                           const OptionalTensor& b_hh, const Tensor& h0, const Tensor& hs,
                           const Tensor& gates, OutputMask mask) {
  static const auto backward =
      recurrence_op<Triple(const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&,
                           const Tensor&, const OptionalTensor&, const Tensor&, const Tensor&)>(
          "fused_rnn::native_gru_backward");
  check_single_step("fused_rnn::native_gru_step_backward", 3, x, w_ih, std::nullopt, w_hh,
                    std::nullopt, h0, std::nullopt);
  const int64_t hidden = w_hh.size(1);
  const bool bias = given(b_hh);
  const OptionalTensor b_hn =
      bias ? OptionalTensor(b_hh->slice(0, 2 * hidden).contiguous()) : std::nullopt;
  auto [dxw, d_hn, dh0] = backward.call(
      or_zeros(grad_hs, hs).contiguous(), or_zeros(grad_h_n, h0).contiguous(), w_hh.contiguous(),
      b_hn, h0.contiguous(), std::nullopt, hs.contiguous(), gates.contiguous());
  // The gradients of W_hr, W_hz (columns of dxw) and W_hn (d_hn).
  const Tensor dw_hh = mask[kWeightHh]
                           ? recurrent_weight_grad({dxw.slice(-1, 0, 2 * hidden), d_hn}, h0, hs.size(2))
                           : Tensor();
  auto [dx, dw_ih, d_bias] = projection_grads(dxw, x, w_ih, bias, mask);
  Tensor db_hh;
  if (bias && mask[kBiasHh]) {
    db_hh = at::cat({d_bias.slice(0, 0, 2 * hidden), d_hn.flatten(0, -2).sum(0)});
  }
  return {dx, dw_ih, wanted(d_bias, mask[kBiasIh]), dw_hh, db_hh, dh0};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("native_rnn_step_forward", &rnn_step_forward);
  m.impl("native_rnn_step_backward", &rnn_step_backward);
  m.impl("native_lstm_step_forward", &lstm_step_forward);
  m.impl("native_lstm_step_backward", &lstm_step_backward);
  m.impl("native_gru_step_forward", &gru_step_forward);
  m.impl("native_gru_step_backward", &gru_step_backward);
}

}  // namespace fused_rnn::cpu
