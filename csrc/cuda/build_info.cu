#include <cuda_runtime_api.h>

#include "build_info.h"

#define FUSED_RNN_STRINGIFY_(...) #__VA_ARGS__
#define FUSED_RNN_STRINGIFY(...) FUSED_RNN_STRINGIFY_(__VA_ARGS__)

namespace fused_rnn::cuda {

const char* compiled_arch_list() {
#ifdef __CUDA_ARCH_LIST__
  return FUSED_RNN_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

int compiled_runtime_version() { return CUDART_VERSION; }

}  // namespace fused_rnn::cuda
