// The CPU recurrence of one layer over a whole sequence, forward and backward, for RNN, LSTM (with
// and without projection) and GRU: the step loops of rnn.cpp, lstm.cpp and gru.cpp.
//
// One team of threads (team.h) runs every step of a call. Each member owns a slice of the hidden
// units; at each step it multiplies the state by its slice of the recurrent weight, packed once per
// call into panels for a register-tiled GEMM (panel_gemm_impl.h), then runs the cell's pointwise
// math on the units of that slice, and the team meets at a barrier before the next step reads the
// new state. Calls of a single step do not pack the whole weight: their one product is gemm.h's
// over the weight where it is (direct_product.h).
//
// Rows are sorted by non-increasing length (the op wrappers permute other orders): the rows live
// at step t are a prefix, and the products run over that prefix only. Rows past their length keep
// their carried state. Per-step buffers come in two layouts (SequenceRows::offsets): padded
// [T, B, ...], where rows past their length write zeros to every per-step output, and packed
// [N, ...] (N = the sum of the lengths, a PackedSequence's data), where step t holds its live rows
// only, from row offset(t) on.
//
// The kernels are compiled once per CPU capability (sequence_kernels_default.cpp, _avx2.cpp,
// _avx512.cpp); sequence_kernels() returns the set for this CPU.
//
// Pointers: "scalar" memory has the input dtype `dtype`, "acc" memory its accumulation dtype
// (float for bfloat16/float16, else the same). Every buffer is contiguous; [T, B, ...] tensors are
// time-major, or packed [N, ...] (see above).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fused_rnn::cpu {

/// Which rows run at time step `step` of `steps`: row b is live while step < lengths[b]
/// (every row is live when lengths is null). The step's per-step buffers hold rows [0, stored):
/// all `batch` rows when padded, the live ones when packed.
struct StepRows {
  int64_t batch;
  int64_t steps;
  int64_t step;
  const int64_t* lengths;
  int64_t stored;

  bool live(int64_t b) const { return lengths == nullptr ? step < steps : step < lengths[b]; }
  /// Whether row b ran the step after this one, i.e. whether a backward pass has carried its
  /// hidden-state gradient back from step + 1.
  bool live_next(int64_t b) const {
    return lengths == nullptr ? step + 1 < steps : step + 1 < lengths[b];
  }
};

/// The rows of one call: `batch` rows of lengths in [1, steps] sorted non-increasing, or all of
/// length `steps` when lengths is null; and the layout of the per-step buffers: padded when
/// offsets is null (step t from row t * batch on), else packed, step t from row offsets[t] on
/// (offsets [steps + 1]: offsets[t] = the sum of live(0 .. t-1), offsets[steps] = N).
struct SequenceRows {
  int64_t batch;
  int64_t steps;
  const int64_t* lengths;
  const int64_t* offsets;

  StepRows at(int64_t step) const {
    return {batch, steps, step, lengths, offsets == nullptr ? batch : live(step)};
  }
  /// The number of rows live at `step` (0 for step >= steps): they are rows [0, live(step)).
  int64_t live(int64_t step) const;
  /// The first row of step `step` (0 <= step <= steps) in a per-step buffer.
  int64_t offset(int64_t step) const { return offsets == nullptr ? step * batch : offsets[step]; }
};

/// Vanilla RNN forward: h[t] = act(xw[t] + h[t-1] @ W_hh^T), act = relu or tanh.
struct RnnForwardSequence {
  c10::ScalarType dtype;
  SequenceRows rows;
  int64_t hidden;
  bool relu;
  const void* xw;    // [T, B, H] scalar
  const void* w_hh;  // [H, H] acc
  const void* h0;    // [B, H] acc
  void* hs;          // [T, B, H] scalar, out
};

/// Vanilla RNN backward: d_pre[t] = (grad_hs[t] + d_pre[t+1] @ W_hh) * act'(hs[t]).
struct RnnBackwardSequence {
  c10::ScalarType dtype;
  SequenceRows rows;
  int64_t hidden;
  bool relu;
  const void* grad_hs;   // [T, B, H] scalar
  const void* hs;        // [T, B, H] scalar
  const void* w_hh;      // [H, H] acc
  const void* dh_final;  // [B, H] acc: grad_h_n, the gradient reaching each row's last step
  void* dxw;             // [T, B, H] scalar, out: d_pre
  void* dh0;             // [B, H] acc, out: d_pre[0] @ W_hh
};

