// The sequence kernels declared in sequence_kernels.h, written once with at::vec::Vectorized and
// compiled once per CPU capability. The including file defines CPU_CAPABILITY (the namespace the
// kernels land in) and, for a vector ISA, CPU_CAPABILITY_<ISA> and the matching target options.
//
// A kernel is a list of stages per time step (run_sequence). A stage multiplies a carried operand
// by one weight (panel_gemm_impl.h) and runs a pointwise pass over the units of each panel of the
// product; the team meets at a barrier after each stage. The pointwise passes (section "Steps")
// compute the gate math in the accumulation dtype acc_t over every row of a range of units that
// the step's buffers hold: live rows get the cell's math; in the padded layout rows past their
// length get zeros in the per-step outputs (the packed layout holds live rows only).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#include "direct_product.h"
#include "row_split.h"
#include "sequence_kernels.h"
#include "team.h"
#include "workspace.h"

namespace fused_rnn::cpu::CPU_CAPABILITY {

#include "panel_gemm_impl.h"

/// Vectors of acc_t lanes read from and written to memory of scalar_t or acc_t.
template <typename scalar_t>
struct Lanes {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, acc_t>;

  static int64_t size() { return Vec::size(); }

  /// The first n (<= size()) elements at p, zeros in the other lanes.
  static Vec load(const scalar_t* p, int64_t n) {
    if constexpr (kReduced) {
      Vec out;
      if (n == Vec::size()) {
        at::vec::load_to_float(p, out);
      } else {
        scalar_t padded[Vec::size()] = {};
        std::copy(p, p + n, padded);
        at::vec::load_to_float(padded, out);
      }
      return out;
    } else {
      return n == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, n);
    }
  }

  static Vec load_acc(const acc_t* p, int64_t n) {
    return n == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, n);
  }

  static void store(scalar_t* p, const Vec& v, int64_t n) {
    if constexpr (kReduced) {
      at::vec::convert_from_float<scalar_t>(v, v).store(p, n);
    } else {
      v.store(p, n);
    }
  }

  static void store_acc(acc_t* p, const Vec& v, int64_t n) { v.store(p, n); }

  /// v rounded to scalar_t precision (the value a later step reads back from scalar_t memory).
  static Vec round(const Vec& v) {
    if constexpr (kReduced) {
      return std::get<0>(at::vec::convert_to_float<scalar_t>(
          at::vec::convert_from_float<scalar_t>(v, v)));
    } else {
      return v;
    }
  }
};

#include "vec_tanh.h"
#include "vec_activations.h"

template <typename T>
void fill_zero(T* p, int64_t n) {
  std::fill_n(p, n, T(0));
}

template <typename T>
T* row(void* base, int64_t b, int64_t width) {
  return static_cast<T*>(base) + b * width;
}

template <typename T>
const T* row(const void* base, int64_t b, int64_t width) {
  return static_cast<const T*>(base) + b * width;
}

/// Address of time step t's first row in a per-step buffer of `rows`' layout ([T, B, width] or
/// [N, width] of T elements).
template <typename T>
T* at_step(void* base, const SequenceRows& rows, int64_t t, int64_t width) {
  return static_cast<T*>(base) + rows.offset(t) * width;
}

template <typename T>
const T* at_step(const void* base, const SequenceRows& rows, int64_t t, int64_t width) {
  return static_cast<const T*>(base) + rows.offset(t) * width;
}

/// The rows and units one pointwise pass covers.
struct Block {
  int64_t row_begin, row_end;
  int64_t unit_begin, unit_end;
};

/// Calls span(b, unit_begin, unit_end) on every row b of the block that the step's buffers hold
/// (in the packed layout, the live ones).
template <typename Span>
void over_rows(const StepRows& rows, const Block& block, const Span& span) {
  const int64_t end = std::min(block.row_end, rows.stored);
  for (int64_t b = block.row_begin; b < end; ++b) {
    span(b, block.unit_begin, block.unit_end);
  }
}

// ------------------------------------------------------------------------------------------------
// Steps: the pointwise pass of one time step over every row and a range of units.
// ------------------------------------------------------------------------------------------------

/// Vanilla RNN forward: h = act(xw[t] + hw).
struct RnnForwardStep {
  StepRows rows;
  int64_t hidden;
  bool relu;
  const void* xw;  // [B, H] scalar: xw[t]
  const void* hw;  // [B, H] acc: h[t-1] @ W_hh^T
  void* hs;        // [B, H] scalar, out: hs[t]
  void* h;         // [B, H] acc, out: the carried state, stored rounded to dtype
};

template <typename scalar_t>
void rnn_forward_step(const RnnForwardStep& s, const Block& block) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vec = typename L::Vec;
  const int64_t H = s.hidden;
  over_rows(s.rows, block, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* hs = row<scalar_t>(s.hs, b, H);
    if (!s.rows.live(b)) {
      fill_zero(hs + j0, j1 - j0);
      return;
    }
    const scalar_t* xw = row<scalar_t>(s.xw, b, H);
    const acc_t* hw = row<acc_t>(s.hw, b, H);
    acc_t* h = row<acc_t>(s.h, b, H);
    for (int64_t j = j0; j < j1; j += L::size()) {
      const int64_t n = std::min(L::size(), j1 - j);
      const Vec pre = L::load(xw + j, n) + L::load_acc(hw + j, n);
      const Vec h_new = s.relu ? at::vec::maximum(pre, Vec(0)) : gate_tanh(pre);
      L::store(hs + j, h_new, n);
      L::store_acc(h + j, L::round(h_new), n);
    }
  });
}

