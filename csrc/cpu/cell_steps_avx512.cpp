// The step kernels built for x86-64 CPUs with AVX512 F/BW/VL/DQ (at::vec's 512-bit vectors, Sleef),
// compiled through a target pragma as cell_steps_avx2.cpp explains.
#include "cell_steps.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include "target_region_headers.h"

#include "avx512_target_begin.h"
#include "cell_steps_impl.h"
#include "target_region_end.h"

#endif
