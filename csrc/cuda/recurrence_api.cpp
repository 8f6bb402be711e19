// The torch-facing layer of the CUDA recurrence kernels.
//
// For each op, plan_<op> checks the arguments (the shared checks of recurrence_checks.h, plus CUDA
// residency and the lengths' values), makes the inputs contiguous, allocates the outputs and fills
// the params struct of recurrence_params.h. An op's CUDA implementation is then
//
//     auto plan = plan_lstm_forward(kLstmForward, xw, w_hh, w_hr, h0, c0, lengths, /*save=*/true);
//     const c10::cuda::CUDAGuard guard(xw.device());
//     check_launch(kLstmForward, launch_lstm_forward(plan.params, current_stream(xw)));
//     return plan.outputs;
//
// registered in the TORCH_LIBRARY_IMPL block below together with the .cu file that defines its
// launch function (recurrence_launch.h). The inference ops (native_{lstm,gru}_inference) run the
// forward launch function with save = false: the saved-tensor pointers of the params are null,
// and the kernels write only hs and the final states; their outputs are the plan's first ones. Ops without one are not registered, so calling them on
// CUDA tensors raises the dispatcher's "no CUDA kernel" error, and fused_rnn.native reports the
// CUDA backend as unavailable.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "../recurrence_checks.h"
#include "recurrence_launch.h"

namespace fused_rnn::cuda {

using at::Tensor;

/// What one launch needs: its params, the outputs the params point into, and the contiguous
/// inputs they point into (kept alive until the launch is queued).
template <typename Params, typename Outputs>
struct LaunchPlan {
  Params params;
  Outputs outputs;
  std::vector<Tensor> inputs;
};

namespace {

DType dtype_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "fused_rnn CUDA kernels: unsupported dtype ", dtype);
  }
}

RecurrenceShape shape_of(const fused_rnn::RecurrenceSizes& n) {
  return {n.steps, n.batch, n.hidden, n.state};
}

/// Contiguous copies (or the tensors themselves) of the inputs, in argument order.
class Inputs {
 public:
  const void* add(const Tensor& tensor) {
    tensors_.push_back(tensor.contiguous());
    return tensors_.back().const_data_ptr();
  }
  const void* add(const std::optional<Tensor>& tensor) {
    return tensor.has_value() ? add(*tensor) : nullptr;
  }
  const int64_t* add_lengths(const char* op, const std::optional<Tensor>& lengths, int64_t steps) {
    if (!lengths.has_value()) {
      return nullptr;
    }
    check_lengths_values(op, *lengths, steps);
    return static_cast<const int64_t*>(add(*lengths));
  }
  std::vector<Tensor> take() { return std::move(tensors_); }

 private:
  std::vector<Tensor> tensors_;
};

void check_on_cuda(const char* op, const char* name, const Tensor& anchor) {
  TORCH_CHECK(anchor.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ",
              anchor.device());
}

}  // namespace

cudaStream_t current_stream(const Tensor& anchor) {
  return c10::cuda::getCurrentCUDAStream(anchor.device().index()).stream();
}

void check_launch(const char* op, cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, op, ": CUDA kernel launch failed: ",
              cudaGetErrorString(status));
}

LaunchPlan<RnnForwardParams, std::tuple<Tensor, Tensor>> plan_rnn_forward(
    const char* op, const Tensor& xw, const Tensor& w_hh, const Tensor& h0,
    const std::optional<Tensor>& lengths, bool relu) {
  const auto n = check_rnn_forward(op, xw, w_hh, h0, lengths);
  check_on_cuda(op, "xw", xw);
  Inputs inputs;
  RnnForwardParams p{dtype_of(xw.scalar_type()), shape_of(n), relu};
  p.xw = inputs.add(xw);
  p.w_hh = inputs.add(w_hh);
  p.h0 = inputs.add(h0);
  p.lengths = inputs.add_lengths(op, lengths, n.steps);
  const Tensor hs = at::empty({n.steps, n.batch, n.hidden}, xw.options());
  const Tensor h_n = at::empty({n.batch, n.hidden}, xw.options());
  p.hs = hs.data_ptr();
  p.h_n = h_n.data_ptr();
  return {p, {hs, h_n}, inputs.take()};
}

