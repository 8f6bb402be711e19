// Launch functions of the CUDA recurrence kernels, one pair per op of csrc/ops.cpp, in plain CUDA C++.
//
// Each op runs in phases: forward T (phase t = step t); backward T + 1 (phase p = step T-1-p, and
// a last phase that forms dh0), T with a projection. The caller:
//   1. asks <op>_workspace(params) for the device workspace the call needs (its layout on the
//      current device, from the cached launch plan) and allocates `bytes` of it;
//   2. runs launch_<op>(params, workspace, begin, end, stream) over phases [begin, end): the whole
//      op at once, or, for an LSTM with projection, one phase at a time with the projection GEMM
//      in between (recurrence_api.cpp). Phase 0 also fills the workspace (packed weights, carried
//      state, exchange buffer).
// Launches are asynchronous on `stream`; the functions return the status of their launches. The
// arguments are validated by the caller (shapes, dtypes, contiguity, one device, lengths in [1, T]).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "recurrence_params.h"
#include "recurrence_planner.h"

namespace fused_rnn::cuda {

WorkspaceLayout rnn_forward_workspace(const RnnForwardParams& params);
WorkspaceLayout rnn_backward_workspace(const RnnBackwardParams& params);
WorkspaceLayout lstm_forward_workspace(const LstmForwardParams& params);
WorkspaceLayout lstm_backward_workspace(const LstmBackwardParams& params);
WorkspaceLayout gru_forward_workspace(const GruForwardParams& params);
WorkspaceLayout gru_backward_workspace(const GruBackwardParams& params);

cudaError_t launch_rnn_forward(const RnnForwardParams& params, void* workspace, int64_t begin, int64_t end,
                               cudaStream_t stream);
cudaError_t launch_rnn_backward(const RnnBackwardParams& params, void* workspace, int64_t begin, int64_t end,
                                cudaStream_t stream);
/// With w_hr, each phase writes o * tanh(c) of its step to the workspace's projection buffer
/// [B, H] (accumulation dtype) and leaves hs, h_n and the exchange slot (t + 1) % 2 of h[t] to the
/// caller; the recurrent product then runs in exact FMA for float32.
cudaError_t launch_lstm_forward(const LstmForwardParams& params, void* workspace, int64_t begin, int64_t end,
                                cudaStream_t stream);
/// With w_hr, each phase reads the gradient of o * tanh(c) of its step from the projection
/// buffer; the caller forms dh (through W_hh and W_hr), dh0 and dw_hr.
cudaError_t launch_lstm_backward(const LstmBackwardParams& params, void* workspace, int64_t begin, int64_t end,
                                 cudaStream_t stream);
cudaError_t launch_gru_forward(const GruForwardParams& params, void* workspace, int64_t begin, int64_t end,
                               cudaStream_t stream);
cudaError_t launch_gru_backward(const GruBackwardParams& params, void* workspace, int64_t begin, int64_t end,
                                cudaStream_t stream);

}  // namespace fused_rnn::cuda
