// Launch functions of the CUDA attention kernels, in plain C++ (attention_forward.cu,
// attention_backward.cu). Each runs its whole op on `stream` (asynchronously) and returns the
// status of its launches. The caller (attention_api.cpp) validates the arguments, makes the
// tensors contiguous, plans the tiling with plan_attention (attention_plan.h), allocates the
// outputs and workspaces the params point into, and computes delta for the backward.
#pragma once

#include <cuda_runtime_api.h>

#include "attention_params.h"
#include "attention_plan.h"

namespace fused_rnn::cuda {

/// The forward kernel with `tiling` (AttentionPass::kForward), then the split-K combine when
/// tiling.splits > 1, then the weights from the saved scores when params.weights is set.
cudaError_t launch_attention_forward(const AttentionForwardParams& params, const AttentionTiling& tiling,
                                     cudaStream_t stream);

/// The tilings of the three backward passes (AttentionPass::kQueries, kKeys, kValues).
struct AttentionBackwardTilings {
  AttentionTiling queries;
  AttentionTiling keys;
  AttentionTiling values;
};

/// The query pass (d_query, or its split-K partials), the key pass (d_keys, and the additive
/// score's d_v shares) and the value pass (d_values).
cudaError_t launch_attention_backward(const AttentionBackwardParams& params, const AttentionBackwardTilings& tilings,
                                      cudaStream_t stream);

/// The device's multiprocessor count and opt-in shared memory per block.
cudaError_t attention_device_limits(int device, AttentionDeviceLimits* limits);

}  // namespace fused_rnn::cuda