LaunchPlan<RnnBackwardParams, std::tuple<Tensor, Tensor>> plan_rnn_backward(
    const char* op, const Tensor& grad_hs, const Tensor& grad_h_n, const Tensor& w_hh,
    const Tensor& h0, const std::optional<Tensor>& lengths, const Tensor& hs, bool relu) {
  const auto n = check_rnn_backward(op, grad_hs, grad_h_n, w_hh, h0, lengths, hs);
  check_on_cuda(op, "hs", hs);
  Inputs inputs;
  RnnBackwardParams p{dtype_of(hs.scalar_type()), shape_of(n), relu};
  p.grad_hs = inputs.add(grad_hs);
  p.grad_h_n = inputs.add(grad_h_n);
  p.w_hh = inputs.add(w_hh);
  p.h0 = inputs.add(h0);
  p.lengths = inputs.add_lengths(op, lengths, n.steps);
  p.hs = inputs.add(hs);
  const Tensor dxw = at::empty({n.steps, n.batch, n.hidden}, hs.options());
  const Tensor dh0 = at::empty({n.batch, n.hidden}, hs.options());
  p.dxw = dxw.data_ptr();
  p.dh0 = dh0.data_ptr();
  return {p, {dxw, dh0}, inputs.take()};
}

LaunchPlan<LstmForwardParams, std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>>
plan_lstm_forward(const char* op, const Tensor& xw, const Tensor& w_hh,
                  const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0,
                  const std::optional<Tensor>& lengths, bool save) {
  const auto n = check_lstm_forward(op, xw, w_hh, w_hr, h0, c0, lengths);
  check_on_cuda(op, "xw", xw);
  Inputs inputs;
  LstmForwardParams p{dtype_of(xw.scalar_type()), shape_of(n)};
  p.xw = inputs.add(xw);
  p.w_hh = inputs.add(w_hh);
  p.w_hr = inputs.add(w_hr);
  p.h0 = inputs.add(h0);
  p.c0 = inputs.add(c0);
  p.lengths = inputs.add_lengths(op, lengths, n.steps);
  const auto acc = xw.options().dtype(accumulation_dtype(xw.scalar_type()));
  const Tensor hs = at::empty({n.steps, n.batch, n.state}, xw.options());
  const Tensor h_n = at::empty({n.batch, n.state}, xw.options());
  const Tensor c_n = at::empty({n.batch, n.hidden}, xw.options());
  const Tensor cs = save ? at::empty({n.steps, n.batch, n.hidden}, acc) : Tensor();
  const Tensor gates = save ? at::empty({n.steps, n.batch, 4 * n.hidden}, xw.options()) : Tensor();
  p.hs = hs.data_ptr();
  p.h_n = h_n.data_ptr();
  p.c_n = c_n.data_ptr();
  p.cs = save ? cs.data_ptr() : nullptr;
  p.gates = save ? gates.data_ptr() : nullptr;
  return {p, {hs, h_n, c_n, cs, gates}, inputs.take()};
}

