// The sequence kernels built for x86-64 CPUs with AVX2 and FMA (at::vec's 256-bit vectors, Sleef).
//
// This one file is compiled for AVX2 through a target pragma instead of a command-line flag, so
// that the rest of the extension keeps the baseline target. Only code below the pragma gets AVX2
// instructions: everything it includes that is not capability-specific is included first, and
// the vector code lives in namespaces named after the capability (at::vec::AVX2,
// fused_rnn::cpu::AVX2), so no inline function shared with other files is compiled for AVX2.
// The pragma does not define the ISA macros that sleef.h and at::vec test, so they are defined
// by hand inside the region.
#include "sequence_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include "direct_product.h"
#include "target_region_headers.h"
#include "team.h"
#include "workspace.h"

#include "avx2_target_begin.h"
#include "sequence_kernels_impl.h"
#include "target_region_end.h"

#endif
