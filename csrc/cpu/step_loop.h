// Helpers shared by the CPU step loops (rnn.cpp, lstm.cpp, gru.cpp): buffers made once per call,
// addresses of time steps, checked lengths.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <optional>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "../recurrence_checks.h"
#include "cell_steps.h"
#include "step_gemm.h"

namespace fused_rnn::cpu {

/// Address of time step t of a contiguous [T, ...] tensor.
inline void* at_step(const at::Tensor& tensor, int64_t t) {
  return static_cast<char*>(tensor.data_ptr()) + t * tensor.stride(0) * tensor.element_size();
}

/// at::empty for a per-sequence buffer ([T, B, ...], often tens of MB). On Linux the pages of a
/// large one are requested as transparent huge pages and faulted in by all threads at once:
/// faulting them in one by one inside the step loop (4 KiB pages, or 2 MiB pages zeroed by
/// whichever thread touches them first while the others wait) otherwise costs more than the
/// pointwise math of a forward pass at large sizes.
inline at::Tensor empty_sequence(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor tensor = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{1} << 21;
  const auto begin = reinterpret_cast<uintptr_t>(tensor.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + tensor.nbytes()) & ~(kHugePage - 1);
  if (last > first && madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE) == 0) {
    // One write per huge page, keeping its bytes (at::empty may have filled it with NaN).
    const auto pages = static_cast<int64_t>((last - first) / kHugePage);
    at::parallel_for(0, pages, 1, [&](int64_t page_begin, int64_t page_end) {
      for (int64_t page = page_begin; page < page_end; ++page) {
        volatile char* byte = reinterpret_cast<char*>(first + uintptr_t(page) * kHugePage);
        *byte = *byte;
      }
    });
  }
#endif
  return tensor;
}

/// `tensor` in `dtype` and contiguous; `tensor` itself when it already is (read only).
inline at::Tensor read_as(const at::Tensor& tensor, at::ScalarType dtype) {
  return tensor.to(dtype).contiguous();
}

/// A fresh contiguous copy of `tensor` in `dtype`, which the step loop overwrites.
inline at::Tensor working_copy(const at::Tensor& tensor, at::ScalarType dtype) {
  return tensor.to(tensor.options().dtype(dtype), /*non_blocking=*/false, /*copy=*/true,
                   at::MemoryFormat::Contiguous);
}

/// The lengths of one call, checked to lie in [1, T]; `data` is null without lengths.
struct Lengths {
  at::Tensor tensor;
  const int64_t* data = nullptr;

  Lengths(const char* op, const std::optional<at::Tensor>& lengths, int64_t steps) {
    if (lengths.has_value()) {
      check_lengths_values(op, *lengths, steps);
      tensor = lengths->contiguous();
      data = tensor.const_data_ptr<int64_t>();
    }
  }

  StepRows rows(const RecurrenceSizes& sizes, int64_t step) const {
    return {sizes.batch, sizes.steps, step, data};
  }
};

}  // namespace fused_rnn::cpu
