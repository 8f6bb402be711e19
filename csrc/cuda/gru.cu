// The GRU's launch functions: the recurrence kernel (recurrence_kernel.cuh) with GruCell.
#include "cells.h"
#include "recurrence_launch.h"
#include "recurrence_launcher.cuh"

namespace fused_rnn::cuda {
namespace {

ProblemShape problem_of(const RecurrenceShape& shape, DType dtype, bool allow_tf32, Direction direction) {
  return {CellKind::kGru, direction, math_for(dtype, allow_tf32), shape.batch, shape.hidden, shape.state, false};
}

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
  return planned_workspace(problem_of(p.shape, p.dtype, p.allow_tf32, Direction::kForward));
}

WorkspaceLayout gru_backward_workspace(const GruBackwardParams& p) {
  return planned_workspace(problem_of(p.shape, p.dtype, p.allow_tf32, Direction::kBackward));
}

cudaError_t launch_gru_forward(const GruForwardParams& p, void* workspace, int64_t begin, int64_t end,
                               cudaStream_t stream) {
  const ProblemShape problem = problem_of(p.shape, p.dtype, p.allow_tf32, Direction::kForward);
  return with_math(problem.math, [&](auto math) {
    return run_pass<ForwardPass<GruCell, math.value>>(forward_args<math.value>(p), problem, p.shape.steps,
                                                       workspace, begin, end, stream);
  });
}

cudaError_t launch_gru_backward(const GruBackwardParams& p, void* workspace, int64_t begin, int64_t end,
                                cudaStream_t stream) {
  const ProblemShape problem = problem_of(p.shape, p.dtype, p.allow_tf32, Direction::kBackward);
  return with_math(problem.math, [&](auto math) {
    return run_pass<BackwardPass<GruCell, math.value>>(backward_args<math.value>(p), problem, p.shape.steps,
                                                        workspace, begin, end, stream);
  });
}

}  // namespace fused_rnn::cuda
