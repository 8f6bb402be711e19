#include "step_gemm.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>

#include <climits>
#include <cstddef>

// MKL's packed single-precision GEMM (CBLAS interface, 32-bit integers). PyTorch's CPU library
// exports these when it is built with MKL; the weak declarations resolve to null otherwise, and
// StepGemm then runs at::mm_out.
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
}

namespace fused_rnn::cpu {
namespace {

// The CBLAS enumerators (values fixed by the CBLAS and MKL headers).
constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;
constexpr int kPacked = 151;
constexpr int kBMatrix = 162;

bool fits_int(int64_t value) { return value >= 1 && value <= INT_MAX; }

}  // namespace

bool mkl_packed_gemm_available() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr &&
         cblas_sgemm_compute != nullptr;
}

StepGemm::StepGemm(const at::Tensor& weight, bool transposed, int64_t rows, int64_t steps,
                   at::ScalarType dtype)
    : rows_(rows),
      cols_(weight.size(transposed ? 0 : 1)),
      depth_(weight.size(transposed ? 1 : 0)) {
  const at::Tensor w = weight.to(dtype).contiguous();
  // Packing costs about one unpacked call, so it pays from the second product on.
  const bool pack = dtype == at::kFloat && steps >= 2 && mkl_packed_gemm_available() &&
                    fits_int(rows_) && fits_int(cols_) && fits_int(depth_);
  if (!pack) {
    operand_ = transposed ? w.t().contiguous() : w;
    return;
  }
  const int m = static_cast<int>(rows_), n = static_cast<int>(cols_), k = static_cast<int>(depth_);
  const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, m, n, k);
  packed_ = at::empty({static_cast<int64_t>(bytes)}, w.options().dtype(at::kByte));
  cblas_sgemm_pack(kRowMajor, kBMatrix, transposed ? kTrans : kNoTrans, m, n, k, 1.0f,
                   w.const_data_ptr<float>(), transposed ? k : n,
                   static_cast<float*>(packed_.data_ptr()));
}

void StepGemm::operator()(const at::Tensor& a, at::Tensor& out, bool accumulate) const {
  TORCH_INTERNAL_ASSERT(a.is_contiguous() && out.is_contiguous() && a.size(0) == rows_ &&
                        a.size(1) == depth_ && out.size(0) == rows_ && out.size(1) == cols_);
  if (!packed()) {
    if (accumulate) {
      out.addmm_(a, operand_);
    } else {
      at::mm_out(out, a, operand_);
    }
    return;
  }
  const int m = static_cast<int>(rows_), n = static_cast<int>(cols_), k = static_cast<int>(depth_);
  cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, m, n, k, a.const_data_ptr<float>(), k,
                      static_cast<const float*>(packed_.const_data_ptr()), n,
                      accumulate ? 1.0f : 0.0f,
                      out.data_ptr<float>(), n);
}

}  // namespace fused_rnn::cpu
