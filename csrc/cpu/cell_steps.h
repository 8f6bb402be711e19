// The pointwise half of one recurrence time step on the CPU (the GEMM half is StepGemm,
// step_gemm.h, in the step loops of rnn.cpp, lstm.cpp, gru.cpp).
//
// Each step kernel is one fused pass over [B, units], vectorised with at::vec::Vectorized and
// split across threads with at::parallel_for. The kernels are compiled once per CPU capability
// (cell_steps_default.cpp, cell_steps_avx2.cpp, cell_steps_avx512.cpp); cell_step_kernels()
// returns the set for this CPU.
//
// Pointers: "scalar" memory has the input dtype `dtype`, "acc" memory its accumulation dtype
// (float for bfloat16/float16, else the same). All buffers are contiguous, rows of `units` or
// `G * units` elements. Rows past their length (see StepRows) write zeros to every per-step output
// and leave the carried state untouched.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fused_rnn::cpu {

/// Which rows run at time step `step` of `steps`: row b is live while step < lengths[b]
/// (every row is live when lengths is null).
struct StepRows {
  int64_t batch;
  int64_t steps;
  int64_t step;
  const int64_t* lengths;

  bool live(int64_t b) const { return lengths == nullptr ? step < steps : step < lengths[b]; }
  /// Whether row b ran the step after this one, i.e. whether a backward pass has carried its
  /// hidden-state gradient back from step + 1.
  bool live_next(int64_t b) const {
    return lengths == nullptr ? step + 1 < steps : step + 1 < lengths[b];
  }
};

/// Vanilla RNN forward: h = act(xw[t] + hw).
struct RnnForwardStep {
  c10::ScalarType dtype;
  StepRows rows;
  int64_t hidden;
  bool relu;
  const void* xw;  // [B, H] scalar: xw[t]
  const void* hw;  // [B, H] acc: h[t-1] @ W_hh^T
  void* hs;        // [B, H] scalar, out: hs[t]
  void* h;         // [B, H] acc, in-out: the carried state, stored rounded to dtype
};

/// Vanilla RNN backward: d_pre = (dh + grad_hs[t]) * act'(hs[t]).
struct RnnBackwardStep {
  c10::ScalarType dtype;
  StepRows rows;
  int64_t hidden;
  bool relu;
  const void* grad_hs;     // [B, H] scalar: grad_hs[t]
  const void* hs;          // [B, H] scalar: hs[t]
  const void* dh_carried;  // [B, H] acc: d_pre[t+1] @ W_hh (read for rows live at t+1)
  const void* dh_final;    // [B, H] acc: grad_h_n (read for the other rows)
  void* dxw;               // [B, H] scalar, out: dxw[t]
  void* d_pre;             // [B, H] acc, out: d_pre unrounded; null when dtype is acc (dxw is)
};

/// LSTM forward: gates, cell state and h = o * tanh(c) (before the projection, if any).
struct LstmForwardStep {
  c10::ScalarType dtype;
  StepRows rows;
  int64_t hidden;
  const void* xw;     // [B, 4H] scalar: xw[t]
  const void* hw;     // [B, 4H] acc: h[t-1] @ W_hh^T
  void* gates;        // [B, 4H] scalar, out: activated i, f, g, o; null when not saved
  void* cs;           // [B, H] acc, out: cs[t]; null when not saved
  void* c;            // [B, H] acc, in-out: the carried cell state
  void* hs;           // [B, H] scalar, out: hs[t]; null with a projection
  void* h;            // [B, H] acc, in-out: the carried state; null with a projection
  void* unprojected;  // [B, H] acc, out: o * tanh(c) for the projection; null without
};

/// The projected LSTM state: hs[t] = projected, h = projected rounded, for live rows.
struct StateStep {
  c10::ScalarType dtype;
  StepRows rows;
  int64_t units;
  const void* value;  // [B, P] acc: (o * tanh(c)) @ W_hr^T
  void* hs;           // [B, P] scalar, out: hs[t]
  void* h;            // [B, P] acc, in-out: the carried state
};