LaunchPlan<LstmBackwardParams, std::tuple<Tensor, Tensor, Tensor, Tensor>> plan_lstm_backward(
    const char* op, const Tensor& grad_hs, const Tensor& grad_h_n, const Tensor& grad_c_n,
    const Tensor& w_hh, const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0,
    const std::optional<Tensor>& lengths, const Tensor& hs, const Tensor& cs,
    const Tensor& gates) {
  const auto n = check_lstm_backward(op, grad_hs, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, lengths,
                                     hs, cs, gates);
  check_on_cuda(op, "hs", hs);
  Inputs inputs;
  LstmBackwardParams p{dtype_of(hs.scalar_type()), shape_of(n)};
  p.grad_hs = inputs.add(grad_hs);
  p.grad_h_n = inputs.add(grad_h_n);
  p.grad_c_n = inputs.add(grad_c_n);
  p.w_hh = inputs.add(w_hh);
  p.w_hr = inputs.add(w_hr);
  p.h0 = inputs.add(h0);
  p.c0 = inputs.add(c0);
  p.lengths = inputs.add_lengths(op, lengths, n.steps);
  p.hs = inputs.add(hs);
  p.cs = inputs.add(cs);
  p.gates = inputs.add(gates);
  const Tensor dxw = at::empty({n.steps, n.batch, 4 * n.hidden}, hs.options());
  const Tensor dh0 = at::empty({n.batch, n.state}, hs.options());
  const Tensor dc0 = at::empty({n.batch, n.hidden}, hs.options());
  const Tensor dw_hr = w_hr.has_value() ? at::empty({n.state, n.hidden}, hs.options())
                                        : at::empty({0}, hs.options());
  p.dxw = dxw.data_ptr();
  p.dh0 = dh0.data_ptr();
  p.dc0 = dc0.data_ptr();
  p.dw_hr = w_hr.has_value() ? dw_hr.data_ptr() : nullptr;
  return {p, {dxw, dh0, dc0, dw_hr}, inputs.take()};
}

LaunchPlan<GruForwardParams, std::tuple<Tensor, Tensor, Tensor>> plan_gru_forward(
    const char* op, const Tensor& xw, const Tensor& w_hh, const std::optional<Tensor>& b_hn,
    const Tensor& h0, const std::optional<Tensor>& lengths, bool save) {
  const auto n = check_gru_forward(op, xw, w_hh, b_hn, h0, lengths);
  check_on_cuda(op, "xw", xw);
  Inputs inputs;
  GruForwardParams p{dtype_of(xw.scalar_type()), shape_of(n)};
  p.xw = inputs.add(xw);
  p.w_hh = inputs.add(w_hh);
  p.b_hn = inputs.add(b_hn);
  p.h0 = inputs.add(h0);
  p.lengths = inputs.add_lengths(op, lengths, n.steps);
  const Tensor hs = at::empty({n.steps, n.batch, n.hidden}, xw.options());
  const Tensor h_n = at::empty({n.batch, n.hidden}, xw.options());
  const Tensor gates = save ? at::empty({n.steps, n.batch, 4 * n.hidden}, xw.options()) : Tensor();
  p.hs = hs.data_ptr();
  p.h_n = h_n.data_ptr();
  p.gates = save ? gates.data_ptr() : nullptr;
  return {p, {hs, h_n, gates}, inputs.take()};
}

LaunchPlan<GruBackwardParams, std::tuple<Tensor, Tensor, Tensor>> plan_gru_backward(
    const char* op, const Tensor& grad_hs, const Tensor& grad_h_n, const Tensor& w_hh,
    const std::optional<Tensor>& b_hn, const Tensor& h0, const std::optional<Tensor>& lengths,
    const Tensor& hs, const Tensor& gates) {
  const auto n = check_gru_backward(op, grad_hs, grad_h_n, w_hh, b_hn, h0, lengths, hs, gates);
  check_on_cuda(op, "hs", hs);
  Inputs inputs;
  GruBackwardParams p{dtype_of(hs.scalar_type()), shape_of(n)};
  p.grad_hs = inputs.add(grad_hs);
  p.grad_h_n = inputs.add(grad_h_n);
  p.w_hh = inputs.add(w_hh);
  p.b_hn = inputs.add(b_hn);
  p.h0 = inputs.add(h0);
  p.lengths = inputs.add_lengths(op, lengths, n.steps);
  p.hs = inputs.add(hs);
  p.gates = inputs.add(gates);
  const Tensor dxw = at::empty({n.steps, n.batch, 3 * n.hidden}, hs.options());
  const Tensor d_hn = at::empty({n.steps, n.batch, n.hidden}, hs.options());
  const Tensor dh0 = at::empty({n.batch, n.hidden}, hs.options());
  p.dxw = dxw.data_ptr();
  p.d_hn = d_hn.data_ptr();
  p.dh0 = dh0.data_ptr();
  return {p, {dxw, d_hn, dh0}, inputs.take()};
}

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  // One m.impl per op whose launch function is compiled (none yet).
}

}  // namespace fused_rnn::cuda
