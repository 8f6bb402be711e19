// Host side of one op call: the cached plan, the workspace carved into the pass's buffers, the setup
// kernels of phase 0, and the recurrence kernel of the planned engine, launched cooperatively over
// all phases when its grid is resident, else one launch per phase.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "engine_catalogue.h"
#include "launch_plans.h"
#include "recurrence_kernel.cuh"

namespace fused_rnn::cuda {

/// Calls body(std::integral_constant<Math, math>{}) for the runtime `math`.
template <typename Body>
cudaError_t with_math(Math math, Body&& body) {
  switch (math) {
    case Math::kBf16Mma: return body(std::integral_constant<Math, Math::kBf16Mma>{});
    case Math::kF16Mma: return body(std::integral_constant<Math, Math::kF16Mma>{});
    case Math::kTf32Mma: return body(std::integral_constant<Math, Math::kTf32Mma>{});
    case Math::kF32Fma: return body(std::integral_constant<Math, Math::kF32Fma>{});
    case Math::kF64Fma: return body(std::integral_constant<Math, Math::kF64Fma>{});
  }
  return cudaErrorInvalidValue;
}

/// The problem of one op call from its params (shape, dtype, allow_tf32). With a projection the
/// product reads a state the caller wrote, not rounded to tf32: float32 then runs exact FMA.
template <typename Params>
ProblemShape problem_for(CellKind cell, Direction direction, const Params& p, bool projected = false) {
  return {cell, direction, math_for(p.dtype, p.allow_tf32 && !projected), p.shape.batch, p.shape.hidden,
          p.shape.state, projected};
}

inline WorkspaceLayout planned_workspace(const ProblemShape& problem) {
  return workspace_layout(current_plan(problem).plan, problem.projected);
}

/// Phases [begin, end) of the recurrence kernel with one engine.
template <typename Pass, typename Engine>
cudaError_t launch_phases(const typename Pass::Args& args, const RecurrenceGeometry& g, bool persistent,
                          int device, int64_t begin, int64_t end, cudaStream_t stream) {
  auto* kernel = recurrence_kernel<Pass, Engine>;
  cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, g.shared_bytes);
  if (status != cudaSuccess) {
    return status;
  }
  if (persistent && end - begin > 1 &&
      grid_fits(reinterpret_cast<const void*>(kernel), g.blocks, g.shared_bytes, device)) {
    cudaLaunchAttribute cooperative{};
    cooperative.id = cudaLaunchAttributeCooperative;
    cooperative.val.cooperative = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(g.blocks);
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = g.shared_bytes;
    config.stream = stream;
    config.attrs = &cooperative;
    config.numAttrs = 1;
    status = cudaLaunchKernelEx(&config, kernel, args, g, begin, end);
    if (status != cudaErrorCooperativeLaunchTooLarge) {
      return status;
    }
    (void)cudaGetLastError();  // fewer SMs than planned are free: one launch per phase instead
  }
  for (int64_t phase = begin; phase < end; ++phase) {
    kernel<<<g.blocks, kThreads, g.shared_bytes, stream>>>(args, g, phase, phase + 1);
    status = cudaGetLastError();
    if (status != cudaSuccess) {
      return status;
    }
  }
  return cudaSuccess;
}

/// The engine of catalogue entry plan.engine (only the entries of the pass's math are compiled).
template <typename Pass>
cudaError_t launch_engine(const typename Pass::Args& args, const RecurrencePlan& plan, const RecurrenceGeometry& g,
                          int device, int64_t begin, int64_t end, cudaStream_t stream) {
  cudaError_t status = cudaErrorInvalidValue;
  int index = 0;
#define FUSED_RNN_LAUNCH_ENTRY(MATH, REGIME, M_TILES, K_STEPS)                                        \
  if constexpr (MATH == Pass::kMath) {                                                                 \
    if (plan.engine == index) {                                                                        \
      status = launch_phases<Pass, ProductEngine<MATH, REGIME, M_TILES, (K_STEPS > 0 ? K_STEPS : 1)>>( \
          args, g, plan.persistent, device, begin, end, stream);                                       \
    }                                                                                                  \
  }                                                                                                    \
  ++index;
  if constexpr (Pass::kDirection == Direction::kForward) {
    FUSED_RNN_FORWARD_ENGINES(FUSED_RNN_LAUNCH_ENTRY)
  } else {
    FUSED_RNN_BACKWARD_ENGINES(FUSED_RNN_LAUNCH_ENTRY)
  }
#undef FUSED_RNN_LAUNCH_ENTRY
  return status;
}

/// Phases [begin, end) of one op call; `args` holds the op's tensors, the workspace pointers are
/// filled here. Phase 0 first zeroes the exchange ring and fills the carried state, slot 0 and the
/// packed weights (none for the backward of a projection, whose product the caller runs).
template <typename Pass>
cudaError_t run_pass(typename Pass::Args args, const ProblemShape& problem, int64_t steps, void* workspace,
                     int64_t begin, int64_t end, cudaStream_t stream) {
  using Operand = typename Pass::Operand;
  using Accumulator = typename Pass::Accumulator;
  const DevicePlan planned = current_plan(problem);
  const RecurrencePlan& plan = planned.plan;
  RecurrenceGeometry g = plan.geometry;
  g.steps = steps;
  const WorkspaceLayout layout = workspace_layout(plan, problem.projected);
  auto* base = static_cast<unsigned char*>(workspace);
  args.packed = reinterpret_cast<Operand*>(base + layout.weights_offset);
  args.ring = reinterpret_cast<Operand*>(base + layout.ring_offset);
  args.ring_slot = layout.ring_slot_elements;
  args.carries = reinterpret_cast<Accumulator*>(base + layout.carries_offset);
  args.projection = reinterpret_cast<Accumulator*>(base + layout.projection_offset);
  if (begin == 0) {
    cudaError_t status =
        cudaMemsetAsync(args.ring, 0, 2 * layout.ring_slot_elements * sizeof(Operand), stream);
    if (status != cudaSuccess) {
      return status;
    }
    const int64_t setup = g.carries * g.batch * g.hidden + g.batch * g.state;
    prepare_kernel<Pass><<<setup_blocks(setup, planned.device), kThreads, 0, stream>>>(args, g);
    if (!(Pass::kDirection == Direction::kBackward && problem.projected)) {
      const int64_t packed = int64_t{g.unit_slices} * g.fragments_per_slice * fragment_elements(Pass::kMath);
      pack_weights_kernel<Pass><<<setup_blocks(packed, planned.device), kThreads, 0, stream>>>(args, g);
    }
    status = cudaGetLastError();
    if (status != cudaSuccess) {
      return status;
    }
  }
  return launch_engine<Pass>(args, plan, g, planned.device, begin, end, stream);
}

/// Phases [begin, end) of an op with Pass<Cell, math> for the problem's math; make_args(math)
/// gives the pass's args (math: a std::integral_constant<Math, ...>).
template <template <typename, Math> class Pass, typename Cell, typename MakeArgs>
cudaError_t launch_op(const ProblemShape& problem, int64_t steps, MakeArgs&& make_args, void* workspace,
                      int64_t begin, int64_t end, cudaStream_t stream) {
  return with_math(problem.math, [&](auto math) {
    return run_pass<Pass<Cell, decltype(math)::value>>(make_args(math), problem, steps, workspace, begin, end,
                                                       stream);
  });
}

}  // namespace fused_rnn::cuda
