// The sequence kernels built for x86-64 CPUs with AVX512 F/BW/VL/DQ (at::vec's 512-bit vectors, Sleef),
// compiled through a target pragma as sequence_kernels_avx2.cpp explains.
#include "sequence_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include "direct_product.h"
#include "target_region_headers.h"
#include "team.h"
#include "workspace.h"

#include "avx512_target_begin.h"
#include "sequence_kernels_impl.h"
#include "target_region_end.h"

#endif
