// Prints balanced_row_split (../row_split.h) for each input line, for tests/test_cpu_row_split.py:
//
//   <members> <steps> <batch> [<length of row 0> ... <length of row batch - 1>]
//
// (no lengths: every row `steps` long) -> the split, members + 1 numbers on one line.
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "../row_split.h"

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    int members = 0;
    int64_t steps = 0, batch = 0;
    if (!(in >> members >> steps >> batch)) {
      continue;
    }
    std::vector<int64_t> lengths;
    for (int64_t length = 0; in >> length;) {
      lengths.push_back(length);
    }
    if (!lengths.empty() && static_cast<int64_t>(lengths.size()) != batch) {
      std::fprintf(stderr, "%zu lengths for a batch of %lld\n", lengths.size(), static_cast<long long>(batch));
      return 1;
    }
    const auto split = fused_rnn::cpu::balanced_row_split(lengths.empty() ? nullptr : lengths.data(), batch,
                                                          steps, members);
    for (size_t m = 0; m < split.size(); ++m) {
      std::printf(m ? " %lld" : "%lld", static_cast<long long>(split[m]));
    }
    std::printf("\n");
  }
  return 0;
}
