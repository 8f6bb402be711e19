// The step kernels declared in cell_steps.h, written once with at::vec::Vectorized and compiled
// once per CPU capability. The including file defines CPU_CAPABILITY (the namespace the kernels
// land in) and, for a vector ISA, CPU_CAPABILITY_<ISA> and the matching target options.
//
// Every kernel is one pass over [B, units] tiles (parallel_tiles) with the gate math in the
// accumulation dtype acc_t; rows past their length write zeros to the per-step outputs.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cell_steps.h"

namespace fused_rnn::cpu::CPU_CAPABILITY {

// Units of one row handled by one task, and the fewest units worth a task of their own.
constexpr int64_t kTileUnits = 256;
constexpr int64_t kTaskUnits = 1024;

/// Runs span(b, j0, j1) over rows [0, batch) x units [0, units), tiled and spread over threads.
template <typename Span>
void parallel_tiles(int64_t batch, int64_t units, const Span& span) {
  if (batch == 0 || units == 0) {
    return;
  }
  const int64_t tile = std::min(units, kTileUnits);
  const int64_t tiles_per_row = (units + tile - 1) / tile;
  const int64_t grain = std::max<int64_t>(1, kTaskUnits / tile);
  at::parallel_for(0, batch * tiles_per_row, grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b = k / tiles_per_row;
      const int64_t j0 = (k % tiles_per_row) * tile;
      span(b, j0, std::min(units, j0 + tile));
    }
  });
}

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

template <typename Vec>
Vec sigmoid(const Vec& x) {
  const Vec one(1);
  return one / (one + x.neg().exp());
}

#include "vec_tanh.h"

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

// ------------------------------------------------------------------------------------------------
// Vanilla RNN
// ------------------------------------------------------------------------------------------------

template <typename scalar_t>
void rnn_forward(const RnnForwardStep& s) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vec = typename L::Vec;
  const int64_t H = s.hidden;
  parallel_tiles(s.rows.batch, H, [&](int64_t b, int64_t j0, int64_t j1) {
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
      const Vec h_new = s.relu ? at::vec::maximum(pre, Vec(0)) : tanh_from_exp(pre);
      L::store(hs + j, h_new, n);
      L::store_acc(h + j, L::round(h_new), n);
    }
  });
}

template <typename scalar_t>
void rnn_backward(const RnnBackwardStep& s) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vec = typename L::Vec;
  const int64_t H = s.hidden;
  parallel_tiles(s.rows.batch, H, [&](int64_t b, int64_t j0, int64_t j1) {
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

// ------------------------------------------------------------------------------------------------
// LSTM
// ------------------------------------------------------------------------------------------------

template <typename scalar_t>
void lstm_forward(const LstmForwardStep& s) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vec = typename L::Vec;
  const int64_t H = s.hidden;
  const bool projected = s.unprojected != nullptr;
  parallel_tiles(s.rows.batch, H, [&](int64_t b, int64_t j0, int64_t j1) {
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
    const scalar_t* xw = row<scalar_t>(s.xw, b, 4 * H);
    const acc_t* hw = row<acc_t>(s.hw, b, 4 * H);
    acc_t* c = row<acc_t>(s.c, b, H);
    for (int64_t j = j0; j < j1; j += L::size()) {
      const int64_t n = std::min(L::size(), j1 - j);
      const Vec i = sigmoid(L::load(xw + j, n) + L::load_acc(hw + j, n));
      const Vec f = sigmoid(L::load(xw + H + j, n) + L::load_acc(hw + H + j, n));
      const Vec g = tanh_from_exp(L::load(xw + 2 * H + j, n) + L::load_acc(hw + 2 * H + j, n));
      const Vec o = sigmoid(L::load(xw + 3 * H + j, n) + L::load_acc(hw + 3 * H + j, n));
      const Vec c_new = f * L::load_acc(c + j, n) + i * g;
      const Vec h_new = o * tanh_from_exp(c_new);
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

template <typename scalar_t>
void projected_state(const StateStep& s) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  const int64_t P = s.units;
  parallel_tiles(s.rows.batch, P, [&](int64_t b, int64_t j0, int64_t j1) {
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

template <typename scalar_t>
void output_grad(const OutputGradStep& s) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  const int64_t P = s.units;
  parallel_tiles(s.rows.batch, P, [&](int64_t b, int64_t j0, int64_t j1) {
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

template <typename scalar_t>
void lstm_backward(const LstmBackwardStep& s) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vec = typename L::Vec;
  const int64_t H = s.hidden;
  const bool projected = s.d_h != nullptr;
  parallel_tiles(s.rows.batch, H, [&](int64_t b, int64_t j0, int64_t j1) {
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
      const Vec tanh_c = tanh_from_exp(L::load_acc(cs + j, n));
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

// ------------------------------------------------------------------------------------------------
// GRU
// ------------------------------------------------------------------------------------------------

template <typename scalar_t>
void gru_forward(const GruForwardStep& s) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vec = typename L::Vec;
  const int64_t H = s.hidden;
  const scalar_t* b_hn = static_cast<const scalar_t*>(s.b_hn);
  parallel_tiles(s.rows.batch, H, [&](int64_t b, int64_t j0, int64_t j1) {
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
    acc_t* h = row<acc_t>(s.h, b, H);
    const Vec one(1);
    for (int64_t j = j0; j < j1; j += L::size()) {
      const int64_t n = std::min(L::size(), j1 - j);
      const Vec r = sigmoid(L::load(xw + j, n) + L::load_acc(hw + j, n));
      const Vec z = sigmoid(L::load(xw + H + j, n) + L::load_acc(hw + H + j, n));
      Vec h_n = L::load_acc(hw + 2 * H + j, n);
      if (b_hn) h_n = h_n + L::load(b_hn + j, n);
      const Vec n_gate = tanh_from_exp(L::load(xw + 2 * H + j, n) + r * h_n);
      const Vec h_new = (one - z) * n_gate + z * L::load_acc(h + j, n);
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

template <typename scalar_t>
void gru_backward(const GruBackwardStep& s) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vec = typename L::Vec;
  const int64_t H = s.hidden;
  parallel_tiles(s.rows.batch, H, [&](int64_t b, int64_t j0, int64_t j1) {
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
// The kernel table of this capability, dispatching on the storage dtype.
// ------------------------------------------------------------------------------------------------

#define FUSED_RNN_DISPATCH(Step, kernel)                                                       \
  [](const Step& s) {                                                                           \
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, s.dtype, #kernel,                 \
                                    [&] { kernel<scalar_t>(s); });                              \
  }

const CellStepKernels kernels = {
    CPU_CAPABILITY_NAME,
    FUSED_RNN_DISPATCH(RnnForwardStep, rnn_forward),
    FUSED_RNN_DISPATCH(RnnBackwardStep, rnn_backward),
    FUSED_RNN_DISPATCH(LstmForwardStep, lstm_forward),
    FUSED_RNN_DISPATCH(LstmBackwardStep, lstm_backward),
    FUSED_RNN_DISPATCH(StateStep, projected_state),
    FUSED_RNN_DISPATCH(OutputGradStep, output_grad),
    FUSED_RNN_DISPATCH(GruForwardStep, gru_forward),
    FUSED_RNN_DISPATCH(GruBackwardStep, gru_backward),
};

#undef FUSED_RNN_DISPATCH

}  // namespace fused_rnn::cpu::CPU_CAPABILITY
