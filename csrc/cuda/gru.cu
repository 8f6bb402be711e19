// The GRU's launch functions: the recurrence kernel (recurrence_kernel.cuh) with GruCell.
#include "cells.h"
#include "recurrence_launch.h"
#include "recurrence_launcher.cuh"

namespace fused_rnn::cuda {
namespace {

template <Math M>
ForwardArgs<GruCell, M> forward_args(const GruForwardParams& p) {
  using S = typename MathTypes<M>::Storage;
  ForwardArgs<GruCell, M> a{};
  a.xw = static_cast<const S*>(p.xw);
  a.w_hh = static_cast<const S*>(p.w_hh);
  a.b_hn = static_cast<const S*>(p.b_hn);
  a.h0 = static_cast<const S*>(p.h0);
  a.lengths = p.lengths;
  a.hs = static_cast<S*>(p.hs);
  a.h_n = static_cast<S*>(p.h_n);
  a.gates = static_cast<S*>(p.gates);
  return a;
}

template <Math M>
BackwardArgs<GruCell, M> backward_args(const GruBackwardParams& p) {
  using S = typename MathTypes<M>::Storage;
  BackwardArgs<GruCell, M> a{};
  a.grad_hs = static_cast<const S*>(p.grad_hs);
  a.grad_h_n = static_cast<const S*>(p.grad_h_n);
  a.w_hh = static_cast<const S*>(p.w_hh);
  a.h0 = static_cast<const S*>(p.h0);
  a.lengths = p.lengths;
  a.hs = static_cast<const S*>(p.hs);
  a.gates = static_cast<const S*>(p.gates);
  a.dxw = static_cast<S*>(p.dxw);
  a.d_hn = static_cast<S*>(p.d_hn);
  a.dh0 = static_cast<S*>(p.dh0);
  return a;
}

}  // namespace

WorkspaceLayout gru_forward_workspace(const GruForwardParams& p) {
  return planned_workspace(problem_for(CellKind::kGru, Direction::kForward, p));
}

WorkspaceLayout gru_backward_workspace(const GruBackwardParams& p) {
  return planned_workspace(problem_for(CellKind::kGru, Direction::kBackward, p));
}

cudaError_t launch_gru_forward(const GruForwardParams& p, void* workspace, int64_t begin, int64_t end,
                               cudaStream_t stream) {
  return launch_op<ForwardPass, GruCell>(
      problem_for(CellKind::kGru, Direction::kForward, p), p.shape.steps,
      [&](auto math) { return forward_args<decltype(math)::value>(p); }, workspace, begin, end, stream);
}

cudaError_t launch_gru_backward(const GruBackwardParams& p, void* workspace, int64_t begin, int64_t end,
                                cudaStream_t stream) {
  return launch_op<BackwardPass, GruCell>(
      problem_for(CellKind::kGru, Direction::kBackward, p), p.shape.steps,
      [&](auto math) { return backward_args<decltype(math)::value>(p); }, workspace, begin, end, stream);
}

}  // namespace fused_rnn::cuda
