// The two passes of a recurrence, forward and backward, over a cell of cells.h: which weight
// element each packed slot holds, what the product reads, and the pointwise stage of one
// (unit, batch row) pair per phase, with lengths, saved tensors and carried state. Plain
// __host__ __device__ code over raw pointers: the kernel (recurrence_kernel.cuh) runs it on the
// GPU, the host tests run the same functions on the CPU.
//
// Phases. Forward: phase t = step t (T phases); the product reads the exchange slot t % 2
// (slot 0 starts as h0) and the pointwise stage writes h[t] into slot (t + 1) % 2.
// Backward: phase p handles step t = T - 1 - p (T + 1 phases; T with a projection): the product
// of phase p > 0 reads the gate gradients of step t + 1 from slot (p + 1) % 2 and gives
// (d_gates[t+1] W_hh)[:, unit]; the pointwise stage folds it into dh (rows live at t + 1), runs
// the cell backward for step t and writes its gate gradients into slot p % 2; the last phase
// (t = -1) only writes dh0.
//
// Carried state, per pair, in the accumulation dtype: forward h (the rounded value the next step
// multiplies) and LSTM c; backward dh (the part of dh[t] not yet folded) and LSTM dc.
#pragma once

#include <cstdint>

#include "cells.h"
#include "fragment_layout.h"
#include "recurrence_planner.h"

