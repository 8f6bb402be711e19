// Every op schema of fused_rnn's native backend, in one place.
//
// The user-facing ops are the Python custom ops fused_rnn::{rnn,lstm,gru}_{forward,backward} and
// fused_rnn::{lstm,gru}_inference (fused_rnn/ops.py), which take a `backend` argument; the `native`
// backend calls the ops below.
// Their arguments, outputs and saved tensors are those of fused_rnn/reference.py:
//   xw [T, B, G*H] input projection with biases folded in, w_hh [G*H, P], h0 [B, P], c0 [B, H],
//   w_hr [P, H] (LSTM projection), b_hn [H] (GRU), lengths [B] int64 in [1, T].
// Implementations register per device: csrc/cpu/*.cpp (CPU), csrc/cuda/*_api.cpp (CUDA).
// Fake (meta) functions are registered from Python, in the module named by set_python_module.

#include <torch/library.h>

TORCH_LIBRARY(fused_rnn, m) {
  m.set_python_module("fused_rnn.native");

  // Vanilla RNN: h[t] = act(xw[t] + h[t-1] @ W_hh^T), act = relu if `relu` else tanh.
  m.def(
      "native_rnn_forward(Tensor xw, Tensor w_hh, Tensor h0, Tensor? lengths, bool relu)"
      " -> (Tensor hs, Tensor h_n)");
  m.def(
      "native_rnn_backward(Tensor grad_hs, Tensor grad_h_n, Tensor w_hh, Tensor h0, Tensor? lengths,"
      " Tensor hs, bool relu) -> (Tensor dxw, Tensor dh0)");

  // LSTM (gate order i, f, g, o), optional projection w_hr.
  m.def(
      "native_lstm_forward(Tensor xw, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0,"
      " Tensor? lengths) -> (Tensor hs, Tensor h_n, Tensor c_n, Tensor cs, Tensor gates)");
  m.def(
      "native_lstm_backward(Tensor grad_hs, Tensor grad_h_n, Tensor grad_c_n, Tensor w_hh,"
      " Tensor? w_hr, Tensor h0, Tensor c0, Tensor? lengths, Tensor hs, Tensor cs, Tensor gates)"
      " -> (Tensor dxw, Tensor dh0, Tensor dc0, Tensor dw_hr)");
  // The forward pass without the tensors saved for backward (cs, gates).
  m.def(
      "native_lstm_inference(Tensor xw, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0,"
      " Tensor? lengths) -> (Tensor hs, Tensor h_n, Tensor c_n)");
  // native_lstm_inference of xw = x @ w_ih^T + bias (CPU): x [T, B, I], w_ih [4H, I], bias [4H].
  m.def(
      "native_lstm_input_inference(Tensor x, Tensor w_ih, Tensor? bias, Tensor w_hh, Tensor? w_hr,"
      " Tensor h0, Tensor c0, Tensor? lengths) -> (Tensor hs, Tensor h_n, Tensor c_n)");

  // GRU (gate order r, z, n), b_hn inside r * (W_hn h + b_hn).
  m.def(
      "native_gru_forward(Tensor xw, Tensor w_hh, Tensor? b_hn, Tensor h0, Tensor? lengths)"
      " -> (Tensor hs, Tensor h_n, Tensor gates)");
  m.def(
      "native_gru_backward(Tensor grad_hs, Tensor grad_h_n, Tensor w_hh, Tensor? b_hn, Tensor h0,"
      " Tensor? lengths, Tensor hs, Tensor gates) -> (Tensor dxw, Tensor d_hn, Tensor dh0)");
  // The forward pass without the tensors saved for backward (gates).
  m.def(
      "native_gru_inference(Tensor xw, Tensor w_hh, Tensor? b_hn, Tensor h0, Tensor? lengths)"
      " -> (Tensor hs, Tensor h_n)");

  // Packed input (a PackedSequence's rows): every per-step tensor is [N, ...] in place of
  // [T, B, ...], step t's batch_sizes[t] rows (the rows of the batch still running, longest first)
  // from row sum(batch_sizes[:t]) on; batch_sizes [T] int64 on the CPU, non-increasing, >= 1,
  // batch_sizes[0] = B, summing to N. Arguments and outputs otherwise those of the ops above,
  // with batch_sizes in place of lengths.
  m.def(
      "native_rnn_packed_forward(Tensor xw, Tensor w_hh, Tensor h0, Tensor batch_sizes, bool relu)"
      " -> (Tensor hs, Tensor h_n)");
  m.def(
      "native_rnn_packed_backward(Tensor grad_hs, Tensor grad_h_n, Tensor w_hh, Tensor h0,"
      " Tensor batch_sizes, Tensor hs, bool relu) -> (Tensor dxw, Tensor dh0)");
  m.def(
      "native_lstm_packed_forward(Tensor xw, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0,"
      " Tensor batch_sizes) -> (Tensor hs, Tensor h_n, Tensor c_n, Tensor cs, Tensor gates)");
  m.def(
      "native_lstm_packed_backward(Tensor grad_hs, Tensor grad_h_n, Tensor grad_c_n, Tensor w_hh,"
      " Tensor? w_hr, Tensor h0, Tensor c0, Tensor batch_sizes, Tensor hs, Tensor cs, Tensor gates)"
      " -> (Tensor dxw, Tensor dh0, Tensor dc0, Tensor dw_hr)");
  m.def(
      "native_lstm_packed_inference(Tensor xw, Tensor w_hh, Tensor? w_hr, Tensor h0, Tensor c0,"
      " Tensor batch_sizes) -> (Tensor hs, Tensor h_n, Tensor c_n)");
  m.def(
      "native_lstm_packed_input_inference(Tensor x, Tensor w_ih, Tensor? bias, Tensor w_hh,"
      " Tensor? w_hr, Tensor h0, Tensor c0, Tensor batch_sizes) -> (Tensor hs, Tensor h_n, Tensor c_n)");
  m.def(
      "native_gru_packed_forward(Tensor xw, Tensor w_hh, Tensor? b_hn, Tensor h0,"
      " Tensor batch_sizes) -> (Tensor hs, Tensor h_n, Tensor gates)");
  m.def(
      "native_gru_packed_backward(Tensor grad_hs, Tensor grad_h_n, Tensor w_hh, Tensor? b_hn,"
      " Tensor h0, Tensor batch_sizes, Tensor hs, Tensor gates)"
      " -> (Tensor dxw, Tensor d_hn, Tensor dh0)");
  m.def(
      "native_gru_packed_inference(Tensor xw, Tensor w_hh, Tensor? b_hn, Tensor h0,"
      " Tensor batch_sizes) -> (Tensor hs, Tensor h_n)");

  // One time step of a layer (csrc/cpu/single_step.cpp; fused_rnn/native_step.py): x [1, B, I],
  // w_ih [G*H, I], b_ih and b_hh [G*H] (both or neither), w_hh [G*H, H], h0 and c0 [B, H]; forward
  // projects x with the biases folded in and runs one step of the op above (with `save`, the
  // forward op, else the inference op); backward returns the gradients of (x, w_ih, b_ih, w_hh,
  // b_hh) where output_mask asks for them (else undefined), and of the initial states.
  m.def(
      "native_rnn_step_forward(Tensor x, Tensor w_ih, Tensor? b_ih, Tensor w_hh, Tensor? b_hh,"
      " Tensor h0, bool relu) -> (Tensor hs, Tensor h_n)");
  m.def(
      "native_rnn_step_backward(Tensor? grad_hs, Tensor? grad_h_n, Tensor x, Tensor w_ih,"
      " Tensor w_hh, bool bias, Tensor h0, Tensor hs, bool relu, bool[5] output_mask)"
      " -> (Tensor dx, Tensor dw_ih, Tensor db_ih, Tensor dw_hh, Tensor db_hh, Tensor dh0)");
  m.def(
      "native_lstm_step_forward(Tensor x, Tensor w_ih, Tensor? b_ih, Tensor w_hh, Tensor? b_hh,"
      " Tensor h0, Tensor c0, bool save)"
      " -> (Tensor hs, Tensor h_n, Tensor c_n, Tensor cs, Tensor gates)");
  m.def(
      "native_lstm_step_backward(Tensor? grad_hs, Tensor? grad_h_n, Tensor? grad_c_n, Tensor x,"
      " Tensor w_ih, Tensor w_hh, bool bias, Tensor h0, Tensor c0, Tensor hs, Tensor cs,"
      " Tensor gates, bool[5] output_mask) -> (Tensor dx, Tensor dw_ih, Tensor db_ih,"
      " Tensor dw_hh, Tensor db_hh, Tensor dh0, Tensor dc0)");
  m.def(
      "native_gru_step_forward(Tensor x, Tensor w_ih, Tensor? b_ih, Tensor w_hh, Tensor? b_hh,"
      " Tensor h0, bool save) -> (Tensor hs, Tensor h_n, Tensor gates)");
  m.def(
      "native_gru_step_backward(Tensor? grad_hs, Tensor? grad_h_n, Tensor x, Tensor w_ih,"
      " Tensor w_hh, Tensor? b_hh, Tensor h0, Tensor hs, Tensor gates, bool[5] output_mask)"
      " -> (Tensor dx, Tensor dw_ih, Tensor db_ih, Tensor dw_hh, Tensor db_hh, Tensor dh0)");

  // The GEMMs outside the step loops: y = x @ w^T + b, x [M, K], w [N, K], b [N] or [M, N].
  m.def("native_linear(Tensor x, Tensor w, Tensor? b) -> Tensor");

  // Attention scoring (fused_rnn/reference.py, section "attention"): scores -> mask by key_lengths
  // [B] (int64 in [1, Tk]) -> softmax -> weighted sum of values. additive: score = v . tanh(pq_i +
  // pk_j), pq [B, Tq, A], pk [B, Tk, A], v [A]; dot: score = scale * query_i . keys_j. lse [B, Tq] is
  // in the accumulation dtype; weights [B, Tq, Tk] when need_weights, else an empty [0] tensor.
  m.def(
      "native_additive_attention_forward(Tensor pq, Tensor pk, Tensor v, Tensor values,"
      " Tensor? key_lengths, bool need_weights) -> (Tensor context, Tensor lse, Tensor weights)");
  m.def(
      "native_additive_attention_backward(Tensor grad_context, Tensor? grad_weights, Tensor pq,"
      " Tensor pk, Tensor v, Tensor values, Tensor? key_lengths, Tensor context, Tensor lse,"
      " Tensor? weights) -> (Tensor d_pq, Tensor d_pk, Tensor d_v, Tensor d_values)");
  m.def(
      "native_dot_attention_forward(Tensor query, Tensor keys, Tensor values, Tensor? key_lengths,"
      " float scale, bool need_weights) -> (Tensor context, Tensor lse, Tensor weights)");
  m.def(
      "native_dot_attention_backward(Tensor grad_context, Tensor? grad_weights, Tensor query,"
      " Tensor keys, Tensor values, Tensor? key_lengths, Tensor context, Tensor lse, Tensor? weights,"
      " float scale) -> (Tensor d_query, Tensor d_keys, Tensor d_values)");
}
