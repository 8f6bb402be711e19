#include "gemm.h"

#include "sequence_kernels.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

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

/// `t` itself when one of its strides is 1 (the panel GEMM reads any row or column stride), else a
/// copy.
at::Tensor plain(const at::Tensor& t) {
  return t.stride(0) == 1 || t.stride(1) == 1 ? t : t.contiguous();
}

/// oneDNN's linear with a fused bias (the op Inductor's CPU backend calls), or null.
const c10::OperatorHandle* onednn_linear() {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  return op.has_value() ? &*op : nullptr;
}

/// `t` as ATen's oneDNN matmul reads it in place (contiguous, or the transpose of a contiguous
/// matrix); else the copy of it that costs least. The transpose of a matrix whose rows are longer
/// than its columns (a column slice of a contiguous tensor, transposed: GRU's weight gradient over
/// the r and z blocks of [R, 3H]) is compacted row by row and transposed back: ATen would copy it
/// into a transposed layout, element by element ([512, 16320] from [16320, 768]: 17 ms against
/// 3.5 ms, 2 threads).
at::Tensor onednn_operand(const at::Tensor& t) {
  if (t.is_contiguous() || (t.stride(0) == 1 && t.stride(1) == t.size(0))) {
    return t;
  }
  return t.stride(0) == 1 ? t.t().contiguous().t() : t.contiguous();
}

// On a CPU MKL tunes for, ATen's GEMM outruns oneDNN's on products with fewer rows or a shorter
// depth than this (2 Xeon threads: a decoder step's [64, 500] @ [500, 1500] 341 against 425 us,
// [128, 500] @ [500, 1500] 648 against 734 us, [4096, 64] @ [64, 1024] 2.3 against 3.1 ms), not
// on larger ones (the projection and weight gradients of an LSTM layer at T = 256, B = 16, H =
// 256: 55.9 ms for its forward+backward through MKL against 53.8 through oneDNN).
constexpr int64_t kMklThinSide = 256;

bool runs_through_onednn(const at::Tensor& a, const at::Tensor& b) {
  if (!onednn_gemm_available() || a.scalar_type() != at::kFloat ||
      a.size(0) * a.size(1) * b.size(1) < kMinOnednnMultiplyAdds) {
    return false;
  }
  return !mkl_tuned_cpu() || std::min(a.size(0), a.size(1)) >= kMklThinSide;
}

}  // namespace

bool mkl_tuned_cpu() {
  static const bool tuned = [] {
    if (const char* setting = std::getenv("FUSED_RNN_MKL_TUNED_CPU")) {
      return std::string(setting) == "1";
    }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    return static_cast<bool>(__builtin_cpu_is("intel"));
#else
    return false;
#endif
  }();
  return tuned;
}

bool onednn_gemm_available() {
  // ATen's oneDNN matmul refuses float32 on a CPU without bfloat16 support (AVX-512 BW/VL/DQ or
  // AVX-NE-CONVERT; a Zen 3 has AVX2 alone): asked once, on a product of ones.
  static const bool available = [] {
    if (at::native::mkldnn_matmul == nullptr) {
      return false;
    }
    const at::Tensor ones = at::ones({2, 2}, at::kFloat);
    const at::Tensor product = at::empty({2, 2}, at::kFloat);
    try {
      at::native::mkldnn_matmul(ones, ones, product, 0.0f, 1.0f);
    } catch (const c10::Error&) {
      return false;
    }
    return product.eq(2.0f).all().item<bool>();
  }();
  return available;
}

bool float64_panel_gemm() {
  static const bool chosen = sequence_kernels().gemm != nullptr && !mkl_tuned_cpu();
  return chosen;
}

void gemm_into(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate) {
  if (a.size(0) == 0 || b.size(1) == 0) {
    return;
  }
  if (runs_through_onednn(a, b)) {
    at::native::mkldnn_matmul(onednn_operand(a), onednn_operand(b), out, accumulate ? 1.0f : 0.0f, 1.0f);
    return;
  }
  if (a.scalar_type() == at::kDouble && float64_panel_gemm()) {
    const at::Tensor rhs = plain(b);
    sequence_kernels().gemm({a.size(0), rhs.size(1), a.size(1), a.const_data_ptr(), a.stride(0),
                             a.stride(1), rhs.const_data_ptr(), rhs.stride(0), rhs.stride(1),
                             out.data_ptr(), out.stride(0), accumulate});
    return;
  }
  at::Tensor result = out;
  if (accumulate) {
    result.addmm_(a, b);
  } else {
    at::mm_out(result, a, b);
  }
}

at::Tensor linear_with_bias(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  if (onednn_linear() != nullptr && runs_through_onednn(x, w.t()) && x.is_contiguous() &&
      w.is_contiguous() && bias.is_contiguous()) {
    std::vector<c10::IValue> stack{x, w, bias, std::string("none"),
                                   c10::List<std::optional<at::Scalar>>(),
                                   std::optional<std::string>(std::nullopt)};
    onednn_linear()->callBoxed(&stack);
    return stack[0].toTensor();
  }
  at::Tensor y = at::empty({x.size(0), w.size(0)}, x.options());
  y.copy_(bias.expand_as(y));
  gemm_into(x, w.t(), y, /*accumulate=*/true);
  return y;
}

}  // namespace fused_rnn::cpu