/// Vanilla RNN backward: d_pre = (dh + grad_hs[t]) * act'(hs[t]).
struct RnnBackwardStep {
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

template <typename scalar_t>
void rnn_backward_step(const RnnBackwardStep& s, const Block& block) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vec = typename L::Vec;
  const int64_t H = s.hidden;
  over_rows(s.rows, block, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* dxw = row<scalar_t>(s.dxw, b, H);
    acc_t* d_pre = s.d_pre ? row<acc_t>(s.d_pre, b, H) : nullptr;
    if (!s.rows.live(b)) {
      fill_zero(dxw + j0, j1 - j0);
      if (d_pre) fill_zero(d_pre + j0, j1 - j0);
      return;
    }
    const scalar_t* grad_hs = row<scalar_t>(s.grad_hs, b, H);
    const scalar_t* hs = row<scalar_t>(s.hs, b, H);
    const acc_t* dh = row<acc_t>(s.rows.live_next(b) ? s.dh_carried : s.dh_final, b, H);
    for (int64_t j = j0; j < j1; j += L::size()) {
      const int64_t n = std::min(L::size(), j1 - j);
      const Vec g = L::load_acc(dh + j, n) + L::load(grad_hs + j, n);
      const Vec h = L::load(hs + j, n);
      const Vec d = s.relu ? Vec::blendv(Vec(0), g, h > Vec(0)) : g * (Vec(1) - h * h);
      L::store(dxw + j, d, n);
      if (d_pre) L::store_acc(d_pre + j, d, n);
    }
  });
}

/// LSTM forward: gates, cell state and h = o * tanh(c) (before the projection, if any).
struct LstmForwardStep {
  StepRows rows;
  int64_t hidden;
  const void* xw;     // [B, 4H] scalar: xw[t]; with an xw_stride of 0 one row for every row
  int64_t xw_stride;  // between rows of xw: 4H, or 0
  const void* hw;     // [B, 4H] acc: h[t-1] @ W_hh^T (+ x[t] @ W_ih^T where xw is the bias)
  void* gates;        // [B, 4H] scalar, out: activated i, f, g, o; null when not saved
  void* cs;           // [B, H] acc, out: cs[t]; null when not saved
  void* c;            // [B, H] acc, in-out: the carried cell state
  void* hs;           // [B, H] scalar, out: hs[t]; null with a projection
  void* h;            // [B, H] acc, out: the carried state; null with a projection
  void* unprojected;  // [B, H] acc, out: o * tanh(c) for the projection; null without
};

template <typename scalar_t>
void lstm_forward_step(const LstmForwardStep& s, const Block& block) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vec = typename L::Vec;
  const int64_t H = s.hidden;
  const bool projected = s.unprojected != nullptr;
  over_rows(s.rows, block, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* gates = s.gates ? row<scalar_t>(s.gates, b, 4 * H) : nullptr;
    acc_t* cs = s.cs ? row<acc_t>(s.cs, b, H) : nullptr;
    if (!s.rows.live(b)) {
      if (gates) {
        for (int64_t gate = 0; gate < 4; ++gate) fill_zero(gates + gate * H + j0, j1 - j0);
      }
      if (cs) fill_zero(cs + j0, j1 - j0);
      if (projected) {
        fill_zero(row<acc_t>(s.unprojected, b, H) + j0, j1 - j0);
      } else {
        fill_zero(row<scalar_t>(s.hs, b, H) + j0, j1 - j0);
      }
      return;
    }
    const scalar_t* xw = row<scalar_t>(s.xw, b, s.xw_stride);
    const acc_t* hw = row<acc_t>(s.hw, b, 4 * H);
    acc_t* c = row<acc_t>(s.c, b, H);
    for (int64_t j = j0; j < j1; j += L::size()) {
      const int64_t n = std::min(L::size(), j1 - j);
      const Vec i = gate_sigmoid(L::load(xw + j, n) + L::load_acc(hw + j, n));
      const Vec f = gate_sigmoid(L::load(xw + H + j, n) + L::load_acc(hw + H + j, n));
      const Vec g = gate_tanh(L::load(xw + 2 * H + j, n) + L::load_acc(hw + 2 * H + j, n));
      const Vec o = gate_sigmoid(L::load(xw + 3 * H + j, n) + L::load_acc(hw + 3 * H + j, n));
      const Vec c_new = f * L::load_acc(c + j, n) + i * g;
      const Vec h_new = o * gate_tanh(c_new);
      if (gates) {
        L::store(gates + j, i, n);
        L::store(gates + H + j, f, n);
        L::store(gates + 2 * H + j, g, n);
        L::store(gates + 3 * H + j, o, n);
      }
      if (cs) L::store_acc(cs + j, c_new, n);
      L::store_acc(c + j, c_new, n);
      if (projected) {
        L::store_acc(row<acc_t>(s.unprojected, b, H) + j, h_new, n);
      } else {
        L::store(row<scalar_t>(s.hs, b, H) + j, h_new, n);
        L::store_acc(row<acc_t>(s.h, b, H) + j, L::round(h_new), n);
      }
    }
  });
}

/// The projected LSTM state: hs[t] = projected, h = projected rounded, for live rows.
struct StateStep {
  StepRows rows;
  int64_t units;
  const void* value;  // [B, P] acc: (o * tanh(c)) @ W_hr^T
  void* hs;           // [B, P] scalar, out: hs[t]
  void* h;            // [B, P] acc, out: the carried state
};

template <typename scalar_t>
void projected_state_step(const StateStep& s, const Block& block) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  const int64_t P = s.units;
  over_rows(s.rows, block, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* hs = row<scalar_t>(s.hs, b, P);
    if (!s.rows.live(b)) {
      fill_zero(hs + j0, j1 - j0);
      return;
    }
    const acc_t* value = row<acc_t>(s.value, b, P);
    acc_t* h = row<acc_t>(s.h, b, P);
    for (int64_t j = j0; j < j1; j += L::size()) {
      const int64_t n = std::min(L::size(), j1 - j);
      const auto v = L::load_acc(value + j, n);
      L::store(hs + j, v, n);
      L::store_acc(h + j, L::round(v), n);
    }
  });
}

/// The gradient reaching a step's output: g = dh + grad_hs[t] on live rows, zero elsewhere.
struct OutputGradStep {
  StepRows rows;
  int64_t units;
  const void* grad_hs;     // [B, P] scalar: grad_hs[t]
  const void* dh_carried;  // [B, P] acc (rows live at t+1)
  const void* dh_final;    // [B, P] acc: grad_h_n (other rows)
  void* grad;              // [B, P] acc, out
};

template <typename scalar_t>
void output_grad_step(const OutputGradStep& s, const Block& block) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  const int64_t P = s.units;
  over_rows(s.rows, block, [&](int64_t b, int64_t j0, int64_t j1) {
    acc_t* grad = row<acc_t>(s.grad, b, P);
    if (!s.rows.live(b)) {
      fill_zero(grad + j0, j1 - j0);
      return;
    }
    const scalar_t* grad_hs = row<scalar_t>(s.grad_hs, b, P);
    const acc_t* dh = row<acc_t>(s.rows.live_next(b) ? s.dh_carried : s.dh_final, b, P);
    for (int64_t j = j0; j < j1; j += L::size()) {
      const int64_t n = std::min(L::size(), j1 - j);
      L::store_acc(grad + j, L::load_acc(dh + j, n) + L::load(grad_hs + j, n), n);
    }
  });
}

/// LSTM backward: gate gradients from the gradient of h = o * tanh(c) and the carried dc.
struct LstmBackwardStep {
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

template <typename scalar_t>
void lstm_backward_step(const LstmBackwardStep& s, const Block& block) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vec = typename L::Vec;
  const int64_t H = s.hidden;
  const bool projected = s.d_h != nullptr;
  over_rows(s.rows, block, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* dxw = row<scalar_t>(s.dxw, b, 4 * H);
    acc_t* d_pre = s.d_pre ? row<acc_t>(s.d_pre, b, 4 * H) : nullptr;
    acc_t* unprojected = s.unprojected ? row<acc_t>(s.unprojected, b, H) : nullptr;
    if (!s.rows.live(b)) {
      for (int64_t gate = 0; gate < 4; ++gate) {
        fill_zero(dxw + gate * H + j0, j1 - j0);
        if (d_pre) fill_zero(d_pre + gate * H + j0, j1 - j0);
      }
      if (unprojected) fill_zero(unprojected + j0, j1 - j0);
      return;
    }
    const scalar_t* gates = row<scalar_t>(s.gates, b, 4 * H);
    const acc_t* cs = row<acc_t>(s.cs, b, H);
    const acc_t* c_prev = row<acc_t>(s.c_prev, b, H);
    acc_t* dc = row<acc_t>(s.dc, b, H);
    const acc_t* d_h = projected ? row<acc_t>(s.d_h, b, H) : nullptr;
    const scalar_t* grad_hs = projected ? nullptr : row<scalar_t>(s.grad_hs, b, H);
    const acc_t* dh =
        projected ? nullptr : row<acc_t>(s.rows.live_next(b) ? s.dh_carried : s.dh_final, b, H);
    const Vec one(1);
    for (int64_t j = j0; j < j1; j += L::size()) {
      const int64_t n = std::min(L::size(), j1 - j);
      const Vec i = L::load(gates + j, n);
      const Vec f = L::load(gates + H + j, n);
      const Vec g = L::load(gates + 2 * H + j, n);
      const Vec o = L::load(gates + 3 * H + j, n);
      const Vec tanh_c = gate_tanh(L::load_acc(cs + j, n));
      const Vec grad_h = projected ? L::load_acc(d_h + j, n)
                                   : L::load_acc(dh + j, n) + L::load(grad_hs + j, n);
      const Vec d_c = L::load_acc(dc + j, n) + grad_h * o * (one - tanh_c * tanh_c);
      const Vec d_i = d_c * g * i * (one - i);
      const Vec d_f = d_c * L::load_acc(c_prev + j, n) * f * (one - f);
      const Vec d_g = d_c * i * (one - g * g);
      const Vec d_o = grad_h * tanh_c * o * (one - o);
      L::store(dxw + j, d_i, n);
      L::store(dxw + H + j, d_f, n);
      L::store(dxw + 2 * H + j, d_g, n);
      L::store(dxw + 3 * H + j, d_o, n);
      if (d_pre) {
        L::store_acc(d_pre + j, d_i, n);
        L::store_acc(d_pre + H + j, d_f, n);
        L::store_acc(d_pre + 2 * H + j, d_g, n);
        L::store_acc(d_pre + 3 * H + j, d_o, n);
      }
      L::store_acc(dc + j, d_c * f, n);
      if (unprojected) L::store_acc(unprojected + j, o * tanh_c, n);
    }
  });
}

/// GRU forward.
struct GruForwardStep {
  StepRows rows;
  int64_t hidden;
  const void* xw;      // [B, 3H] scalar: xw[t]
  const void* hw;      // [B, 3H] acc: h[t-1] @ W_hh^T
  const void* b_hn;    // [H] scalar, or null
  const void* h_prev;  // [B, H] acc: h[t-1]
  void* gates;         // [B, 4H] scalar, out: r, z, n, W_hn h + b_hn; null when not saved
  void* hs;            // [B, H] scalar, out: hs[t]
  void* h;             // [B, H] acc, out: the carried state h[t]
};

template <typename scalar_t>
void gru_forward_step(const GruForwardStep& s, const Block& block) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vec = typename L::Vec;
  const int64_t H = s.hidden;
  const scalar_t* b_hn = static_cast<const scalar_t*>(s.b_hn);
  over_rows(s.rows, block, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* gates = s.gates ? row<scalar_t>(s.gates, b, 4 * H) : nullptr;
    scalar_t* hs = row<scalar_t>(s.hs, b, H);
    if (!s.rows.live(b)) {
      if (gates) {
        for (int64_t gate = 0; gate < 4; ++gate) fill_zero(gates + gate * H + j0, j1 - j0);
      }
      fill_zero(hs + j0, j1 - j0);
      return;
    }
    const scalar_t* xw = row<scalar_t>(s.xw, b, 3 * H);
    const acc_t* hw = row<acc_t>(s.hw, b, 3 * H);
    const acc_t* h_prev = row<acc_t>(s.h_prev, b, H);
    acc_t* h = row<acc_t>(s.h, b, H);
    const Vec one(1);
    for (int64_t j = j0; j < j1; j += L::size()) {
      const int64_t n = std::min(L::size(), j1 - j);
      const Vec r = gate_sigmoid(L::load(xw + j, n) + L::load_acc(hw + j, n));
      const Vec z = gate_sigmoid(L::load(xw + H + j, n) + L::load_acc(hw + H + j, n));
      Vec h_n = L::load_acc(hw + 2 * H + j, n);
      if (b_hn) h_n = h_n + L::load(b_hn + j, n);
      const Vec n_gate = gate_tanh(L::load(xw + 2 * H + j, n) + r * h_n);
      const Vec h_new = (one - z) * n_gate + z * L::load_acc(h_prev + j, n);
      if (gates) {
        L::store(gates + j, r, n);
        L::store(gates + H + j, z, n);
        L::store(gates + 2 * H + j, n_gate, n);
        L::store(gates + 3 * H + j, h_n, n);
      }
      L::store(hs + j, h_new, n);
      L::store_acc(h + j, L::round(h_new), n);
    }
  });
}

/// GRU backward. This pass writes g * z into `dh` and the gate gradients into `d_hidden`; the
/// next stage adds [d_r, d_z, d_hn] @ W_hh to dh.
struct GruBackwardStep {
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

template <typename scalar_t>
void gru_backward_step(const GruBackwardStep& s, const Block& block) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vec = typename L::Vec;
  const int64_t H = s.hidden;
  over_rows(s.rows, block, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* dxw = row<scalar_t>(s.dxw, b, 3 * H);
    scalar_t* d_hn = row<scalar_t>(s.d_hn, b, H);
    acc_t* d_hidden = row<acc_t>(s.d_hidden, b, 3 * H);
    acc_t* dh = row<acc_t>(s.dh, b, H);
    if (!s.rows.live(b)) {
      for (int64_t gate = 0; gate < 3; ++gate) {
        fill_zero(dxw + gate * H + j0, j1 - j0);
        fill_zero(d_hidden + gate * H + j0, j1 - j0);
      }
      fill_zero(d_hn + j0, j1 - j0);
      fill_zero(dh + j0, j1 - j0);
      return;
    }
    const scalar_t* grad_hs = row<scalar_t>(s.grad_hs, b, H);
    const scalar_t* gates = row<scalar_t>(s.gates, b, 4 * H);
    const scalar_t* h_prev = row<scalar_t>(s.h_prev, b, H);
    const acc_t* dh_in = s.rows.live_next(b) ? dh : row<acc_t>(s.dh_final, b, H);
    const Vec one(1);
    for (int64_t j = j0; j < j1; j += L::size()) {
      const int64_t n = std::min(L::size(), j1 - j);
      const Vec g = L::load_acc(dh_in + j, n) + L::load(grad_hs + j, n);
      const Vec r = L::load(gates + j, n);
      const Vec z = L::load(gates + H + j, n);
      const Vec n_gate = L::load(gates + 2 * H + j, n);
      const Vec h_n = L::load(gates + 3 * H + j, n);
      const Vec d_n = g * (one - z) * (one - n_gate * n_gate);
      const Vec d_z = g * (L::load(h_prev + j, n) - n_gate) * z * (one - z);
      const Vec d_r = d_n * h_n * r * (one - r);
      const Vec d_h_n = d_n * r;
      L::store(dxw + j, d_r, n);
      L::store(dxw + H + j, d_z, n);
      L::store(dxw + 2 * H + j, d_n, n);
      L::store(d_hn + j, d_h_n, n);
      L::store_acc(d_hidden + j, d_r, n);
      L::store_acc(d_hidden + H + j, d_z, n);
      L::store_acc(d_hidden + 2 * H + j, d_h_n, n);
      L::store_acc(dh + j, g * z, n);
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Sequences: the stages of each time step, run by one team.
// ------------------------------------------------------------------------------------------------

/// One stage of a time step t: out = a @ op(W) over rows [0, rows(t)) (none when 0), then
/// pointwise(t, block) over the rows and units of a block of the product.
template <typename acc_t>
struct Stage {
  Panels<acc_t> w;     // op(W)'s layout (gates of `units` output columns, `depth` inputs)
  const acc_t* weight;  // W, contiguous: [gates * units, depth] when transposed, else [depth, units]
  bool transposed;      // op(W) = W^T (forward products) or W (backward products)
  bool accumulate;      // out += a @ op(W) instead of out = a @ op(W)
  std::function<int64_t(int64_t)> rows;
  std::function<const acc_t*(int64_t)> a;  // [rows, depth]
  std::function<acc_t*(int64_t)> out;      // [rows, gates * units]
  std::function<void(int64_t, const Block&)> pointwise;  // empty: no pointwise pass
  // A per-step input of the pointwise pass in the product's column layout, [rows, gates * units]
  // of `streamed_bytes` per element at streamed(t) (xw[t] of the forward passes), which the team
  // may prefetch while it multiplies (run_sequence). Empty: nothing to prefetch.
  std::function<const void*(int64_t)> streamed = {};
  int64_t streamed_bytes = 0;

  int64_t columns() const { return w.gates * w.units; }
  int64_t flops(int64_t batch) const { return 2 * batch * columns() * w.depth; }

  void pack(int64_t p0, int64_t p1) const {
    if (transposed) {
      pack_panels(w, weight, /*n_stride=*/w.depth, /*k_stride=*/1, p0, p1);
    } else {
      pack_panels(w, weight, /*n_stride=*/1, /*k_stride=*/columns(), p0, p1);
    }
  }

  /// The product of step t over rows [row_begin, row_end) and the panels [p0, p1).
  void multiply(int64_t t, int64_t row_begin, int64_t row_end, int64_t p0, int64_t p1) const {
    const int64_t live_end = std::min(row_end, rows(t));
    if (live_end <= row_begin) {
      return;
    }
    const acc_t* lhs = a(t) + row_begin * w.depth;
    acc_t* result = out(t) + row_begin * columns();
    for (int64_t p = p0; p < p1; ++p) {
      panel_product(w, p, live_end - row_begin, lhs, w.depth, 1, result, columns(), accumulate);
    }
  }

  /// Prefetches the part of streamed(t) that the pass over rows [row_begin, row_end) and the
  /// units of panel p reads.
  void prefetch(int64_t t, int64_t row_begin, int64_t row_end, int64_t p) const {
    if (!streamed || t < 0) {
      return;
    }
    constexpr int64_t kLine = 64;
    const char* base = static_cast<const char*>(streamed(t));
    const int64_t row_bytes = columns() * streamed_bytes;
    const int64_t begin = w.unit_begin(p) * streamed_bytes, end = w.unit_end(p) * streamed_bytes;
    const int64_t live_end = std::min(row_end, rows(t));
    for (int64_t r = row_begin; r < live_end; ++r) {
      for (int64_t g = 0; g < w.gates; ++g) {
        const char* gate = base + r * row_bytes + g * w.units * streamed_bytes;
        for (int64_t byte = begin; byte < end; byte += kLine) {
          __builtin_prefetch(gate + byte, 0, 2);
        }
      }
    }
  }

  void pass(int64_t t, const Block& block) const {
    if (t >= 0 && pointwise && block.row_begin < block.row_end && block.unit_begin < block.unit_end) {
      pointwise(t, block);
    }
  }
};

/// Runs `stages` at steps t = 0 .. steps - 1, or with `backward` at t = steps - 1 down to -1
/// (the products of step -1 make the initial-state gradient; no pointwise pass runs at t < 0).
///
/// With more than one step the weights are packed once (into the thread's workspace) and the team
/// splits the work one of two ways. By units: each member multiplies by its panels and runs the
/// pointwise pass on their units for every row, and the team meets at a barrier after each stage
/// (the next stage reads the state every member wrote). By rows, where the weight is small or the
/// batch large: each member runs every stage on its own run of rows (balanced_row_split), which
/// depend on no other row, so the team meets only once, after packing.
/// A single step reads the weights in place (direct_product).
template <typename acc_t, size_t kStages>
void run_sequence(std::array<Stage<acc_t>, kStages>& stages, const SequenceRows& sequence,
                  bool backward) {
  const int64_t batch = sequence.batch, steps = sequence.steps;
  if (batch == 0) {
    return;  // an empty batch (torch.nn runs one): no row to compute, and no block to split
  }
  const c10::ScalarType acc = c10::CppTypeToScalarType<acc_t>::value;
  const int64_t count = backward ? steps + 1 : steps;
  const auto step_at = [&](int64_t i) { return backward ? steps - 1 - i : i; };
  int64_t flops = 0, panels = 1, weight_bytes = 0;
  for (const auto& stage : stages) {
    flops = std::max(flops, stage.flops(batch));
    panels = std::max(panels, stage.w.count());
    weight_bytes += stage.w.elements() * static_cast<int64_t>(sizeof(acc_t));
  }
  const int most = static_cast<int>(std::min<int64_t>(team_threads(), 1 + flops / kFlopsPerExtraThread));
  const bool split_rows = splits_rows(batch, most, weight_bytes);
  const int threads = split_rows ? most : static_cast<int>(std::min<int64_t>(most, panels));
  // Split by units, a member's pass reads a few lines of each row of streamed(t) per panel, which
  // the hardware prefetcher misses. Prefetched while the member multiplies, they are still in its
  // L2 at the pass where its share of the weights stays there (B = 16, H = 256: LSTM and GRU steps
  // 11-15 % faster; RNN H = 512 6 %). Where the weights stream through L2 it gained nothing (GRU
  // H = 512, 1024: within the 4 % noise of two identical runs).
  const bool prefetch = !split_rows && weight_bytes <= kCachedWeightBytes * threads;
  // By units: the units of this member's panels, for every row.
  const auto unit_block = [&](const Team& team, const Stage<acc_t>& stage) {
    const auto [p0, p1] = team.share(stage.w.count());
    return p0 < p1 ? Block{0, batch, stage.w.unit_begin(p0), stage.w.unit_end(p1 - 1)} : Block{0, 0, 0, 0};
  };

  if (steps == 1) {
    for (int64_t i = 0; i < count; ++i) {
      const int64_t t = step_at(i);
      for (const auto& stage : stages) {
        const int64_t rows = stage.rows(t);
        if (rows > 0) {
          direct_product(acc, stage.a(t), rows, stage.weight, stage.columns(), stage.w.depth,
                         stage.transposed, stage.out(t), stage.accumulate);
        }
        run_team(std::min<int>(threads, static_cast<int>(panels)),
                 [&](const Team& team) { stage.pass(t, unit_block(team, stage)); });
      }
    }
    return;
  }

  // Every stage's panels in one buffer kept for the next call, each starting on a cache line.
  constexpr int64_t kLine = 64 / sizeof(acc_t);
  int64_t elements = 0;
  for (const auto& stage : stages) {
    elements += (stage.w.elements() + kLine - 1) / kLine * kLine;
  }
  acc_t* next = static_cast<acc_t*>(thread_workspace(elements * sizeof(acc_t)));
  for (auto& stage : stages) {
    stage.w.data = next;
    next += (stage.w.elements() + kLine - 1) / kLine * kLine;
  }
  const std::vector<int64_t> row_split =
      split_rows ? balanced_row_split(sequence.lengths, batch, steps, threads) : std::vector<int64_t>{};
  run_team(threads, [&](const Team& team) {
    for (const auto& stage : stages) {
      const auto [p0, p1] = team.share(stage.w.count());
      stage.pack(p0, p1);
    }
    team.barrier();
    for (int64_t i = 0; i < count; ++i) {
      const int64_t t = step_at(i);
      for (const auto& stage : stages) {
        if (split_rows) {
          const int64_t r0 = row_split[team.id], r1 = row_split[team.id + 1];
          stage.multiply(t, r0, r1, 0, stage.w.count());
          stage.pass(t, Block{r0, r1, 0, stage.w.units});
        } else {
          const auto [p0, p1] = team.share(stage.w.count());
          for (int64_t p = p0; p < p1; ++p) {
            stage.multiply(t, 0, batch, p, p + 1);
            if (prefetch) {
              stage.prefetch(t, 0, batch, p);
            }
          }
          stage.pass(t, unit_block(team, stage));
          team.barrier();
        }
      }
    }
  });
}

/// A [rows, width] working buffer of acc_t, or two of them alternating by step.
template <typename acc_t>
struct Buffers {
  at::Tensor storage;
  int64_t size;

  Buffers(int64_t copies, int64_t rows, int64_t width)
      : storage(at::empty({copies * rows * width},
                          at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value))),
        size(rows * width) {}

  acc_t* get(int64_t index) const { return storage.data_ptr<acc_t>() + index * size; }
  /// The buffer of step t when two alternate (t may be -1).
  acc_t* of_step(int64_t t) const { return get(((t % 2) + 2) % 2); }
};

template <typename scalar_t>
void rnn_forward(const RnnForwardSequence& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = s.rows.batch, H = s.hidden;
  // h[t] alternates between two buffers: the product of step t + 1 reads h[t] while the
  // pointwise pass of another member's units writes h[t + 1].
  const Buffers<acc_t> state(2, B, H), hw(1, B, H);
  std::memcpy(state.of_step(-1), s.h0, B * H * sizeof(acc_t));
  std::array<Stage<acc_t>, 1> stages{{{
      Panels<acc_t>::layout(1, H, H), static_cast<const acc_t*>(s.w_hh), true, false,
      [&](int64_t t) { return s.rows.live(t); },
      [&](int64_t t) { return state.of_step(t - 1); },
      [&](int64_t) { return hw.get(0); },
      [&](int64_t t, const Block& block) {
        rnn_forward_step<scalar_t>({s.rows.at(t), H, s.relu, at_step<scalar_t>(s.xw, s.rows, t, H),
                                    hw.get(0), at_step<scalar_t>(s.hs, s.rows, t, H),
                                    state.of_step(t)}, block);
      },
      [&](int64_t t) { return at_step<scalar_t>(s.xw, s.rows, t, H); }, sizeof(scalar_t),
  }}};
  run_sequence(stages, s.rows, /*backward=*/false);
}

template <typename scalar_t>
void rnn_backward(const RnnBackwardSequence& s) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kReduced = !std::is_same_v<scalar_t, acc_t>;
  const int64_t B = s.rows.batch, H = s.hidden;
  // The product reads the unrounded gate gradients of step t + 1: dxw itself unless dtype is a
  // half type, else two alternating buffers.
  const Buffers<acc_t> d_pre(kReduced ? 2 : 0, B, H);
  const auto d_pre_of = [&](int64_t t) -> acc_t* {
    return kReduced ? d_pre.of_step(t) : at_step<acc_t>(s.dxw, s.rows, t, H);
  };
  acc_t* dh = static_cast<acc_t*>(s.dh0);  // d_pre[t+1] @ W_hh, at the end d_pre[0] @ W_hh
  std::array<Stage<acc_t>, 1> stages{{{
      Panels<acc_t>::layout(1, H, H), static_cast<const acc_t*>(s.w_hh), false, false,
      [&](int64_t t) { return s.rows.live(t + 1); },
      [&](int64_t t) { return d_pre_of(t + 1); },
      [&](int64_t) { return dh; },
      [&](int64_t t, const Block& block) {
        rnn_backward_step<scalar_t>(
            {s.rows.at(t), H, s.relu, at_step<scalar_t>(s.grad_hs, s.rows, t, H),
             at_step<scalar_t>(s.hs, s.rows, t, H), dh, s.dh_final, at_step<scalar_t>(s.dxw, s.rows, t, H),
             kReduced ? d_pre_of(t) : nullptr}, block);
      },
  }}};
  run_sequence(stages, s.rows, /*backward=*/true);
}

template <typename scalar_t>
void lstm_forward(const LstmForwardSequence& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = s.rows.batch, H = s.hidden, P = s.state, I = s.input;
  const bool projected = s.w_hr != nullptr;
  const bool save = s.gates != nullptr;
  const bool input_inside = s.x != nullptr;
  TORCH_CHECK(!input_inside || (std::is_same_v<scalar_t, acc_t>),
              "lstm_forward: the input projection runs inside the steps only in float and double");
  // Without a projection h[t] alternates between two buffers (see rnn_forward); with one, a
  // barrier separates the products that read h from the pass that writes it.
  const Buffers<acc_t> state(projected ? 1 : 2, B, P), hw(1, B, 4 * H);
  const Buffers<acc_t> unprojected(projected ? 1 : 0, B, H), h_projected(projected ? 1 : 0, B, P);
  const auto state_of = [&](int64_t t) { return projected ? state.get(0) : state.of_step(t); };
  std::memcpy(state_of(-1), s.h0, B * P * sizeof(acc_t));
  const auto live = [&](int64_t t) { return s.rows.live(t); };
  // With the input inside, the pass reads the bias in place of xw[t] (every row the same), and
  // the input stage's product x[t] @ W_ih^T is what the gates stage adds h[t-1] @ W_hh^T to.
  const auto xw_at = [&](int64_t t) -> const scalar_t* {
    return input_inside ? static_cast<const scalar_t*>(s.bias) : at_step<scalar_t>(s.xw, s.rows, t, 4 * H);
  };
  Stage<acc_t> input_stage{
      Panels<acc_t>::layout(4, H, I), static_cast<const acc_t*>(s.w_ih), true, false, live,
      [&](int64_t t) { return at_step<acc_t>(s.x, s.rows, t, I); },
      [&](int64_t) { return hw.get(0); },
      {},
  };
  Stage<acc_t> gates_stage{
      Panels<acc_t>::layout(4, H, P), static_cast<const acc_t*>(s.w_hh), true, input_inside, live,
      [&](int64_t t) { return state_of(t - 1); },
      [&](int64_t) { return hw.get(0); },
      [&](int64_t t, const Block& block) {
        lstm_forward_step<scalar_t>(
            {s.rows.at(t), H, xw_at(t), input_inside ? 0 : 4 * H, hw.get(0),
             save ? at_step<scalar_t>(s.gates, s.rows, t, 4 * H) : nullptr,
             save ? at_step<acc_t>(s.cs, s.rows, t, H) : nullptr, s.c,
             projected ? nullptr : at_step<scalar_t>(s.hs, s.rows, t, H),
             projected ? nullptr : state_of(t), projected ? unprojected.get(0) : nullptr}, block);
      },
  };
  if (!input_inside) {
    gates_stage.streamed = [&](int64_t t) { return xw_at(t); };
    gates_stage.streamed_bytes = sizeof(scalar_t);
  }
  Stage<acc_t> projection_stage{
      Panels<acc_t>::layout(1, P, H), static_cast<const acc_t*>(s.w_hr), true, false, live,
      [&](int64_t) { return unprojected.get(0); },
      [&](int64_t) { return h_projected.get(0); },
      [&](int64_t t, const Block& block) {
        projected_state_step<scalar_t>(
            {s.rows.at(t), P, h_projected.get(0), at_step<scalar_t>(s.hs, s.rows, t, P), state.get(0)}, block);
      },
  };
  const auto run = [&](auto&... stage) {
    std::array<Stage<acc_t>, sizeof...(stage)> stages{{stage...}};
    run_sequence(stages, s.rows, /*backward=*/false);
  };
  if (input_inside && projected) {
    run(input_stage, gates_stage, projection_stage);
  } else if (input_inside) {
    run(input_stage, gates_stage);
  } else if (projected) {
    run(gates_stage, projection_stage);
  } else {
    run(gates_stage);
  }
}

template <typename scalar_t>
void lstm_backward(const LstmBackwardSequence& s) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kReduced = !std::is_same_v<scalar_t, acc_t>;
  const int64_t B = s.rows.batch, H = s.hidden, P = s.state;
  const bool projected = s.w_hr != nullptr;
  // The product reads the unrounded gate gradients of step t + 1 (see rnn_backward).
  const Buffers<acc_t> d_pre(kReduced ? 2 : 0, B, 4 * H), d_h(projected ? 1 : 0, B, H);
  const auto d_pre_of = [&](int64_t t) -> acc_t* {
    return kReduced ? d_pre.of_step(t) : at_step<acc_t>(s.dxw, s.rows, t, 4 * H);
  };
  acc_t* dh = static_cast<acc_t*>(s.dh0);  // d_pre[t+1] @ W_hh, at the end d_pre[0] @ W_hh
  const auto gate_grads = [&](int64_t t, const Block& block) {
    lstm_backward_step<scalar_t>(
        {s.rows.at(t), H, at_step<scalar_t>(s.gates, s.rows, t, 4 * H), at_step<acc_t>(s.cs, s.rows, t, H),
         t > 0 ? at_step<acc_t>(s.cs, s.rows, t - 1, H) : static_cast<const acc_t*>(s.c0),
         projected ? nullptr : at_step<scalar_t>(s.grad_hs, s.rows, t, H),
         projected ? nullptr : dh, projected ? nullptr : s.dh_final,
         projected ? d_h.get(0) : nullptr, s.dc, at_step<scalar_t>(s.dxw, s.rows, t, 4 * H),
         kReduced ? d_pre_of(t) : nullptr,
         projected ? at_step<acc_t>(s.unprojected, s.rows, t, H) : nullptr}, block);
  };
  Stage<acc_t> carried_stage{
      Panels<acc_t>::layout(1, P, 4 * H), static_cast<const acc_t*>(s.w_hh), false, false,
      [&](int64_t t) { return s.rows.live(t + 1); },
      [&](int64_t t) { return d_pre_of(t + 1); },
      [&](int64_t) { return dh; },
      projected ? std::function<void(int64_t, const Block&)>(
                      [&](int64_t t, const Block& block) {
                        output_grad_step<scalar_t>({s.rows.at(t), P,
                                                    at_step<scalar_t>(s.grad_hs, s.rows, t, P), dh,
                                                    s.dh_final,
                                                    at_step<acc_t>(s.grad_out, s.rows, t, P)}, block);
                      })
                : std::function<void(int64_t, const Block&)>(gate_grads),
  };
  if (!projected) {
    std::array<Stage<acc_t>, 1> stages{{carried_stage}};
    run_sequence(stages, s.rows, /*backward=*/true);
    return;
  }
  Stage<acc_t> projection_stage{
      Panels<acc_t>::layout(1, H, P), static_cast<const acc_t*>(s.w_hr), false, false,
      [&](int64_t t) { return t >= 0 ? s.rows.live(t) : 0; },
      [&](int64_t t) { return at_step<acc_t>(s.grad_out, s.rows, t, P); },
      [&](int64_t) { return d_h.get(0); },
      gate_grads,
  };
  std::array<Stage<acc_t>, 2> stages{{carried_stage, projection_stage}};
  run_sequence(stages, s.rows, /*backward=*/true);
}

template <typename scalar_t>
void gru_forward(const GruForwardSequence& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = s.rows.batch, H = s.hidden;
  const Buffers<acc_t> state(2, B, H), hw(1, B, 3 * H);  // see rnn_forward
  std::memcpy(state.of_step(-1), s.h0, B * H * sizeof(acc_t));
  std::array<Stage<acc_t>, 1> stages{{{
      Panels<acc_t>::layout(3, H, H), static_cast<const acc_t*>(s.w_hh), true, false,
      [&](int64_t t) { return s.rows.live(t); },
      [&](int64_t t) { return state.of_step(t - 1); },
      [&](int64_t) { return hw.get(0); },
      [&](int64_t t, const Block& block) {
        gru_forward_step<scalar_t>(
            {s.rows.at(t), H, at_step<scalar_t>(s.xw, s.rows, t, 3 * H), hw.get(0), s.b_hn,
             state.of_step(t - 1), s.gates ? at_step<scalar_t>(s.gates, s.rows, t, 4 * H) : nullptr,
             at_step<scalar_t>(s.hs, s.rows, t, H), state.of_step(t)}, block);
      },
      [&](int64_t t) { return at_step<scalar_t>(s.xw, s.rows, t, 3 * H); }, sizeof(scalar_t),
  }}};
  run_sequence(stages, s.rows, /*backward=*/false);
}

template <typename scalar_t>
void gru_backward(const GruBackwardSequence& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = s.rows.batch, H = s.hidden;
  // d_hidden[t] alternates between two buffers: the product of step t - 1 reads it while the
  // pointwise pass of another member's units writes d_hidden[t - 1].
  const Buffers<acc_t> d_hidden(2, B, 3 * H);
  // dh: g * z from the pass of step t + 1, plus d_hidden[t+1] @ W_hh; at the end dh0.
  acc_t* dh = static_cast<acc_t*>(s.dh0);
  std::array<Stage<acc_t>, 1> stages{{{
      Panels<acc_t>::layout(1, H, 3 * H), static_cast<const acc_t*>(s.w_hh), false, true,
      [&](int64_t t) { return s.rows.live(t + 1); },
      [&](int64_t t) { return d_hidden.of_step(t + 1); },
      [&](int64_t) { return dh; },
      [&](int64_t t, const Block& block) {
        gru_backward_step<scalar_t>(
            {s.rows.at(t), H, at_step<scalar_t>(s.grad_hs, s.rows, t, H),
             at_step<scalar_t>(s.gates, s.rows, t, 4 * H),
             t > 0 ? at_step<scalar_t>(s.hs, s.rows, t - 1, H) : static_cast<const scalar_t*>(s.h0),
             s.dh_final, dh, at_step<scalar_t>(s.dxw, s.rows, t, 3 * H),
             at_step<scalar_t>(s.d_hn, s.rows, t, H), d_hidden.of_step(t)}, block);
      },
  }}};
  run_sequence(stages, s.rows, /*backward=*/true);
}

