// Opens the AVX2 region of a kernel file compiled for AVX2 through a target pragma (see
// sequence_kernels_avx2.cpp): every function defined until target_region_end.h gets AVX2/FMA/F16C
// instructions, and the ISA macros that at::vec and sleef.h test, which the pragma does not define,
// are defined by hand. Include it after every header that is not capability-specific.
// No include guard: each such file opens and closes the region once.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY_NAME "avx2"
