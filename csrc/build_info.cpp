// fused_rnn._C as a Python module. Loading it registers the ops (ops.cpp and the per-device
// TORCH_LIBRARY_IMPL blocks); pybind11 exposes facts about the build and the CPU buffer pool's
// controls.
#include <pybind11/pybind11.h>
#include <torch/version.h>

#include <string>

#include "cpu/buffer_pool.h"
#include "cpu/gemm.h"
#include "cpu/sequence_kernels.h"
#ifdef FUSED_RNN_WITH_CUDA
#include "cuda/build_info.h"
#endif

namespace {

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return "unknown";
#endif
}

pybind11::list cuda_archs() {
  pybind11::list archs;
#ifdef FUSED_RNN_WITH_CUDA
  // "800,900" -> ["8.0", "9.0"]
  const std::string list = fused_rnn::cuda::compiled_arch_list();
  size_t start = 0;
  while (start < list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    const int arch = std::stoi(list.substr(start, end - start));
    archs.append(std::to_string(arch / 100) + "." + std::to_string(arch % 100 / 10));
    start = end + 1;
  }
#endif
  return archs;
}

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                          std::to_string(TORCH_VERSION_MINOR) + "." +
                          std::to_string(TORCH_VERSION_PATCH);
  info["compiler"] = compiler();
  info["cpu_kernels"] = fused_rnn::cpu::sequence_kernels().capability;
  info["cpu_mkl_tuned"] = fused_rnn::cpu::mkl_tuned_cpu();
  info["cpu_gemm"] = fused_rnn::cpu::onednn_gemm_available() ? "onednn" : "aten";
  info["cpu_gemm_float64"] = fused_rnn::cpu::float64_panel_gemm() ? "panel" : "aten";
#ifdef FUSED_RNN_WITH_CUDA
  info["with_cuda"] = true;
  const int runtime = fused_rnn::cuda::compiled_runtime_version();
  info["cuda_version"] = std::to_string(runtime / 1000) + "." + std::to_string(runtime % 1000 / 10);
#else
  info["with_cuda"] = false;
  info["cuda_version"] = pybind11::none();
#endif
  info["cuda_archs"] = cuda_archs();
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fused_rnn's native backend: C++/CUDA recurrence ops (torch.ops.fused_rnn.native_*)";
  m.def("build_info", &build_info,
        "How this extension was built: torch_version (built against), compiler, cpu_kernels "
        "(the vector ISA of the CPU sequence kernels chosen for this machine), cpu_gemm (onednn: "
        "float32 GEMMs outside the step loops run through PyTorch's oneDNN; aten: at::mm), "
        "cpu_gemm_float64 (panel: float64 GEMMs run on the sequence kernels' panel GEMM; aten: "
        "at::mm), with_cuda, "
        "cuda_version, cuda_archs (compute capabilities compiled for).");
  m.def(
      "cpu_buffer_pool_stats",
      [] {
        pybind11::dict stats;
        stats["cached_bytes"] = fused_rnn::cpu::buffer_pool_cached_bytes();
        stats["in_use_bytes"] = fused_rnn::cpu::buffer_pool_in_use_bytes();
        stats["limit_bytes"] = fused_rnn::cpu::buffer_pool_limit();
        return stats;
      },
      "The CPU buffer pool's cached_bytes (held unused), in_use_bytes, limit_bytes.");
  m.def("set_cpu_buffer_pool_limit", &fused_rnn::cpu::set_buffer_pool_limit, pybind11::arg("bytes"),
        "The most bytes the CPU buffer pool holds unused (0: none).");
  m.def("empty_cpu_buffer_pool", &fused_rnn::cpu::empty_buffer_pool,
        "Unmaps every block the CPU buffer pool holds unused.");
}
