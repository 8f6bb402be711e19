// How a team of threads splits the rows of a recurrence between its members when each member runs
// its own rows through every step (run_sequence in sequence_kernels_impl.h). Plain C++, tested on
// the host (tests/test_cpu_row_split.py).
#pragma once

#include <cstdint>
#include <vector>

namespace fused_rnn::cpu {

// Weights up to this size per member stay in its L2 cache from step to step (half of a 1 MiB
// L2, which also holds the step's operands). The team splits the rows instead of the units when
// each member's step reads the whole weight from its own L2 (an LSTM's 1 MiB W_hh at H = 256,
// B = 16 ran 14 % faster split by units), or has this many rows to reuse each panel on.
constexpr int64_t kCachedWeightBytes = int64_t{1} << 19;
constexpr int64_t kRowSplitRowsPerMember = 16;

/// Whether a team of `members` splits the rows of a recurrence of `batch` rows between them
/// (each member runs its own rows through every step) rather than the units of every row, for
/// weights of `weight_bytes` in all (every stage's, packed).
inline bool splits_rows(int64_t batch, int members, int64_t weight_bytes) {
  return members > 1 && batch >= 2 * members &&
         (weight_bytes <= kCachedWeightBytes || batch >= kRowSplitRowsPerMember * members);
}

/// Member m's rows are [split[m], split[m + 1]) of the returned split [members + 1]: contiguous
/// runs of about equal work, a row's work being its length (lengths [batch], non-increasing, or
/// null: every row `steps` long). Each boundary is the row boundary nearest to its share of the
/// total work, so a member's work differs from its share by less than the longest row.
///
/// Rows sorted by length, an even split of the rows would leave the first member the most work:
/// blocks of B / 4 rows dealt out in turn gave it 12-15 % more than the mean over two members at
/// B = 16 and 64 with lengths uniform in [T / 4, T], and the call lasts as long as that share.
inline std::vector<int64_t> balanced_row_split(const int64_t* lengths, int64_t batch, int64_t steps,
                                               int members) {
  const auto length = [&](int64_t b) { return lengths == nullptr ? steps : lengths[b]; };
  int64_t total = 0;
  for (int64_t b = 0; b < batch; ++b) {
    total += length(b);
  }
  std::vector<int64_t> split(members + 1, batch);
  split[0] = 0;
  int64_t b = 0, before = 0;  // before: the work of rows [0, b)
  for (int m = 1; m < members; ++m) {
    const int64_t share = total * m / members;
    while (b < batch && before + length(b) <= share) {
      before += length(b++);
    }
    // Row b straddles the share: it goes to the member that holds more than half of it.
    if (b < batch && 2 * (share - before) > length(b)) {
      before += length(b++);
    }
    split[m] = b;
  }
  return split;
}

}  // namespace fused_rnn::cpu
