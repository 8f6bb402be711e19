// What the CUDA half of fused_rnn._C was compiled for (defined in build_info.cu, plain C++).
#pragma once

namespace fused_rnn::cuda {

/// The architectures nvcc compiled for, e.g. "800,900" (nvcc's __CUDA_ARCH_LIST__).
const char* compiled_arch_list();

/// The CUDA runtime version compiled against, e.g. 13000 for 13.0.
int compiled_runtime_version();

}  // namespace fused_rnn::cuda
