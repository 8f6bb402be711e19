#include "cell_steps.h"

#include <ATen/Version.h>

namespace fused_rnn::cpu {

const CellStepKernels& cell_step_kernels() {
  static const CellStepKernels& chosen = []() -> const CellStepKernels& {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512") {
      return AVX512::kernels;
    }
    if (capability == "AVX2") {
      return AVX2::kernels;
    }
#endif
    return DEFAULT::kernels;
  }();
  return chosen;
}

}  // namespace fused_rnn::cpu