namespace fused_rnn::cuda {

template <typename T>
FUSED_RNN_HD T load_input(const T* address) {
#if defined(__CUDA_ARCH__)
  return __ldg(address);
#else
  return *address;
#endif
}

/// Brings the line of `address` into L2 ahead of its use (no-op on the host).
FUSED_RNN_HD void prefetch_l2(const void* address) {
#if defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L2 [%0];" ::"l"(address));
#else
  (void)address;
#endif
}

FUSED_RNN_HD bool is_live(const int64_t* lengths, int64_t row, int64_t t) {
  return lengths == nullptr || t < load_input(lengths + row);
}

/// The unit slice and batch slice of one block, clipped to H and B.
struct BlockSlice {
  int64_t unit_slice;
  int64_t unit0;
  int units;
  int64_t row0;
  int rows;
};

FUSED_RNN_HD BlockSlice block_slice(const RecurrenceGeometry& g, int64_t block) {
  BlockSlice s;
  s.unit_slice = block % g.unit_slices;
  s.unit0 = s.unit_slice * g.units_per_block;
  s.units = static_cast<int>(g.hidden - s.unit0 < g.units_per_block ? g.hidden - s.unit0 : g.units_per_block);
  s.row0 = (block / g.unit_slices) * g.batch_per_block;
  s.rows = static_cast<int>(g.batch - s.row0 < g.batch_per_block ? g.batch - s.row0 : g.batch_per_block);
  return s;
}

/// Where a block keeps what it computes and carries, as index functions shared by the kernel and
/// the host tests: the warps' partial sums [warps_k][rows_per_block][partial_row_stride] and the
/// carried state, [carries][units_per_block][batch_per_block] in shared memory and
/// [carries][B][H] in the workspace between launches.
FUSED_RNN_HD int64_t partial_index(const RecurrenceGeometry& g, int wk, int row, int column) {
  return (int64_t{wk} * g.rows_per_block + row) * g.partial_row_stride + column;
}

/// The product value of block row `row`, batch column `column`: the warps' partial sums added in
/// warp order (the same order on every call: deterministic).
template <typename Accumulator>
FUSED_RNN_HD Accumulator sum_partials(const Accumulator* partials, const RecurrenceGeometry& g, int row, int column) {
  Accumulator sum(0);
  for (int wk = 0; wk < g.warps_k; ++wk) {
    sum += partials[partial_index(g, wk, row, column)];
  }
  return sum;
}

FUSED_RNN_HD int64_t shared_carry_index(const RecurrenceGeometry& g, int c, int u, int r) {
  return (int64_t{c} * g.units_per_block + u) * g.batch_per_block + r;
}

FUSED_RNN_HD int64_t workspace_carry_index(const RecurrenceGeometry& g, int c, int64_t row, int64_t unit) {
  return (c * g.batch + row) * g.hidden + unit;
}

/// Copies the carried state of a block's pairs between the workspace and shared memory, element
/// `first`, `first + stride`, ... (the kernel: a thread's share; the host tests: all of it).
template <typename Accumulator>
FUSED_RNN_HD void move_carries(const RecurrenceGeometry& g, const BlockSlice& slice, Accumulator* shared,
                               Accumulator* workspace, bool to_shared, int first, int stride) {
  const int pairs = slice.units * slice.rows;
  for (int i = first; i < g.carries * pairs; i += stride) {
    const int c = i / pairs, u = i / slice.rows % slice.units, r = i % slice.rows;
    Accumulator& in_shared = shared[shared_carry_index(g, c, u, r)];
    Accumulator& in_workspace = workspace[workspace_carry_index(g, c, slice.row0 + r, slice.unit0 + u)];
    if (to_shared) {
      in_shared = in_workspace;
    } else {
      in_workspace = in_shared;
    }
  }
}

/// The op's tensors and the workspace of one forward call (shapes: recurrence_params.h).
template <typename Cell, Math M>
struct ForwardArgs {
  using Storage = typename MathTypes<M>::Storage;
  using Operand = typename MathTypes<M>::Operand;
  using Accumulator = typename MathTypes<M>::Accumulator;
  Cell cell;
  bool projected;
  const Storage* xw;
  const Storage* w_hh;
  const Storage* b_hn;  // GRU, or null
  const Storage* h0;
  const Storage* c0;  // LSTM
  const int64_t* lengths;
  Storage* hs;
  Storage* h_n;
  Storage* c_n;
  Accumulator* cs;             // null: not saved
  Storage* gates;              // null: not saved
  Accumulator* projection;     // with a projection: [B, H], o * tanh(c) of the step
  Operand* ring;               // [2][batch_pad][k_pad]
  Operand* packed;             // [unit_slices][fragments_per_slice][fragment elements]
  Accumulator* carries;        // [carries][B][H]
  int64_t ring_slot;           // elements of one ring slot
};

template <typename Cell, Math M>
struct BackwardArgs {
  using Storage = typename MathTypes<M>::Storage;
  using Operand = typename MathTypes<M>::Operand;
  using Accumulator = typename MathTypes<M>::Accumulator;
  Cell cell;
  bool projected;
  const Storage* grad_hs;
  const Storage* grad_h_n;
  const Storage* grad_c_n;  // LSTM
  const Storage* w_hh;
  const Storage* h0;
  const Storage* c0;  // LSTM
  const int64_t* lengths;
  const Storage* hs;
  const Accumulator* cs;  // LSTM
  const Storage* gates;   // LSTM, GRU
  const Accumulator* projection;  // with a projection: [B, H], the gradient of o * tanh(c)
  Storage* dxw;
  Storage* d_hn;  // GRU
  Storage* dh0;
  Storage* dc0;  // LSTM
  Operand* ring;
  Operand* packed;
  Accumulator* carries;
  int64_t ring_slot;
};

template <typename CellT, Math M>
struct ForwardPass {
  using Cell = CellT;
  using Args = ForwardArgs<Cell, M>;
  using Storage = typename Args::Storage;
  using Operand = typename Args::Operand;
  using Accumulator = typename Args::Accumulator;
  static constexpr Math kMath = M;
  static constexpr Direction kDirection = Direction::kForward;
  static constexpr int kGates = Cell::kGates;
  static constexpr int kProducts = kGates;  // product values per pair
  static constexpr bool kLstm = Cell::kKind == CellKind::kLstm;
  static constexpr bool kGru = Cell::kKind == CellKind::kGru;

  struct Inputs {
    Accumulator x[kGates];
    Accumulator b_hn;
  };

  static FUSED_RNN_HD int64_t phase_count(const Args&, const RecurrenceGeometry& g) { return g.steps; }
  static FUSED_RNN_HD bool has_product(const Args&, const RecurrenceGeometry&, int64_t) { return true; }
  static FUSED_RNN_HD const Operand* product_source(const Args& a, int64_t phase) {
    return a.ring + (phase % 2) * a.ring_slot;
  }
  /// The block row of product value `index` (gate) of unit u: gate-major.
  static FUSED_RNN_HD int product_row(const RecurrenceGeometry& g, int index, int u) {
    return index * g.units_per_block + u;
  }

  /// W_hh[gate * H + unit, k] for packed position p of unit slice `slice` (0 outside W_hh).
  static FUSED_RNN_HD Operand packed_weight(const Args& a, const RecurrenceGeometry& g, int64_t slice,
                                            WeightPosition p) {
    const int64_t gate = p.row / g.units_per_block;
    const int64_t unit = slice * g.units_per_block + p.row % g.units_per_block;
    if (gate >= kGates || unit >= g.hidden || p.k >= g.k) {
      return to_operand<M>(Accumulator(0));
    }
    return to_operand<M>(to_accumulator(a.w_hh[(gate * g.hidden + unit) * g.state + p.k]));
  }

