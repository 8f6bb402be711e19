// The vanilla RNN's launch functions: the recurrence kernel (recurrence_kernel.cuh) with RnnCell.
#include "cells.h"
#include "recurrence_launch.h"
#include "recurrence_launcher.cuh"

namespace fused_rnn::cuda {
namespace {

template <Math M>
ForwardArgs<RnnCell, M> forward_args(const RnnForwardParams& p) {
  using S = typename MathTypes<M>::Storage;
  ForwardArgs<RnnCell, M> a{};
  a.cell = RnnCell{p.relu};
  a.xw = static_cast<const S*>(p.xw);
  a.w_hh = static_cast<const S*>(p.w_hh);
  a.h0 = static_cast<const S*>(p.h0);
  a.lengths = p.lengths;
  a.hs = static_cast<S*>(p.hs);
  a.h_n = static_cast<S*>(p.h_n);
  return a;
}

template <Math M>
BackwardArgs<RnnCell, M> backward_args(const RnnBackwardParams& p) {
  using S = typename MathTypes<M>::Storage;
  BackwardArgs<RnnCell, M> a{};
  a.cell = RnnCell{p.relu};
  a.grad_hs = static_cast<const S*>(p.grad_hs);
  a.grad_h_n = static_cast<const S*>(p.grad_h_n);
  a.w_hh = static_cast<const S*>(p.w_hh);
  a.h0 = static_cast<const S*>(p.h0);
  a.lengths = p.lengths;
  a.hs = static_cast<const S*>(p.hs);
  a.dxw = static_cast<S*>(p.dxw);
  a.dh0 = static_cast<S*>(p.dh0);
  return a;
}

}  // namespace

WorkspaceLayout rnn_forward_workspace(const RnnForwardParams& p) {
  return planned_workspace(problem_for(CellKind::kRnn, Direction::kForward, p));
}

WorkspaceLayout rnn_backward_workspace(const RnnBackwardParams& p) {
  return planned_workspace(problem_for(CellKind::kRnn, Direction::kBackward, p));
}

cudaError_t launch_rnn_forward(const RnnForwardParams& p, void* workspace, int64_t begin, int64_t end,
                               cudaStream_t stream) {
  return launch_op<ForwardPass, RnnCell>(
      problem_for(CellKind::kRnn, Direction::kForward, p), p.shape.steps,
      [&](auto math) { return forward_args<decltype(math)::value>(p); }, workspace, begin, end, stream);
}

cudaError_t launch_rnn_backward(const RnnBackwardParams& p, void* workspace, int64_t begin, int64_t end,
                                cudaStream_t stream) {
  return launch_op<BackwardPass, RnnCell>(
      problem_for(CellKind::kRnn, Direction::kBackward, p), p.shape.steps,
      [&](auto math) { return backward_args<decltype(math)::value>(p); }, workspace, begin, end, stream);
}

}  // namespace fused_rnn::cuda
