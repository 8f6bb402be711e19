// The gate activations of the recurrence kernels (sigmoid, tanh) on at::vec vectors. Included
// inside the namespace of one CPU capability (fused_rnn::cpu::CPU_CAPABILITY), after vec_tanh.h.
//
// float lanes (float32 and the half types, which compute in float) use a rational approximation
// of tanh and a reciprocal refined by one Newton step: no exp and no division, a fraction of the
// cost of exp-based forms, which the pointwise pass of a step is made of (at H = 128 it cost half
// as much as the step's GEMM). double lanes keep the exp-based forms, accurate to float64.
#pragma once

/// 1 / x for float lanes: the hardware estimate refined by one Newton step (relative error about
/// 2^-22); a division elsewhere.
template <typename Vec>
Vec reciprocal(const Vec& x) {
  using T = typename Vec::value_type;
  if constexpr (std::is_same_v<T, float>) {
#if defined(CPU_CAPABILITY_AVX512)
    const Vec estimate(_mm512_rcp14_ps(x));
    return estimate * (Vec(2) - x * estimate);
#elif defined(CPU_CAPABILITY_AVX2)
    const Vec estimate(_mm256_rcp_ps(x));
    return estimate * (Vec(2) - x * estimate);
#endif
  }
  return Vec(T(1)) / x;
}

/// tanh(x) for float lanes: x P(x^2) / Q(x^2) on |x| <= 9, past which tanh is +-1 in float; the
/// coefficients are a fit for relative error (at most about 6 units in the last place, in float).
template <typename Vec>
Vec tanh_rational(const Vec& x_arg) {
  const Vec x = at::vec::clamp(x_arg, Vec(-9.0f), Vec(9.0f));
  const Vec s = x * x;
  Vec p = at::vec::fmadd(s, Vec(1.3354477523819241e-08f), Vec(2.0608960767276585e-05f));
  p = at::vec::fmadd(s, p, Vec(0.0034955814480781555f));
  p = at::vec::fmadd(s, p, Vec(0.13381020724773407f));
  p = at::vec::fmadd(s, p, Vec(1.0f));
  Vec q = at::vec::fmadd(s, Vec(7.776486086186196e-07f), Vec(0.0003285623388364911f));
  q = at::vec::fmadd(s, q, Vec(0.025876957923173904f));
  q = at::vec::fmadd(s, q, Vec(0.46714335680007935f));
  q = at::vec::fmadd(s, q, Vec(1.0f));
  return at::vec::clamp(x * p * reciprocal(q), Vec(-1.0f), Vec(1.0f));
}

/// The tanh of the gates: rational for float lanes, exp-based for double lanes.
template <typename Vec>
Vec gate_tanh(const Vec& x) {
  if constexpr (std::is_same_v<typename Vec::value_type, float>) {
    return tanh_rational(x);
  } else {
    return tanh_from_exp(x);
  }
}

/// The logistic sigmoid of the gates: 0.5 + 0.5 tanh(x / 2) for float lanes (absolute error
/// about 2e-7), 1 / (1 + exp(-x)) for double lanes.
template <typename Vec>
Vec gate_sigmoid(const Vec& x) {
  if constexpr (std::is_same_v<typename Vec::value_type, float>) {
    const Vec half(0.5f);
    return at::vec::fmadd(half, tanh_rational(x * half), half);
  } else {
    const Vec one(1);
    return one / (one + x.neg().exp());
  }
}
