// The attention kernels built for x86-64 CPUs with AVX2 and FMA (at::vec's 256-bit vectors).
//
// Compiled for AVX2 through a target pragma instead of a command-line flag, as sequence_kernels_avx2.cpp
// is: headers that are not capability-specific are included first, the vector code lives in
// namespaces named after the capability, and the ISA macros that at::vec and sleef.h test are
// defined by hand inside the region (the pragma does not define them).
#include "attention.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include "target_region_headers.h"

#include "avx2_target_begin.h"
#include "attention_impl.h"
#include "target_region_end.h"

#endif
