// Working memory of the sequence kernels kept from call to call: the packed weight panels of a
// call are as large as the weights (16 MB for an LSTM of H = 1024), and faulting in that much fresh
// memory at every call costs a few milliseconds, as much as a dozen steps at small batch sizes.
#pragma once

#include <cstddef>

namespace fused_rnn::cpu {

/// A buffer of at least `bytes` bytes, 64-byte aligned, owned by the calling thread and reused by
/// its next call (grown when a call needs more; freed when the thread ends).
void* thread_workspace(size_t bytes);

/// A second such buffer, for the panels the streamed GEMM's team packs (SequenceKernels::gemm;
/// the calling thread takes one for every member), which may run while the caller holds
/// thread_workspace.
void* panel_workspace(size_t bytes);

}  // namespace fused_rnn::cpu
