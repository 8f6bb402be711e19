// Launch functions of the CUDA recurrence kernels, one per op of csrc/ops.cpp, in plain CUDA C++.
//
// Each runs the whole op on `stream` (asynchronously; the caller synchronises as it needs) and
// returns the status of its launches. The arguments are validated by the caller
// (recurrence_api.cpp): shapes, dtypes, contiguity, one device, lengths in [1, T].
// An op is registered for CUDA in recurrence_api.cpp together with the .cu file that defines its
// launch function.
#pragma once

#include <cuda_runtime_api.h>

#include "recurrence_params.h"

namespace fused_rnn::cuda {

cudaError_t launch_rnn_forward(const RnnForwardParams& params, cudaStream_t stream);
cudaError_t launch_rnn_backward(const RnnBackwardParams& params, cudaStream_t stream);
cudaError_t launch_lstm_forward(const LstmForwardParams& params, cudaStream_t stream);
cudaError_t launch_lstm_backward(const LstmBackwardParams& params, cudaStream_t stream);
cudaError_t launch_gru_forward(const GruForwardParams& params, cudaStream_t stream);
cudaError_t launch_gru_backward(const GruBackwardParams& params, cudaStream_t stream);

}  // namespace fused_rnn::cuda
