#include "workspace.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

namespace fused_rnn::cpu {

namespace {

void* grown_to(at::Tensor& buffer, size_t bytes) {
  if (!buffer.defined() || buffer.nbytes() < bytes) {
    buffer = at::Tensor();  // free the smaller buffer first
    buffer = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte));
  }
  return buffer.data_ptr();
}

}  // namespace

void* thread_workspace(size_t bytes) {
  thread_local at::Tensor buffer;
  return grown_to(buffer, bytes);
}

void* panel_workspace(size_t bytes) {
  thread_local at::Tensor buffer;
  return grown_to(buffer, bytes);
}

}  // namespace fused_rnn::cpu
