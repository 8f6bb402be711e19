// Closes the region opened by avx2_target_begin.h or avx512_target_begin.h (undefining a macro the
// region did not define is harmless).
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
