// Allocation of the large buffers of one call ([T, B, ...] sequences, the input projection of
// every step): fresh memory of tens of MB, whose page faults cost as much as the work at large
// sizes unless it comes in huge pages.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fused_rnn::cpu {

/// The size of a transparent huge page on x86-64 Linux.
constexpr uintptr_t kHugePage = uintptr_t{1} << 21;

/// at::empty for a per-sequence buffer ([T, B, ...], often tens of MB). On Linux the pages of a
/// large one are requested as transparent huge pages and faulted in by all threads at once:
/// faulting them in one by one inside the step loop (4 KiB pages, or 2 MiB pages zeroed by
/// whichever thread touches them first while the others wait) otherwise costs more than the
/// pointwise math of a forward pass at large sizes.
inline at::Tensor empty_sequence(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor tensor = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
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

}  // namespace fused_rnn::cpu
