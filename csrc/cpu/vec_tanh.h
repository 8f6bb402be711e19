// tanh on at::vec vectors, shared by the recurrence and attention kernels. Included inside the
// namespace of one CPU capability (fused_rnn::cpu::CPU_CAPABILITY), once per translation unit.
#pragma once

/// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|): one exp and one division, several
/// times cheaper than Sleef's tanh. Its error is absolute, about one unit in the last place of 1
/// (relative near 0, where tanh(x) ~ x), which norm-relative parity does not notice.
template <typename Vec>
Vec tanh_from_exp(const Vec& x) {
  const Vec one(1);
  const Vec e = (x.abs() * Vec(-2)).exp();
  const Vec magnitude = (one - e) / (one + e);
  return Vec::blendv(magnitude, magnitude.neg(), x < Vec(0));
}
