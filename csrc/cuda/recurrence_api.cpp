// The torch-facing layer of the CUDA recurrence kernels: the CUDA implementations of the native_*
// recurrence ops of csrc/ops.cpp.
//
// For each op, plan_<op> checks the arguments (the shared checks of recurrence_checks.h, plus CUDA
// residency and the lengths' values), makes the inputs contiguous, allocates the outputs and fills
// the params struct of recurrence_params.h; run_phases then allocates the workspace the launch
// plan asks for (recurrence_launch.h) and runs every phase of the op on the current stream. The
// inference ops (native_{lstm,gru}_inference) run the forward launch with save = false: the
// saved-tensor pointers of the params are null and the kernels write only hs and the final states.
//
// An LSTM with a projection (w_hr) runs one phase per launch with the projection between them,
// as torch GEMMs here (h = (o * tanh(c)) W_hr^T forward; the gradients through W_hr and W_hh,
// dh0 and dw_hr backward), in the accumulation dtype.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/where.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "../recurrence_checks.h"
#include "recurrence_launch.h"

namespace fused_rnn::cuda {
namespace {

using at::Tensor;

constexpr const char* kRnnForward = "fused_rnn::native_rnn_forward";
constexpr const char* kRnnBackward = "fused_rnn::native_rnn_backward";
constexpr const char* kLstmForward = "fused_rnn::native_lstm_forward";
constexpr const char* kLstmInference = "fused_rnn::native_lstm_inference";
constexpr const char* kLstmBackward = "fused_rnn::native_lstm_backward";
constexpr const char* kGruForward = "fused_rnn::native_gru_forward";
constexpr const char* kGruInference = "fused_rnn::native_gru_inference";
constexpr const char* kGruBackward = "fused_rnn::native_gru_backward";

/// What one launch needs: its params, the outputs the params point into, and the contiguous
/// inputs they point into (kept alive until the launch is queued).
template <typename Params, typename Outputs>
struct LaunchPlan {
  Params params;
  Outputs outputs;
  std::vector<Tensor> inputs;
};

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

void check_launch(const char* op, cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(status));
}

/// The common fields of every params struct.
template <typename Params>
Params params_for(const Tensor& anchor, const fused_rnn::RecurrenceSizes& n) {
  Params p{};
  p.dtype = dtype_of(anchor.scalar_type());
  p.shape = shape_of(n);
  p.allow_tf32 = at::globalContext().allowTF32CuBLAS();
  return p;
}

/// A [bytes] workspace on the anchor's device, in the current stream's allocation order.
Tensor allocate_workspace(const WorkspaceLayout& layout, const Tensor& anchor) {
  return at::empty({layout.bytes}, anchor.options().dtype(at::kByte));
}

/// `elements` values of `dtype` starting `offset` bytes into the workspace, as a tensor.
Tensor workspace_view(const Tensor& workspace, int64_t offset, at::IntArrayRef shape, at::ScalarType dtype) {
  int64_t elements = 1;
  for (const int64_t size : shape) {
    elements *= size;
  }
  return workspace.narrow(0, offset, elements * c10::elementSize(dtype)).view(dtype).view(shape);
}

/// Runs phases [0, phases) of one op: allocates its workspace, then one launch call.
template <typename Params, typename Workspace, typename Launch>
void run_phases(const char* op, const Params& params, const Tensor& anchor, int64_t phases, Workspace workspace_of,
                Launch launch) {
  const c10::cuda::CUDAGuard guard(anchor.device());
  const Tensor workspace = allocate_workspace(workspace_of(params), anchor);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(anchor.device().index()).stream();
  check_launch(op, launch(params, workspace.data_ptr(), 0, phases, stream));
}

// ---- plan_<op>: checks, contiguous inputs, outputs, params. ----

LaunchPlan<RnnForwardParams, std::tuple<Tensor, Tensor>> plan_rnn_forward(
    const char* op, const Tensor& xw, const Tensor& w_hh, const Tensor& h0,
    const std::optional<Tensor>& lengths, bool relu) {
  const auto n = check_rnn_forward(op, xw, w_hh, h0, lengths);
  check_on_cuda(op, "xw", xw);
  Inputs inputs;
  auto p = params_for<RnnForwardParams>(xw, n);
  p.relu = relu;
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
  auto p = params_for<RnnBackwardParams>(hs, n);
  p.relu = relu;
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
  auto p = params_for<LstmForwardParams>(xw, n);
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
  auto p = params_for<LstmBackwardParams>(hs, n);
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
  auto p = params_for<GruForwardParams>(xw, n);
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
  auto p = params_for<GruBackwardParams>(hs, n);
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

// ---- LSTM with a projection: one phase per launch, the projection between them. ----

/// [B, 1] bool: the rows live at step t, or an undefined tensor when every row is.
Tensor live_rows(const std::optional<Tensor>& lengths, int64_t t) {
  return lengths.has_value() ? lengths->unsqueeze(1).gt(t) : Tensor();
}

Tensor keep_live(const Tensor& live, const Tensor& value, const Tensor& otherwise) {
  return live.defined() ? at::where(live, value, otherwise) : value;
}

Tensor zero_dead(const Tensor& live, const Tensor& value) {
  return live.defined() ? at::where(live, value, 0) : value;
}

/// hs, h_n: h[t] = (o * tanh(c)) W_hr^T after each kernel phase, fed back through exchange slot
/// (t + 1) % 2 (rows past their length keep their state and emit zeros).
void project_lstm_forward(const LstmForwardParams& p, const Tensor& w_hr, const std::optional<Tensor>& lengths,
                          const Tensor& hs, const Tensor& h_n) {
  const c10::cuda::CUDAGuard guard(hs.device());
  const WorkspaceLayout layout = lstm_forward_workspace(p);
  const Tensor workspace = allocate_workspace(layout, hs);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(hs.device().index()).stream();
  const int64_t T = p.shape.steps, B = p.shape.batch, H = p.shape.hidden, P = p.shape.state;
  const at::ScalarType dtype = hs.scalar_type(), acc = accumulation_dtype(dtype);
  const Tensor ring = workspace_view(workspace, layout.ring_offset, {2, layout.ring_rows, layout.ring_row_elements}, dtype);
  const Tensor unprojected = workspace_view(workspace, layout.projection_offset, {B, H}, acc);
  const Tensor projection_t = w_hr.to(acc).t();
  for (int64_t t = 0; t < T; ++t) {
    check_launch(kLstmForward, launch_lstm_forward(p, workspace.data_ptr(), t, t + 1, stream));
    const Tensor live = live_rows(lengths, t);
    const Tensor projected = at::mm(unprojected, projection_t);  // [B, P]
    const Tensor state = ring.select(0, t % 2).narrow(0, 0, B).narrow(1, 0, P);
    hs.select(0, t).copy_(zero_dead(live, projected));
    ring.select(0, (t + 1) % 2).narrow(0, 0, B).narrow(1, 0, P).copy_(keep_live(live, projected.to(dtype), state));
  }
  h_n.copy_(ring.select(0, T % 2).narrow(0, 0, B).narrow(1, 0, P));
}

/// dh0 and dw_hr: per step (reverse), the gradient reaching h[t] goes through W_hr into the
/// kernel phase, and the phase's gate gradients through W_hh into dh (live rows).
void project_lstm_backward(const LstmBackwardParams& p, const Tensor& grad_hs, const Tensor& grad_h_n,
                           const Tensor& w_hh, const Tensor& w_hr, const std::optional<Tensor>& lengths,
                           const Tensor& cs, const Tensor& gates, const Tensor& dxw, const Tensor& dh0,
                           const Tensor& dw_hr) {
  const c10::cuda::CUDAGuard guard(dxw.device());
  const WorkspaceLayout layout = lstm_backward_workspace(p);
  const Tensor workspace = allocate_workspace(layout, dxw);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dxw.device().index()).stream();
  const int64_t T = p.shape.steps, B = p.shape.batch, H = p.shape.hidden, P = p.shape.state;
  const at::ScalarType acc = accumulation_dtype(dxw.scalar_type());
  Tensor d_unprojected = workspace_view(workspace, layout.projection_offset, {B, H}, acc);
  const Tensor recurrent = w_hh.to(acc), projection = w_hr.to(acc);
  const Tensor d_outputs = at::empty({T, B, P}, dxw.options().dtype(acc));  // reaching each h[t]
  Tensor dh = grad_h_n.to(acc);
  for (int64_t phase = 0; phase < T; ++phase) {
    const int64_t t = T - 1 - phase;
    const Tensor live = live_rows(lengths, t);
    d_outputs.select(0, t).copy_(zero_dead(live, dh + zero_dead(live, grad_hs.select(0, t).to(acc))));
    at::mm_out(d_unprojected, d_outputs.select(0, t), projection);
    check_launch(kLstmBackward, launch_lstm_backward(p, workspace.data_ptr(), phase, phase + 1, stream));
    dh = keep_live(live, at::mm(dxw.select(0, t).to(acc), recurrent), dh);
  }
  dh0.copy_(dh);
  const Tensor unprojected = gates.narrow(2, 3 * H, H).to(acc) * at::tanh(cs);  // [T, B, H]
  dw_hr.copy_(at::mm(d_outputs.view({T * B, P}).t(), unprojected.view({T * B, H})));
}

// ---- The ops. ----

std::tuple<Tensor, Tensor> rnn_forward(const Tensor& xw, const Tensor& w_hh, const Tensor& h0,
                                       const std::optional<Tensor>& lengths, bool relu) {
  const auto plan = plan_rnn_forward(kRnnForward, xw, w_hh, h0, lengths, relu);
  run_phases(kRnnForward, plan.params, xw, plan.params.shape.steps, rnn_forward_workspace, launch_rnn_forward);
  return plan.outputs;
}

std::tuple<Tensor, Tensor> rnn_backward(const Tensor& grad_hs, const Tensor& grad_h_n, const Tensor& w_hh,
                                        const Tensor& h0, const std::optional<Tensor>& lengths,
                                        const Tensor& hs, bool relu) {
  const auto plan = plan_rnn_backward(kRnnBackward, grad_hs, grad_h_n, w_hh, h0, lengths, hs, relu);
  run_phases(kRnnBackward, plan.params, hs, plan.params.shape.steps + 1, rnn_backward_workspace,
             launch_rnn_backward);
  return plan.outputs;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> run_lstm_forward(
    const char* op, const Tensor& xw, const Tensor& w_hh, const std::optional<Tensor>& w_hr, const Tensor& h0,
    const Tensor& c0, const std::optional<Tensor>& lengths, bool save) {
  const auto plan = plan_lstm_forward(op, xw, w_hh, w_hr, h0, c0, lengths, save);
  if (w_hr.has_value()) {
    project_lstm_forward(plan.params, *w_hr, lengths, std::get<0>(plan.outputs), std::get<1>(plan.outputs));
  } else {
    run_phases(op, plan.params, xw, plan.params.shape.steps, lstm_forward_workspace, launch_lstm_forward);
  }
  return plan.outputs;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(const Tensor& xw, const Tensor& w_hh,
                                                                 const std::optional<Tensor>& w_hr,
                                                                 const Tensor& h0, const Tensor& c0,
                                                                 const std::optional<Tensor>& lengths) {
  return run_lstm_forward(kLstmForward, xw, w_hh, w_hr, h0, c0, lengths, /*save=*/true);
}

std::tuple<Tensor, Tensor, Tensor> lstm_inference(const Tensor& xw, const Tensor& w_hh,
                                                  const std::optional<Tensor>& w_hr, const Tensor& h0,
                                                  const Tensor& c0, const std::optional<Tensor>& lengths) {
  auto [hs, h_n, c_n, cs, gates] = run_lstm_forward(kLstmInference, xw, w_hh, w_hr, h0, c0, lengths, /*save=*/false);
  return {hs, h_n, c_n};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_hs, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& w_hh,
    const std::optional<Tensor>& w_hr, const Tensor& h0, const Tensor& c0, const std::optional<Tensor>& lengths,
    const Tensor& hs, const Tensor& cs, const Tensor& gates) {
  const auto plan = plan_lstm_backward(kLstmBackward, grad_hs, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, lengths,
                                       hs, cs, gates);
  const auto& [dxw, dh0, dc0, dw_hr] = plan.outputs;
  if (w_hr.has_value()) {
    project_lstm_backward(plan.params, grad_hs, grad_h_n, w_hh, *w_hr, lengths, cs, gates, dxw, dh0, dw_hr);
  } else {
    run_phases(kLstmBackward, plan.params, hs, plan.params.shape.steps + 1, lstm_backward_workspace,
               launch_lstm_backward);
  }
  return plan.outputs;
}

std::tuple<Tensor, Tensor, Tensor> run_gru_forward(const char* op, const Tensor& xw, const Tensor& w_hh,
                                                   const std::optional<Tensor>& b_hn, const Tensor& h0,
                                                   const std::optional<Tensor>& lengths, bool save) {
  const auto plan = plan_gru_forward(op, xw, w_hh, b_hn, h0, lengths, save);
  run_phases(op, plan.params, xw, plan.params.shape.steps, gru_forward_workspace, launch_gru_forward);
  return plan.outputs;
}

std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& xw, const Tensor& w_hh,
                                               const std::optional<Tensor>& b_hn, const Tensor& h0,
                                               const std::optional<Tensor>& lengths) {
  return run_gru_forward(kGruForward, xw, w_hh, b_hn, h0, lengths, /*save=*/true);
}

std::tuple<Tensor, Tensor> gru_inference(const Tensor& xw, const Tensor& w_hh, const std::optional<Tensor>& b_hn,
                                         const Tensor& h0, const std::optional<Tensor>& lengths) {
  auto [hs, h_n, gates] = run_gru_forward(kGruInference, xw, w_hh, b_hn, h0, lengths, /*save=*/false);
  return {hs, h_n};
}

std::tuple<Tensor, Tensor, Tensor> gru_backward(const Tensor& grad_hs, const Tensor& grad_h_n, const Tensor& w_hh,
                                                const std::optional<Tensor>& b_hn, const Tensor& h0,
                                                const std::optional<Tensor>& lengths, const Tensor& hs,
                                                const Tensor& gates) {
  const auto plan = plan_gru_backward(kGruBackward, grad_hs, grad_h_n, w_hh, b_hn, h0, lengths, hs, gates);
  run_phases(kGruBackward, plan.params, hs, plan.params.shape.steps + 1, gru_backward_workspace,
             launch_gru_backward);
  return plan.outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("native_rnn_forward", &rnn_forward);
  m.impl("native_rnn_backward", &rnn_backward);
  m.impl("native_lstm_forward", &lstm_forward);
  m.impl("native_lstm_inference", &lstm_inference);
  m.impl("native_lstm_backward", &lstm_backward);
  m.impl("native_gru_forward", &gru_forward);
  m.impl("native_gru_inference", &gru_inference);
  m.impl("native_gru_backward", &gru_backward);
}

}  // namespace fused_rnn::cuda
