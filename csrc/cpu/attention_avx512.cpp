// The attention kernels built for x86-64 CPUs with AVX512 F/BW/VL/DQ (at::vec's 512-bit vectors).
//
// Compiled for AVX512 through a target pragma instead of a command-line flag, as attention_avx2.cpp
// is: headers that are not capability-specific are included first, the vector code lives in
// namespaces named after the capability, and the ISA macros that at::vec and sleef.h test are
// defined by hand inside the region (the pragma does not define them).
#include "attention.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#endif

#define __AVX__ 1
#define __AVX2__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define CPU_CAPABILITY_NAME "avx512"
#include "attention_impl.h"
#undef __AVX__
#undef __AVX2__
#undef __AVX512F__
#undef __AVX512BW__
#undef __AVX512VL__
#undef __AVX512DQ__
#undef __FMA__
#undef __F16C__

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif
