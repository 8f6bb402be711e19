// The per-unit math of the three cells, forward and backward, as __host__ __device__ functions of
// the accumulation type T (float for float32 and half types, double for float64): the kernels call
// them per (unit, batch row), the host tests call them on the CPU against fused_rnn/reference.py.
//
// Forward: x = the unit's G slices of xw[t], hw = the G rows of W_hh h[t-1] (GRU: without b_hn).
// Backward: g_h = the gradient reaching h[t] (dh carried + grad_hs[t]; LSTM with projection:
// the gradient of o * tanh(c)), with the tensors the forward saved. Dead rows (t >= length) never
// reach these functions: the passes (recurrence_passes.h) keep their state and write zeros.
#pragma once

#include <cmath>

#include "recurrence_types.h"

namespace fused_rnn::cuda {

FUSED_RNN_HD float exp_of(float x) { return expf(x); }
FUSED_RNN_HD double exp_of(double x) { return exp(x); }
FUSED_RNN_HD float tanh_of(float x) { return tanhf(x); }
FUSED_RNN_HD double tanh_of(double x) { return tanh(x); }

template <typename T>
FUSED_RNN_HD T sigmoid(T x) {
  return T(1) / (T(1) + exp_of(-x));
}

/// What one forward step of a cell produces for one unit and row.
template <typename T>
struct ForwardValues {
  T h;         // the new hidden state (LSTM with projection: o * tanh(c), before W_hr)
  T c;         // LSTM: the new cell state
  T saved[4];  // the gates saved for backward: LSTM i, f, g, o; GRU r, z, n, W_hn h + b_hn
};

/// What the forward saved for one unit and row, as the backward reads it.
template <typename T>
struct SavedValues {
  T gates[4];
  T state;       // RNN: h[t]; LSTM: c[t]
  T state_prev;  // LSTM: c[t-1]; GRU: h[t-1]
};

/// What one backward step produces for one unit and row.
template <typename T>
struct BackwardValues {
  T dx[4];       // gradients of the G pre-activations: the unit's slices of dxw[t]
  T dhidden[4];  // gradients of the G rows of W_hh h[t-1] (GRU n: of W_hn h + b_hn, = d_hn)
  T local_dh;    // the part of dh[t-1] that does not go through W_hh (GRU: g_h * z)
  T dc;          // LSTM: the gradient carried to c[t-1]
};

struct RnnCell {
  static constexpr CellKind kKind = CellKind::kRnn;
  static constexpr int kGates = 1;
  bool relu;

  template <typename T>
  FUSED_RNN_HD ForwardValues<T> forward(const T (&x)[kGates], const T (&hw)[kGates], T /*h_prev*/,
                                        T /*c_prev*/, T /*b_hn*/) const {
    const T pre = x[0] + hw[0];
    ForwardValues<T> out{};
    out.h = relu ? (pre > T(0) ? pre : T(0)) : tanh_of(pre);
    return out;
  }

  template <typename T>
  FUSED_RNN_HD BackwardValues<T> backward(T g_h, T /*dc*/, const SavedValues<T>& saved) const {
    const T h = saved.state;
    const T d_pre = relu ? (h > T(0) ? g_h : T(0)) : g_h * (T(1) - h * h);
    BackwardValues<T> out{};
    out.dx[0] = d_pre;
    out.dhidden[0] = d_pre;
    return out;
  }
};

struct LstmCell {
  static constexpr CellKind kKind = CellKind::kLstm;
  static constexpr int kGates = 4;

  template <typename T>
  FUSED_RNN_HD ForwardValues<T> forward(const T (&x)[kGates], const T (&hw)[kGates], T /*h_prev*/,
                                        T c_prev, T /*b_hn*/) const {
    const T i = sigmoid(x[0] + hw[0]);
    const T f = sigmoid(x[1] + hw[1]);
    const T g = tanh_of(x[2] + hw[2]);
    const T o = sigmoid(x[3] + hw[3]);
    ForwardValues<T> out{};
    out.c = f * c_prev + i * g;
    out.h = o * tanh_of(out.c);
    out.saved[0] = i;
    out.saved[1] = f;
    out.saved[2] = g;
    out.saved[3] = o;
    return out;
  }

  template <typename T>
  FUSED_RNN_HD BackwardValues<T> backward(T g_h, T dc, const SavedValues<T>& saved) const {
    const T i = saved.gates[0], f = saved.gates[1], g = saved.gates[2], o = saved.gates[3];
    const T tanh_c = tanh_of(saved.state);
    const T d_c = dc + g_h * o * (T(1) - tanh_c * tanh_c);
    BackwardValues<T> out{};
    out.dx[0] = d_c * g * i * (T(1) - i);
    out.dx[1] = d_c * saved.state_prev * f * (T(1) - f);
    out.dx[2] = d_c * i * (T(1) - g * g);
    out.dx[3] = g_h * tanh_c * o * (T(1) - o);
    for (int gate = 0; gate < kGates; ++gate) {
      out.dhidden[gate] = out.dx[gate];
    }
    out.dc = d_c * f;
    return out;
  }
};

struct GruCell {
  static constexpr CellKind kKind = CellKind::kGru;
  static constexpr int kGates = 3;

  template <typename T>
  FUSED_RNN_HD ForwardValues<T> forward(const T (&x)[kGates], const T (&hw)[kGates], T h_prev,
                                        T /*c_prev*/, T b_hn) const {
    const T r = sigmoid(x[0] + hw[0]);
    const T z = sigmoid(x[1] + hw[1]);
    const T h_n = hw[2] + b_hn;
    const T n = tanh_of(x[2] + r * h_n);
    ForwardValues<T> out{};
    out.h = (T(1) - z) * n + z * h_prev;
    out.saved[0] = r;
    out.saved[1] = z;
    out.saved[2] = n;
    out.saved[3] = h_n;
    return out;
  }

  template <typename T>
  FUSED_RNN_HD BackwardValues<T> backward(T g_h, T /*dc*/, const SavedValues<T>& saved) const {
    const T r = saved.gates[0], z = saved.gates[1], n = saved.gates[2], h_n = saved.gates[3];
    const T d_n = g_h * (T(1) - z) * (T(1) - n * n);
    BackwardValues<T> out{};
    out.dx[0] = d_n * h_n * r * (T(1) - r);
    out.dx[1] = g_h * (saved.state_prev - n) * z * (T(1) - z);
    out.dx[2] = d_n;
    out.dhidden[0] = out.dx[0];
    out.dhidden[1] = out.dx[1];
    out.dhidden[2] = d_n * r;
    out.local_dh = g_h * z;
    return out;
  }
};

}  // namespace fused_rnn::cuda