/// The gradient reaching a step's output: g = dh + grad_hs[t] on live rows, zero elsewhere.
struct OutputGradStep {
  c10::ScalarType dtype;
  StepRows rows;
  int64_t units;
  const void* grad_hs;     // [B, P] scalar: grad_hs[t]
  const void* dh_carried;  // [B, P] acc (rows live at t+1)
  const void* dh_final;    // [B, P] acc: grad_h_n (other rows)
  void* grad;              // [B, P] acc, out
};

/// LSTM backward: gate gradients from the gradient of h = o * tanh(c) and the carried dc.
struct LstmBackwardStep {
  c10::ScalarType dtype;
  StepRows rows;
  int64_t hidden;
  const void* gates;       // [B, 4H] scalar: gates[t]
  const void* cs;          // [B, H] acc: cs[t]
  const void* c_prev;      // [B, H] acc: cs[t-1], or c0 at t = 0
  const void* grad_hs;     // [B, H] scalar: grad_hs[t]; null with a projection
  const void* dh_carried;  // [B, H] acc; null with a projection
  const void* dh_final;    // [B, H] acc; null with a projection
  const void* d_h;         // [B, H] acc: the gradient of o * tanh(c) (projection); else null
  void* dc;                // [B, H] acc, in-out: the carried cell-state gradient
  void* dxw;               // [B, 4H] scalar, out: dxw[t]
  void* d_pre;             // [B, 4H] acc, out: unrounded dxw[t]; null when dtype is acc
  void* unprojected;       // [B, H] acc, out: o * tanh(c[t]) for dW_hr; null without projection
};

/// GRU forward.
struct GruForwardStep {
  c10::ScalarType dtype;
  StepRows rows;
  int64_t hidden;
  const void* xw;    // [B, 3H] scalar: xw[t]
  const void* hw;    // [B, 3H] acc: h[t-1] @ W_hh^T
  const void* b_hn;  // [H] scalar, or null
  void* gates;       // [B, 4H] scalar, out: r, z, n, W_hn h + b_hn; null when not saved
  void* hs;          // [B, H] scalar, out: hs[t]
  void* h;           // [B, H] acc, in-out: the carried state
};

/// GRU backward. The hidden-state gradient of the next step is
/// dh = g * z + [d_r, d_z, d_hn] @ W_hh: this kernel writes g * z into `dh` and the gate
/// gradients into `d_hidden`; the step loop adds the GEMM.
struct GruBackwardStep {
  c10::ScalarType dtype;
  StepRows rows;
  int64_t hidden;
  const void* grad_hs;   // [B, H] scalar: grad_hs[t]
  const void* gates;     // [B, 4H] scalar: gates[t]
  const void* h_prev;    // [B, H] scalar: hs[t-1], or h0 at t = 0
  const void* dh_final;  // [B, H] acc: grad_h_n (rows not live at t+1)
  void* dh;              // [B, H] acc, in-out: carried gradient in (rows live at t+1), g * z out
  void* dxw;             // [B, 3H] scalar, out: dxw[t] = d_r, d_z, d_n
  void* d_hn;            // [B, H] scalar, out: d_hn[t]
  void* d_hidden;        // [B, 3H] acc, out: d_r, d_z, d_hn (unrounded), the GEMM's input
};

/// One implementation of every step kernel.
struct CellStepKernels {
  const char* capability;
  void (*rnn_forward)(const RnnForwardStep&);
  void (*rnn_backward)(const RnnBackwardStep&);
  void (*lstm_forward)(const LstmForwardStep&);
  void (*lstm_backward)(const LstmBackwardStep&);
  void (*projected_state)(const StateStep&);
  void (*output_grad)(const OutputGradStep&);
  void (*gru_forward)(const GruForwardStep&);
  void (*gru_backward)(const GruBackwardStep&);
};

/// The kernels for this CPU: those of ATen's CPU capability (which honours ATEN_CPU_CAPABILITY),
/// AVX512 or AVX2, where they were compiled, else the portable ones.
const CellStepKernels& cell_step_kernels();

namespace DEFAULT {
extern const CellStepKernels kernels;
}
namespace AVX2 {
extern const CellStepKernels kernels;
}
namespace AVX512 {
extern const CellStepKernels kernels;
}

}  // namespace fused_rnn::cpu
