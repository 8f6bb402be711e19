// Host-side helpers of the attention launch functions: the dtype and score dispatch, and kernel
// launches with their dynamic shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <type_traits>

#include "attention_params.h"
#include "attention_plan.h"

namespace fused_rnn::cuda::attention {

/// Calls launch(Scalar{}, std::integral_constant<AttentionScore, score>{}) for the runtime dtype
/// and score.
template <typename Launch>
cudaError_t dispatch_attention(DType dtype, AttentionScore score, const Launch& launch) {
  auto with_score = [&](auto scalar) {
    if (score == AttentionScore::kAdditive) {
      return launch(scalar, std::integral_constant<AttentionScore, AttentionScore::kAdditive>{});
    }
    return launch(scalar, std::integral_constant<AttentionScore, AttentionScore::kDot>{});
  };
  switch (dtype) {
    case DType::kFloat16: return with_score(__half{});
    case DType::kBFloat16: return with_score(__nv_bfloat16{});
    case DType::kFloat32: return with_score(float{});
    case DType::kFloat64: return with_score(double{});
  }
  return cudaErrorInvalidValue;
}

#if !defined(FUSED_RNN_CUDA_EMULATION)  // tests/cuda_emulation.h runs the blocks on the host
/// kernel<<<grid, block, shared_bytes, stream>>>(args...), raising the kernel's dynamic shared
/// memory limit first when it needs more than the default 48 KiB.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, int64_t shared_bytes,
                          cudaStream_t stream, const Args&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return cudaSuccess;
  if (shared_bytes > 48 * 1024) {
    const cudaError_t status = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes));
    if (status != cudaSuccess) return status;
  }
  kernel<<<grid, block, static_cast<size_t>(shared_bytes), stream>>>(args...);
  return cudaGetLastError();
}
#endif

/// A tile-loop kernel of `pass` (kernel(params, tiling)) on its grid, 32 threads a warp, with the
/// tiling's shared memory.
template <typename Kernel, typename Params>
cudaError_t launch_tiled(Kernel kernel, AttentionPass pass, const Params& params, const AttentionTiling& tiling,
                         cudaStream_t stream) {
  const AttentionGrid grid = attention_grid(pass, params.shape, tiling);
  return launch_kernel(kernel, dim3(static_cast<unsigned>(grid.x), grid.y, grid.z), dim3(32 * tiling.warps),
                       tiling.shared_bytes, stream, params, tiling);
}

}  // namespace fused_rnn::cuda::attention