// ------------------------------------------------------------------------------------------------
// The kernel table of this capability, dispatching on the storage dtype.
// ------------------------------------------------------------------------------------------------

#define FUSED_RNN_DISPATCH(Sequence, kernel)                                                   \
  [](const Sequence& s) {                                                                       \
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, s.dtype, #kernel,                 \
                                    [&] { kernel<scalar_t>(s); });                              \
  }

const SequenceKernels kernels = {
    CPU_CAPABILITY_NAME,
    FUSED_RNN_DISPATCH(RnnForwardSequence, rnn_forward),
    FUSED_RNN_DISPATCH(RnnBackwardSequence, rnn_backward),
    FUSED_RNN_DISPATCH(LstmForwardSequence, lstm_forward),
    FUSED_RNN_DISPATCH(LstmBackwardSequence, lstm_backward),
    FUSED_RNN_DISPATCH(GruForwardSequence, gru_forward),
    FUSED_RNN_DISPATCH(GruBackwardSequence, gru_backward),
#if defined(CPU_CAPABILITY_AVX512)
    &streamed_gemm<double>,
#else
    nullptr,  // in 256-bit vectors or fewer BLAS's GEMMs are no slower (see gemm.h)
#endif
};

#undef FUSED_RNN_DISPATCH

}  // namespace fused_rnn::cpu::CPU_CAPABILITY