  /// Carried value `c` (0: h, 1: LSTM c) before step 0.
  static FUSED_RNN_HD Accumulator initial_carry(const Args& a, const RecurrenceGeometry& g, int c,
                                                int64_t row, int64_t unit) {
    if (c == 1) {
      return to_accumulator(a.c0[row * g.hidden + unit]);
    }
    return a.projected ? Accumulator(0) : to_accumulator(a.h0[row * g.state + unit]);
  }

  /// Element (row, k) of exchange slot 0: h0 (zero-padded beyond B and P).
  static FUSED_RNN_HD Operand initial_exchange(const Args& a, const RecurrenceGeometry& g, int64_t row, int64_t k) {
    return row < g.batch && k < g.state ? to_operand<M>(to_accumulator(a.h0[row * g.state + k])) : to_operand<M>(Accumulator(0));
  }

  static FUSED_RNN_HD int64_t gate_index(const RecurrenceGeometry& g, int64_t t, int64_t row, int gate,
                                         int64_t unit, int width) {
    return (t * g.batch + row) * (width * g.hidden) + gate * g.hidden + unit;
  }

  static FUSED_RNN_HD Inputs load(const Args& a, const RecurrenceGeometry& g, int64_t t, int64_t unit,
                                  int64_t row) {
    Inputs in;
    for (int gate = 0; gate < kGates; ++gate) {
      in.x[gate] = to_accumulator(load_input(a.xw + gate_index(g, t, row, gate, unit, kGates)));
    }
    in.b_hn = (kGru && a.b_hn != nullptr) ? to_accumulator(load_input(a.b_hn + unit)) : Accumulator(0);
    return in;
  }

  static FUSED_RNN_HD void prefetch(const Args& a, const RecurrenceGeometry& g, int64_t t, int64_t unit,
                                    int64_t row) {
    if (t < g.steps) {
      for (int gate = 0; gate < kGates; ++gate) {
        prefetch_l2(a.xw + gate_index(g, t, row, gate, unit, kGates));
      }
    }
  }

  /// Step t of one pair, given W_hh h[t-1] for its gates; `carry` points at its carried h, with
  /// LSTM c at carry[carry_stride].
  static FUSED_RNN_HD void finish(const Args& a, const RecurrenceGeometry& g, int64_t t, int64_t unit,
                                  int64_t row, const Inputs& in, const Accumulator (&product)[kProducts],
                                  Accumulator* carry, int64_t carry_stride) {
    const bool live = is_live(a.lengths, row, t);
    const Accumulator h_prev = carry[0];
    const Accumulator c_prev = kLstm ? carry[carry_stride] : Accumulator(0);
    ForwardValues<Accumulator> v{};
    if (live) {
      v = a.cell.forward(in.x, product, h_prev, c_prev, in.b_hn);
    }
    const int64_t at = (t * g.batch + row) * g.hidden + unit;
    if (a.gates != nullptr) {
      for (int gate = 0; gate < 4; ++gate) {
        a.gates[gate_index(g, t, row, gate, unit, 4)] = from_accumulator<Storage>(live ? v.saved[gate] : Accumulator(0));
      }
    }
    if (kLstm) {
      if (a.cs != nullptr) {
        a.cs[at] = live ? v.c : Accumulator(0);
      }
      if (live) {
        carry[carry_stride] = v.c;
      }
      if (t == g.steps - 1) {
        a.c_n[row * g.hidden + unit] = from_accumulator<Storage>(carry[carry_stride]);
      }
    }
    if (a.projected) {
      a.projection[row * g.hidden + unit] = live ? v.h : Accumulator(0);
      return;
    }
    const Storage h = from_accumulator<Storage>(v.h);
    a.hs[at] = live ? h : from_accumulator<Storage>(Accumulator(0));
    if (live) {
      carry[0] = to_accumulator(h);
    }
    a.ring[((t + 1) % 2) * a.ring_slot + row * g.k_pad + unit] = to_operand<M>(carry[0]);
    if (t == g.steps - 1) {
      a.h_n[row * g.hidden + unit] = from_accumulator<Storage>(carry[0]);
    }
  }
};

template <typename CellT, Math M>
struct BackwardPass {
  using Cell = CellT;
  using Args = BackwardArgs<Cell, M>;
  using Storage = typename Args::Storage;
  using Operand = typename Args::Operand;
  using Accumulator = typename Args::Accumulator;
  static constexpr Math kMath = M;
  static constexpr Direction kDirection = Direction::kBackward;
  static constexpr int kGates = Cell::kGates;
  static constexpr int kProducts = 1;
  static constexpr bool kLstm = Cell::kKind == CellKind::kLstm;
  static constexpr bool kGru = Cell::kKind == CellKind::kGru;

