// The LSTM's launch functions: the recurrence kernel (recurrence_kernel.cuh) with LstmCell. With a
// projection the kernel runs one phase per call and recurrence_api.cpp projects between them; the
// recurrent product then runs in exact FMA for float32 (the projected state it reads is written by
// the caller, not rounded to tf32).
#include "cells.h"
#include "recurrence_launch.h"
#include "recurrence_launcher.cuh"

namespace fused_rnn::cuda {
namespace {

template <Math M>
ForwardArgs<LstmCell, M> forward_args(const LstmForwardParams& p) {
  using S = typename MathTypes<M>::Storage;
  using A = typename MathTypes<M>::Accumulator;
  ForwardArgs<LstmCell, M> a{};
  a.projected = p.w_hr != nullptr;
  a.xw = static_cast<const S*>(p.xw);
  a.w_hh = static_cast<const S*>(p.w_hh);
  a.h0 = static_cast<const S*>(p.h0);
  a.c0 = static_cast<const S*>(p.c0);
  a.lengths = p.lengths;
  a.hs = static_cast<S*>(p.hs);
  a.h_n = static_cast<S*>(p.h_n);
  a.c_n = static_cast<S*>(p.c_n);
  a.cs = static_cast<A*>(p.cs);
  a.gates = static_cast<S*>(p.gates);
  return a;
}

template <Math M>
BackwardArgs<LstmCell, M> backward_args(const LstmBackwardParams& p) {
  using S = typename MathTypes<M>::Storage;
  using A = typename MathTypes<M>::Accumulator;
  BackwardArgs<LstmCell, M> a{};
  a.projected = p.w_hr != nullptr;
  a.grad_hs = static_cast<const S*>(p.grad_hs);
  a.grad_h_n = static_cast<const S*>(p.grad_h_n);
  a.grad_c_n = static_cast<const S*>(p.grad_c_n);
  a.w_hh = static_cast<const S*>(p.w_hh);
  a.h0 = static_cast<const S*>(p.h0);
  a.c0 = static_cast<const S*>(p.c0);
  a.lengths = p.lengths;
  a.hs = static_cast<const S*>(p.hs);
  a.cs = static_cast<const A*>(p.cs);
  a.gates = static_cast<const S*>(p.gates);
  a.dxw = static_cast<S*>(p.dxw);
  a.dh0 = static_cast<S*>(p.dh0);
  a.dc0 = static_cast<S*>(p.dc0);
  return a;
}

}  // namespace

WorkspaceLayout lstm_forward_workspace(const LstmForwardParams& p) {
  return planned_workspace(problem_for(CellKind::kLstm, Direction::kForward, p, p.w_hr != nullptr));
}

WorkspaceLayout lstm_backward_workspace(const LstmBackwardParams& p) {
  return planned_workspace(problem_for(CellKind::kLstm, Direction::kBackward, p, p.w_hr != nullptr));
}

cudaError_t launch_lstm_forward(const LstmForwardParams& p, void* workspace, int64_t begin, int64_t end,
                               cudaStream_t stream) {
  return launch_op<ForwardPass, LstmCell>(
      problem_for(CellKind::kLstm, Direction::kForward, p, p.w_hr != nullptr), p.shape.steps,
      [&](auto math) { return forward_args<decltype(math)::value>(p); }, workspace, begin, end, stream);
}

cudaError_t launch_lstm_backward(const LstmBackwardParams& p, void* workspace, int64_t begin, int64_t end,
                                cudaStream_t stream) {
  return launch_op<BackwardPass, LstmCell>(
      problem_for(CellKind::kLstm, Direction::kBackward, p, p.w_hr != nullptr), p.shape.steps,
      [&](auto math) { return backward_args<decltype(math)::value>(p); }, workspace, begin, end, stream);
}

}  // namespace fused_rnn::cuda
