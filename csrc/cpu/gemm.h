// The general GEMMs of the CPU backend (those outside the packed step products of the sequence
// kernels): the input projection of every step, the weight gradients, single-step products.
//
// float32 runs through oneDNN, which PyTorch carries (it runs torch.nn.LSTM's CPU path) and whose
// GEMM is up to twice as fast as ATen's (MKL) on CPUs MKL does not tune for. It is looked up at
// run time: at::native::mkldnn_matmul (a weak symbol) and, for a product with a bias, the
// dispatcher op mkldnn::_linear_pointwise; without them, on a CPU where ATen's oneDNN matmul
// refuses float32 (one without bfloat16 support: AVX2 alone), for small products and for the
// reduced dtypes, ATen's GEMM runs; on Intel CPUs it runs the thin products too (kMklThinSide). float64
// runs through the register-tiled GEMM of the sequence kernels (SequenceKernels::gemm) where they run 512-bit vectors on a CPU other than Intel's: MKL's dgemm
// runs 256-bit code on AMD CPUs (2048^3 on 2 Zen 5 cores: 94 GFLOP/s, the panel GEMM 190; a
// single-step GRU call at B = 64, H = 500, product and pointwise pass: 1.09 against 0.63 ms).
// On Intel CPUs MKL has AVX-512 kernels of its own, and below AVX-512 the panel GEMM has no
// wider vectors than MKL's: there ATen's GEMM runs.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace fused_rnn::cpu {

/// Whether this is a CPU MKL tunes for (Intel's): there ATen's GEMM outruns oneDNN's on thin
/// products and the panel GEMM of the step loops everywhere (2048^3 on 2 Xeon threads: 340
/// GFLOP/s; a step's product of the panels at B = 64, H = 1024 in float32: 266). The environment
/// variable FUSED_RNN_MKL_TUNED_CPU=1 or 0, read once, overrides the check of the vendor.
bool mkl_tuned_cpu();

/// Whether float32 GEMMs run through oneDNN in this process: PyTorch carries it and its matmul
/// takes float32 on this CPU.
bool onednn_gemm_available();

/// Whether float64 GEMMs run through the sequence kernels' panel GEMM (else ATen's).
bool float64_panel_gemm();

/// out [M, N] = a [M, K] @ b [K, N], or out += a @ b when `accumulate`; a and b may have any
/// strides (oneDNN reads contiguous matrices and their transposes in place and gets a row-by-row
/// copy of other views; the panel GEMM reads any view with a unit stride), out is contiguous and
/// of their dtype.
void gemm_into(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool accumulate);

/// x [M, K] @ w [N, K]^T + bias [N]: oneDNN's linear with the bias added in the GEMM when it runs
/// this product (float32, contiguous operands), else gemm_into over a copy of the bias.
at::Tensor linear_with_bias(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);

/// fused_rnn::native_linear: x [M, K], w [N, K], b [N] or [M, N] or None -> x @ w^T + b [M, N]
/// (any strides, every dtype of the recurrence ops).
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b);

}  // namespace fused_rnn::cpu
