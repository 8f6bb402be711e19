#include "direct_product.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>

#include "gemm.h"

namespace fused_rnn::cpu {

void direct_product(c10::ScalarType dtype, const void* a, int64_t rows, const void* weight,
                    int64_t n, int64_t k, bool transposed, void* out, bool accumulate) {
  const auto options = at::TensorOptions().dtype(dtype);
  const at::Tensor lhs = at::from_blob(const_cast<void*>(a), {rows, k}, options);
  const at::Tensor w = transposed ? at::from_blob(const_cast<void*>(weight), {n, k}, options).t()
                                  : at::from_blob(const_cast<void*>(weight), {k, n}, options);
  gemm_into(lhs, w, at::from_blob(out, {rows, n}, options), accumulate);
}

}  // namespace fused_rnn::cpu
