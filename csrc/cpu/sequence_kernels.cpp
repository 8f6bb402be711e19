#include "sequence_kernels.h"

#include <ATen/Version.h>

#include <algorithm>
#include <functional>
#include <string>

namespace fused_rnn::cpu {

int64_t SequenceRows::live(int64_t step) const {
  if (lengths == nullptr) {
    return step < steps ? batch : 0;
  }
  // The first row whose length is at most `step` (lengths are non-increasing).
  return std::lower_bound(lengths, lengths + batch, step, std::greater<>()) - lengths;
}

const SequenceKernels& sequence_kernels() {
  static const SequenceKernels& chosen = []() -> const SequenceKernels& {
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