  struct Inputs {
    Accumulator grad;  // grad_hs[t] (projection: the gradient of o * tanh(c))
    SavedValues<Accumulator> saved;
  };

  static FUSED_RNN_HD int64_t phase_count(const Args& a, const RecurrenceGeometry& g) {
    return a.projected ? g.steps : g.steps + 1;
  }
  static FUSED_RNN_HD bool has_product(const Args& a, const RecurrenceGeometry&, int64_t phase) {
    return !a.projected && phase > 0;
  }
  static FUSED_RNN_HD const Operand* product_source(const Args& a, int64_t phase) {
    return a.ring + ((phase + 1) % 2) * a.ring_slot;
  }
  static FUSED_RNN_HD int product_row(const RecurrenceGeometry&, int, int u) { return u; }

  /// (W_hh^T)[unit, r] = W_hh[r, unit] for packed position p (row = unit in the slice, k = r).
  static FUSED_RNN_HD Operand packed_weight(const Args& a, const RecurrenceGeometry& g, int64_t slice,
                                            WeightPosition p) {
    const int64_t unit = slice * g.units_per_block + p.row;
    if (p.row >= g.units_per_block || unit >= g.hidden || p.k >= g.k) {
      return to_operand<M>(Accumulator(0));
    }
    return to_operand<M>(to_accumulator(a.w_hh[p.k * g.state + unit]));
  }

  /// Carried value `c` (0: dh, 1: LSTM dc) before the last step.
  static FUSED_RNN_HD Accumulator initial_carry(const Args& a, const RecurrenceGeometry& g, int c,
                                                int64_t row, int64_t unit) {
    if (c == 1) {
      return to_accumulator(a.grad_c_n[row * g.hidden + unit]);
    }
    return a.projected ? Accumulator(0) : to_accumulator(a.grad_h_n[row * g.hidden + unit]);
  }

  static FUSED_RNN_HD Operand initial_exchange(const Args&, const RecurrenceGeometry&, int64_t, int64_t) {
    return to_operand<M>(Accumulator(0));
  }

  static FUSED_RNN_HD int64_t gate_index(const RecurrenceGeometry& g, int64_t t, int64_t row, int gate,
                                         int64_t unit, int width) {
    return (t * g.batch + row) * (width * g.hidden) + gate * g.hidden + unit;
  }

  /// What the pointwise stage of step t reads for one pair.
  enum Input { kGrad, kGate0, kState = kGate0 + 4, kStatePrev };

  /// Calls use(input, address) for each input of step t of one pair.
  template <typename Use>
  static FUSED_RNN_HD void visit_inputs(const Args& a, const RecurrenceGeometry& g, int64_t t, int64_t unit,
                                        int64_t row, Use&& use) {
    const int64_t at = (t * g.batch + row) * g.hidden + unit;
    const int64_t step = g.batch * g.hidden;
    if (a.projected) {
      use(kGrad, a.projection + row * g.hidden + unit);
    } else {
      use(kGrad, a.grad_hs + at);
    }
    if constexpr (Cell::kKind == CellKind::kRnn) {
      use(kState, a.hs + at);
    } else {
      for (int gate = 0; gate < 4; ++gate) {
        use(kGate0 + gate, a.gates + gate_index(g, t, row, gate, unit, 4));
      }
      if constexpr (kLstm) {
        use(kState, a.cs + at);
        if (t > 0) {
          use(kStatePrev, a.cs + at - step);
        } else {
          use(kStatePrev, a.c0 + row * g.hidden + unit);
        }
      } else if (t > 0) {
        use(kStatePrev, a.hs + at - step);
      } else {
        use(kStatePrev, a.h0 + row * g.hidden + unit);
      }
    }
  }