/// LSTM forward (gate order i, f, g, o), with the projection h = (o * tanh(c)) @ W_hr^T when
/// w_hr is given. With x, the input projection x[t] @ W_ih^T + bias runs inside each step, in
/// place of xw (float and double only, whose scalar type is the accumulation type).
struct LstmForwardSequence {
  c10::ScalarType dtype;
  SequenceRows rows;
  int64_t hidden;    // H
  int64_t state;     // P: H, or the projection size
  const void* xw;    // [T, B, 4H] scalar, or null with x
  const void* w_hh;  // [4H, P] acc
  const void* w_hr;  // [P, H] acc, or null
  const void* h0;    // [B, P] acc
  void* c;           // [B, H] acc, in-out: c0 in, each row's final cell state out
  void* hs;          // [T, B, P] scalar, out
  void* gates;       // [T, B, 4H] scalar, out: activated i, f, g, o; null when not saved
  void* cs;          // [T, B, H] acc, out: cell states; null when not saved
  const void* x = nullptr;     // [T, B, I] scalar, or null: the input of the projection
  const void* w_ih = nullptr;  // [4H, I] scalar
  const void* bias = nullptr;  // [4H] scalar
  int64_t input = 0;           // I
};

/// LSTM backward: the gate gradients dxw and the initial-state gradients.
struct LstmBackwardSequence {
  c10::ScalarType dtype;
  SequenceRows rows;
  int64_t hidden;
  int64_t state;
  const void* grad_hs;   // [T, B, P] scalar
  const void* gates;     // [T, B, 4H] scalar
  const void* cs;        // [T, B, H] acc
  const void* c0;        // [B, H] acc
  const void* w_hh;      // [4H, P] acc
  const void* w_hr;      // [P, H] acc, or null
  const void* dh_final;  // [B, P] acc: grad_h_n
  void* dc;              // [B, H] acc, in-out: grad_c_n in, dc0 out
  void* dxw;             // [T, B, 4H] scalar, out
  void* dh0;             // [B, P] acc, out
  void* grad_out;        // [T, B, P] acc, out: the gradient of each step's output (projection)
  void* unprojected;     // [T, B, H] acc, out: o * tanh(c[t]) (projection), for dW_hr
};

/// GRU forward (gate order r, z, n), b_hn inside r * (W_hn h + b_hn).
struct GruForwardSequence {
  c10::ScalarType dtype;
  SequenceRows rows;
  int64_t hidden;
  const void* xw;    // [T, B, 3H] scalar
  const void* w_hh;  // [3H, H] acc
  const void* b_hn;  // [H] scalar, or null
  const void* h0;    // [B, H] acc
  void* hs;          // [T, B, H] scalar, out
  void* gates;       // [T, B, 4H] scalar, out: r, z, n, W_hn h + b_hn; null when not saved
};

/// GRU backward. The hidden-state gradient carried to step t-1 is
/// g * z + [d_r, d_z, d_hn] @ W_hh, with g the gradient reaching h[t].
struct GruBackwardSequence {
  c10::ScalarType dtype;
  SequenceRows rows;
  int64_t hidden;
  const void* grad_hs;   // [T, B, H] scalar
  const void* gates;     // [T, B, 4H] scalar
  const void* hs;        // [T, B, H] scalar
  const void* h0;        // [B, H] scalar
  const void* w_hh;      // [3H, H] acc
  const void* dh_final;  // [B, H] acc: grad_h_n
  void* dxw;             // [T, B, 3H] scalar, out: d_r, d_z, d_n
  void* d_hn;            // [T, B, H] scalar, out
  void* dh0;             // [B, H] acc, out
};

/// out [m, n] (+)= a [m, k] @ b [k, n] in float64, every operand read in place (strides in
/// elements): a(r, i) at a[r * a_row_stride + i * a_depth_stride], b(i, j) at
/// b[i * b_depth_stride + j * b_column_stride] with one of those two strides 1, out(r, j) at
/// out[r * out_row_stride + j]. The product of an empty depth (k = 0) writes zeros.
struct GemmOperands {
  int64_t m, n, k;
  const void* a;
  int64_t a_row_stride, a_depth_stride;
  const void* b;
  int64_t b_depth_stride, b_column_stride;
  void* out;
  int64_t out_row_stride;
  bool accumulate;
};

/// One implementation of every sequence kernel, and of the register-tiled GEMM they share in
/// float64 (gemm: a team packs each panel of b just before multiplying by it; gemm.h runs float64
/// through it; null in the builds below AVX512).
struct SequenceKernels {
  const char* capability;
  void (*rnn_forward)(const RnnForwardSequence&);
  void (*rnn_backward)(const RnnBackwardSequence&);
  void (*lstm_forward)(const LstmForwardSequence&);
  void (*lstm_backward)(const LstmBackwardSequence&);
  void (*gru_forward)(const GruForwardSequence&);
  void (*gru_backward)(const GruBackwardSequence&);
  void (*gemm)(const GemmOperands&);
};

/// The kernels for this CPU: those of ATen's CPU capability (which honours ATEN_CPU_CAPABILITY),
/// AVX512 or AVX2, where they were compiled, else the portable ones.
const SequenceKernels& sequence_kernels();

namespace DEFAULT {
extern const SequenceKernels kernels;
}
namespace AVX2 {
extern const SequenceKernels kernels;
}
namespace AVX512 {
extern const SequenceKernels kernels;
}

}  // namespace fused_rnn::cpu
