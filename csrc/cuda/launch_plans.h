// Launch plans on the current GPU, cached: the device's description (cudaGetDeviceProperties, once
// per device), the plan of each problem shape (once per device, cell, direction, math, B, H, P),
// and whether a kernel's grid can be resident at once (cudaOccupancyMaxActiveBlocksPerMultiprocessor,
// once per kernel, device and shared-memory size). Thread-safe.
//
// Two environment variables, read at every call, steer the plans for tests and experiments:
//   FUSED_RNN_CUDA_REGIME=registers|shared|global   plan only engines of that regime (when the
//                                                   problem has one)
//   FUSED_RNN_CUDA_STEP_LAUNCHES=1                  one launch per phase, never the cooperative one
#pragma once

#include <cuda_runtime_api.h>

#include "recurrence_planner.h"

namespace fused_rnn::cuda {

/// The plan of `problem` on the current device, and that device's ordinal.
struct DevicePlan {
  int device;
  RecurrencePlan plan;
};
DevicePlan current_plan(const ProblemShape& problem);

/// Every one of `blocks` blocks of `kernel` (kThreads threads, `shared_bytes` dynamic shared
/// memory) can be resident at once on `device`, and the device supports cooperative launches.
bool grid_fits(const void* kernel, int blocks, int shared_bytes, int device);

/// A grid for the small setup kernels: enough blocks of kThreads for `elements`, at most 8 per SM.
int setup_blocks(int64_t elements, int device);

}  // namespace fused_rnn::cuda
