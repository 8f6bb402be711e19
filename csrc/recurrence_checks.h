// Argument validation of the recurrence ops, shared by the CPU and CUDA implementations.
//
// Each check_* function validates ranks, shapes, dtypes and devices of one op's arguments
// (raising a c10::Error that names the op, the argument, what was expected and what was given)
// and returns the sizes the kernels run with. Lengths' values are checked separately
// (check_lengths_values) because reading them costs a device synchronisation on CUDA.
#pragma once

#include <ATen/core/Tensor.h>
#include <optional>

namespace fused_rnn {

/// T time steps, B rows, H hidden units, P the size of the state fed back (proj_size or H).
struct RecurrenceSizes {
  int64_t steps;
  int64_t batch;
  int64_t hidden;
  int64_t state;
};

/// The dtype gate math and LSTM cell states run in for inputs of `dtype` (float for half types).
at::ScalarType accumulation_dtype(at::ScalarType dtype);

RecurrenceSizes check_rnn_forward(
    const char* op, const at::Tensor& xw, const at::Tensor& w_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths);

RecurrenceSizes check_rnn_backward(
    const char* op, const at::Tensor& grad_hs, const at::Tensor& grad_h_n, const at::Tensor& w_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& lengths, const at::Tensor& hs);

RecurrenceSizes check_lstm_forward(
    const char* op, const at::Tensor& xw, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& lengths);

/// The input projection of an LSTM op that takes x in place of xw = x @ w_ih^T + bias: x
/// [T, B, I], w_ih [4H, I] and bias [4H] or None of x's dtype and device, w_hh [4H, P].
void check_lstm_input(const char* op, const at::Tensor& x, const at::Tensor& w_ih,
                      const std::optional<at::Tensor>& bias, const at::Tensor& w_hh);

/// The arguments of a single-step op (csrc/cpu/single_step.cpp) with G = `gates` (1, 3 or 4)
/// gates per unit: x [1, B, I], w_ih [G*H, I], w_hh [G*H, H], b_ih and b_hh [G*H] (both or
/// neither), h0 [B, H] and c0 [B, H] where given, of x's dtype and device.
void check_single_step(const char* op, int64_t gates, const at::Tensor& x, const at::Tensor& w_ih,
                       const std::optional<at::Tensor>& b_ih, const at::Tensor& w_hh,
                       const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                       const std::optional<at::Tensor>& c0);

RecurrenceSizes check_lstm_backward(
    const char* op, const at::Tensor& grad_hs, const at::Tensor& grad_h_n,
    const at::Tensor& grad_c_n, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& lengths,
    const at::Tensor& hs, const at::Tensor& cs, const at::Tensor& gates);

RecurrenceSizes check_gru_forward(
    const char* op, const at::Tensor& xw, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_hn, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths);

RecurrenceSizes check_gru_backward(
    const char* op, const at::Tensor& grad_hs, const at::Tensor& grad_h_n, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_hn, const at::Tensor& h0,
    const std::optional<at::Tensor>& lengths, const at::Tensor& hs, const at::Tensor& gates);

/// Every length in [1, steps]; reads the values (lengths must be readable on the host).
void check_lengths_values(const char* op, const at::Tensor& lengths, int64_t steps);

}  // namespace fused_rnn
