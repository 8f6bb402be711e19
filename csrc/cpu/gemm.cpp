#include "gemm.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>

namespace at::native {
// result = beta * result + alpha * mat1 @ mat2 (ATen/native/mkldnn/Matmul.h, not installed).
void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result,
                   float beta, float alpha) __attribute__((weak));
}  // namespace at::native

namespace fused_rnn::cpu {
namespace {

// Below this many multiply-adds a GEMM runs through ATen: oneDNN's fixed cost per call (some
// microseconds, and a parallel region where ATen's GEMM runs on one thread) exceeds the product.
constexpr int64_t kMinOnednnMultiplyAdds = int64_t{1} << 18;

/// `t` itself when one of its strides is 1 (oneDNN reads any row or column stride), else a copy.
at::Tensor plain(const at::Tensor& t) {
  return t.stride(0) == 1 || t.stride(1) == 1 ? t : t.contiguous();
}

}  // namespace

bool onednn_gemm_available() { return at::native::mkldnn_matmul != nullptr; }

void gemm_into(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  if (a.size(0) == 0 || b.size(1) == 0) {
    return;
  }
  const int64_t multiply_adds = a.size(0) * a.size(1) * b.size(1);
  if (onednn_gemm_available() && a.scalar_type() == at::kFloat &&
      multiply_adds >= kMinOnednnMultiplyAdds) {
    at::native::mkldnn_matmul(plain(a), plain(b), out, accumulate ? 1.0f : 0.0f, 1.0f);
    return;
  }
  at::Tensor result = out;
  if (accumulate) {
    result.addmm_(a, b);
  } else {
    at::mm_out(result, a, b);
  }
}

}  // namespace fused_rnn::cpu