  static FUSED_RNN_HD Inputs load(const Args& a, const RecurrenceGeometry& g, int64_t phase, int64_t unit,
                                  int64_t row) {
    Inputs in{};
    const int64_t t = g.steps - 1 - phase;
    if (t >= 0) {
      visit_inputs(a, g, t, unit, row, [&in](int input, auto address) {
        const Accumulator value = to_accumulator(load_input(address));
        if (input == kGrad) {
          in.grad = value;
        } else if (input == kState) {
          in.saved.state = value;
        } else if (input == kStatePrev) {
          in.saved.state_prev = value;
        } else {
          in.saved.gates[input - kGate0] = value;
        }
      });
    }
    return in;
  }

  static FUSED_RNN_HD void prefetch(const Args& a, const RecurrenceGeometry& g, int64_t phase, int64_t unit,
                                    int64_t row) {
    const int64_t t = g.steps - 1 - phase;
    if (t >= 0) {
      visit_inputs(a, g, t, unit, row, [](int, auto address) { prefetch_l2(address); });
    }
  }

  /// Phase `phase` of one pair, given (d_gates[t+1] W_hh)[row, unit] when the phase has a
  /// product; `carry` points at its carried dh, with LSTM dc at carry[carry_stride].
  static FUSED_RNN_HD void finish(const Args& a, const RecurrenceGeometry& g, int64_t phase, int64_t unit,
                                  int64_t row, const Inputs& in, const Accumulator (&product)[kProducts],
                                  Accumulator* carry, int64_t carry_stride) {
    const int64_t t = g.steps - 1 - phase;
    Accumulator dh = carry[0];
    if (has_product(a, g, phase) && is_live(a.lengths, row, t + 1)) {
      dh += product[0];
    }
    if (t < 0) {
      a.dh0[row * g.hidden + unit] = from_accumulator<Storage>(dh);
      return;
    }
    const bool live = is_live(a.lengths, row, t);
    const Accumulator dc = kLstm ? carry[carry_stride] : Accumulator(0);
    BackwardValues<Accumulator> v{};
    if (live) {
      v = a.cell.backward(a.projected ? in.grad : dh + in.grad, dc, in.saved);
    }
    for (int gate = 0; gate < kGates; ++gate) {
      a.dxw[gate_index(g, t, row, gate, unit, kGates)] = from_accumulator<Storage>(live ? v.dx[gate] : Accumulator(0));
      if (!a.projected) {
        a.ring[(phase % 2) * a.ring_slot + row * g.k_pad + gate * g.hidden + unit] =
            to_operand<M>(live ? v.dhidden[gate] : Accumulator(0));
      }
    }
    if (kGru) {
      a.d_hn[(t * g.batch + row) * g.hidden + unit] = from_accumulator<Storage>(live ? v.dhidden[2] : Accumulator(0));
    }
    carry[0] = live ? v.local_dh : dh;
    if (kLstm) {
      carry[carry_stride] = live ? v.dc : dc;
      if (t == 0) {
        a.dc0[row * g.hidden + unit] = from_accumulator<Storage>(carry[carry_stride]);
      }
    }
  }
};

/// Phase 0's setup of the workspace, element `first`, `first + stride`, ...: the carried state
/// before the first phase and (forward) the h0 part of exchange slot 0, which is otherwise zero.
template <typename Pass>
FUSED_RNN_HD void prepare_workspace(const typename Pass::Args& a, const RecurrenceGeometry& g, int64_t first,
                                    int64_t stride) {
  const int64_t carried = g.carries * g.batch * g.hidden;
  for (int64_t i = first; i < carried; i += stride) {
    a.carries[i] = Pass::initial_carry(a, g, static_cast<int>(i / (g.batch * g.hidden)), i / g.hidden % g.batch,
                                       i % g.hidden);
  }
  if constexpr (Pass::kDirection == Direction::kForward) {
    for (int64_t i = first; i < g.batch * g.state; i += stride) {
      const int64_t row = i / g.state, k = i % g.state;
      a.ring[row * g.k_pad + k] = Pass::initial_exchange(a, g, row, k);
    }
  }
}

/// The packed weight slices of every unit slice, element `first`, `first + stride`, ...
template <typename Pass>
FUSED_RNN_HD void pack_weights(const typename Pass::Args& a, const RecurrenceGeometry& g, int64_t first,
                               int64_t stride) {
  const int64_t per_slice = g.fragments_per_slice * fragment_elements(Pass::kMath);
  for (int64_t i = first; i < g.unit_slices * per_slice; i += stride) {
    a.packed[i] = Pass::packed_weight(a, g, i / per_slice, packed_weight_position<Pass::kMath>(g, i % per_slice));
  }
}

}  // namespace fused_rnn::cuda
