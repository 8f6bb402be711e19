// A team of threads that runs a whole recurrence together, meeting at a barrier between the
// dependent stages of each time step, instead of one parallel region per GEMM and per pointwise
// pass (two forks and joins per step, which cost more than the work of a step at small sizes).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fused_rnn::cpu {

/// One member of a running team: its index in [0, size).
struct Team {
  int id = 0;
  int size = 1;

  /// Waits until every member has reached this barrier.
  void barrier() const {
#ifdef _OPENMP
    if (size > 1) {
#pragma omp barrier
    }
#endif
  }

  /// This member's share [begin, end) of `count` items split into contiguous runs.
  std::pair<int64_t, int64_t> share(int64_t count) const {
    return {count * id / size, count * (id + 1) / size};
  }
};

/// The most threads a team may have here: ATen's intra-op thread count, or 1 inside a parallel
/// region (a nested team would run its members one after another and deadlock at a barrier).
inline int team_threads() {
  if (at::in_parallel_region()) {
    return 1;
  }
  return std::max(1, at::get_num_threads());
}

/// Runs body(team) on each of `threads` members at once (threads <= team_threads()). The body
/// must not throw: validate everything before.
template <typename Body>
void run_team(int threads, const Body& body) {
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const Team team{omp_get_thread_num(), omp_get_num_threads()};
      body(team);
    }
    return;
  }
#endif
  body(Team{});
}

}  // namespace fused_rnn::cpu
