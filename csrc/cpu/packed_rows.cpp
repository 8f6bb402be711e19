#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <sstream>
#include <string>

#include "step_loop.h"

namespace fused_rnn::cpu {
namespace {

std::string shape_of(const at::Tensor& tensor) {
  std::ostringstream out;
  out << tensor.sizes();
  return out.str();
}

}  // namespace

PackedRows::PackedRows(const char* op, const at::Tensor& batch_sizes, const char* name,
                       const at::Tensor& packed)
    : op_(op) {
  TORCH_CHECK(batch_sizes.scalar_type() == at::kLong, op,
              ": batch_sizes must have dtype torch.int64, got ", batch_sizes.scalar_type());
  TORCH_CHECK(batch_sizes.device().is_cpu(), op, ": batch_sizes must be on the CPU, got ",
              batch_sizes.device());
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.size(0) >= 1, op,
              ": batch_sizes must be 1-D [T] with T >= 1, got shape ", shape_of(batch_sizes));
  TORCH_CHECK(packed.dim() == 2, op, ": ", name, " must be 2-D [N, ...] (packed rows), got shape ",
              shape_of(packed));
  const at::Tensor sizes = batch_sizes.contiguous();
  const int64_t* values = sizes.const_data_ptr<int64_t>();
  steps_ = sizes.size(0);
  batch_ = values[0];
  offsets_ = at::empty({steps_ + 1}, sizes.options());
  int64_t* offsets = offsets_.data_ptr<int64_t>();
  offsets[0] = 0;
  for (int64_t t = 0; t < steps_; ++t) {
    TORCH_CHECK(values[t] >= 1, op, ": batch_sizes must be >= 1, got batch_sizes[", t, "] = ",
                values[t]);
    TORCH_CHECK(t == 0 || values[t] <= values[t - 1], op,
                ": batch_sizes must be non-increasing, got batch_sizes[", t, "] = ", values[t],
                " > batch_sizes[", t - 1, "] = ", (t == 0 ? 0 : values[t - 1]));
    offsets[t + 1] = offsets[t] + values[t];
  }
  rows_ = offsets[steps_];
  TORCH_CHECK(packed.size(0) == rows_, op, ": ", name, " must have N = sum(batch_sizes) = ", rows_,
              " rows, got shape ", shape_of(packed));
  // lengths[b] counts the steps t with batch_sizes[t] > b.
  lengths_ = at::zeros({batch_}, sizes.options());
  int64_t* lengths = lengths_.data_ptr<int64_t>();
  for (int64_t t = 0; t < steps_; ++t) {
    lengths[values[t] - 1] += 1;
  }
  for (int64_t b = batch_ - 2; b >= 0; --b) {
    lengths[b] += lengths[b + 1];
  }
}

at::Tensor PackedRows::checked_view(const char* name, const at::Tensor& packed) const {
  TORCH_CHECK(packed.dim() == 2 && packed.size(0) == rows_, op_, ": ", name,
              " must have shape [N, ...] with N = sum(batch_sizes) = ", rows_, ", got shape ",
              shape_of(packed));
  return packed.as_strided({steps_, batch_, packed.size(1)}, {0, 0, packed.stride(1)});
}

}  // namespace fused_rnn::cpu
