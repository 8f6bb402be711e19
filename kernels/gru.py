"""GRU recurrence (torch.nn gate order r, z, n; b_hn inside r * (W_hn h + b_hn)), forward and backward.

Program (i, j) owns hidden units U = [i*BLOCK_H, (i+1)*BLOCK_H) of batch rows [j*BLOCK_B, ...) and
all three gate rows of those units. The forward exchanges h through a double-buffered state
`h_buf [2, B, H]`; the backward exchanges the hidden-side gate gradients through `dxw` (r, z) and
`d_hn` (see kernels.launch for the modes).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fused_rnn import ops

from .barrier import grid_barrier
from .checks import check_dtype, check_gru_backward_args
from .launch import block_size, plan_launch, run_phases
from .tiles import gate_columns_tile, gate_rows_tile, row_lengths, tanh, tile_offsets


@triton.jit
def gru_forward_kernel(
    xw, w_hh, b_hn, h_buf, lengths, hs, gates,
    # [T, B, 3H], [3H, H], [H] or None, [2, B, H], [B] or None, [T, B, H], [T, B, 4H] or None
    # (None unless SAVE)
    T, B, H,
    barrier, k_start, k_stop,
    HAS_BIAS: tl.constexpr, HAS_LENGTHS: tl.constexpr, SAVE: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    # Stage 1: units, rows; the three gates' rows of W_hh for these units, loaded once.
    units = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    k = tl.arange(0, BLOCK_K)
    unit_mask, row_mask, k_mask = units < H, rows < B, k < H
    own_mask = row_mask[:, None] & unit_mask[None, :]
    full_mask = row_mask[:, None] & k_mask[None, :]
    own = tile_offsets(rows, H, units)  # in a [B, H] plane
    input_own = tile_offsets(rows, 3 * H, units)  # gate r in a [B, 3H] plane (+ g*H for gate g)
    gate_own = tile_offsets(rows, 4 * H, units)  # r in a [B, 4H] plane
    full = tile_offsets(rows, H, k)
    row_length = row_lengths(lengths, rows, row_mask, T, HAS_LENGTHS)
    w_r = gate_rows_tile(w_hh, 0, units, unit_mask, k, k_mask, H, H, DOT_DTYPE)
    w_z = gate_rows_tile(w_hh, 1, units, unit_mask, k, k_mask, H, H, DOT_DTYPE)
    w_n = gate_rows_tile(w_hh, 2, units, unit_mask, k, k_mask, H, H, DOT_DTYPE)
    if HAS_BIAS:
        bias = tl.load(b_hn + units, mask=unit_mask, other=0.0).to(tl.float32)[None, :]
    else:
        bias = 0.0

    for t in range(k_start, k_stop):
        step = tl.cast(t, tl.int64) * B
        h_read = h_buf + tl.cast(t % 2, tl.int64) * B * H
        h_write = h_buf + tl.cast((t + 1) % 2, tl.int64) * B * H
        # Stage 2: recurrent GEMM, one dot per gate against the whole previous state.
        h_prev = tl.load(h_read + full, mask=full_mask, other=0.0, cache_modifier=".cg").to(DOT_DTYPE)
        h_old = tl.load(h_read + own, mask=own_mask, other=0.0, cache_modifier=".cg")
        x = xw + step * 3 * H + input_own
        r = tl.load(x, mask=own_mask, other=0.0).to(tl.float32)
        z = tl.load(x + H, mask=own_mask, other=0.0).to(tl.float32)
        n = tl.load(x + 2 * H, mask=own_mask, other=0.0).to(tl.float32)
        r = tl.sigmoid(r + tl.dot(h_prev, w_r, input_precision=PRECISION))
        z = tl.sigmoid(z + tl.dot(h_prev, w_z, input_precision=PRECISION))
        h_n = tl.dot(h_prev, w_n, input_precision=PRECISION) + bias
        # Stage 3: gates and update; rows past their length keep their state and emit zeros.
        n = tanh(n + r * h_n)
        h_new = (1.0 - z) * n + z * h_old.to(tl.float32)
        live = (t < row_length)[:, None]
        if SAVE:
            saved = gates + step * 4 * H + gate_own
            tl.store(saved, tl.where(live, r, 0.0).to(gates.dtype.element_ty), mask=own_mask)
            tl.store(saved + H, tl.where(live, z, 0.0).to(gates.dtype.element_ty), mask=own_mask)
            tl.store(saved + 2 * H, tl.where(live, n, 0.0).to(gates.dtype.element_ty), mask=own_mask)
            tl.store(saved + 3 * H, tl.where(live, h_n, 0.0).to(gates.dtype.element_ty), mask=own_mask)
        tl.store(hs + step * H + own, tl.where(live, h_new, 0.0).to(hs.dtype.element_ty), mask=own_mask)
        tl.store(h_write + own, tl.where(live, h_new.to(h_old.dtype), h_old), mask=own_mask)
        # Stage 4: every program has written h[t] before any reads it.
        if PERSISTENT:
            if t + 1 < k_stop:
                grid_barrier(barrier, tl.num_programs(0) * tl.num_programs(1) * (t + 1 - k_start))


@triton.jit
def gru_backward_kernel(
    grad_hs, w_hh, h0, lengths, hs, gates, dxw, d_hn, dh_state,
    # [T, B, H], [3H, H], [B, H], [B] or None, [T, B, H], [T, B, 4H], [T, B, 3H], [T, B, H],
    # [B, H] f32
    T, B, H,
    barrier, k_start, k_stop,
    HAS_LENGTHS: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    # Phase p (0..T) first folds the hidden-side gate gradients of step T-p (written by every
    # program in phase p-1) into dh, then produces the gate gradients of step T-1-p for its units.
    # Stage 1: units, rows; the three gates' columns of W_hh for these units, loaded once; dh
    # carried in registers.
    units = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    k = tl.arange(0, BLOCK_K)
    unit_mask, row_mask, k_mask = units < H, rows < B, k < H
    own_mask = row_mask[:, None] & unit_mask[None, :]
    full_mask = row_mask[:, None] & k_mask[None, :]
    own = tile_offsets(rows, H, units)
    input_own = tile_offsets(rows, 3 * H, units)
    gate_own = tile_offsets(rows, 4 * H, units)
    input_full = tile_offsets(rows, 3 * H, k)
    full = tile_offsets(rows, H, k)
    row_length = row_lengths(lengths, rows, row_mask, T, HAS_LENGTHS)
    w_r = gate_columns_tile(w_hh, 0, k, k_mask, units, unit_mask, H, H, DOT_DTYPE)
    w_z = gate_columns_tile(w_hh, 1, k, k_mask, units, unit_mask, H, H, DOT_DTYPE)
    w_n = gate_columns_tile(w_hh, 2, k, k_mask, units, unit_mask, H, H, DOT_DTYPE)
    dh = tl.load(dh_state + own, mask=own_mask, other=0.0)

    for phase in range(k_start, k_stop):
        # Stage 2: dh[t-1] = g*z (already in dh) + [d_r, d_z, d_hn][t] @ W_hh on rows live at t.
        if phase > 0:
            done = tl.cast(T - phase, tl.int64) * B
            d_r = tl.load(dxw + done * 3 * H + input_full, mask=full_mask, other=0.0, cache_modifier=".cg")
            d_z = tl.load(dxw + done * 3 * H + input_full + H, mask=full_mask, other=0.0, cache_modifier=".cg")
            d_n = tl.load(d_hn + done * H + full, mask=full_mask, other=0.0, cache_modifier=".cg")
            carried = tl.dot(d_r.to(DOT_DTYPE), w_r, input_precision=PRECISION)
            carried = tl.dot(d_z.to(DOT_DTYPE), w_z, acc=carried, input_precision=PRECISION)
            carried = tl.dot(d_n.to(DOT_DTYPE), w_n, acc=carried, input_precision=PRECISION)
            dh = tl.where((T - phase < row_length)[:, None], dh + carried, dh)
        # Stage 3: gate gradients of step t from the saved gates and the previous state.
        if phase < T:
            t = T - 1 - phase
            step = tl.cast(t, tl.int64) * B
            live = (t < row_length)[:, None]
            grad = tl.load(grad_hs + step * H + own, mask=own_mask, other=0.0).to(tl.float32)
            g = dh + tl.where(live, grad, 0.0)
            saved = gates + step * 4 * H + gate_own
            r = tl.load(saved, mask=own_mask, other=0.0).to(tl.float32)
            z = tl.load(saved + H, mask=own_mask, other=0.0).to(tl.float32)
            n = tl.load(saved + 2 * H, mask=own_mask, other=0.0).to(tl.float32)
            h_n = tl.load(saved + 3 * H, mask=own_mask, other=0.0).to(tl.float32)
            if t > 0:
                h_prev = tl.load(hs + (step - B) * H + own, mask=own_mask, other=0.0).to(tl.float32)
            else:
                h_prev = tl.load(h0 + own, mask=own_mask, other=0.0).to(tl.float32)
            d_n_pre = g * (1.0 - z) * (1.0 - n * n)
            d_z_pre = g * (h_prev - n) * z * (1.0 - z)
            d_r_pre = d_n_pre * h_n * r * (1.0 - r)
            out = dxw + step * 3 * H + input_own
            out_dtype = dxw.dtype.element_ty
            tl.store(out, tl.where(live, d_r_pre, 0.0).to(out_dtype), mask=own_mask)
            tl.store(out + H, tl.where(live, d_z_pre, 0.0).to(out_dtype), mask=own_mask)
            tl.store(out + 2 * H, tl.where(live, d_n_pre, 0.0).to(out_dtype), mask=own_mask)
            tl.store(d_hn + step * H + own, tl.where(live, d_n_pre * r, 0.0).to(out_dtype), mask=own_mask)
            dh = tl.where(live, g * z, dh)
        # Stage 4: every program has written its gate gradients of step t before any folds them.
        if PERSISTENT:
            if phase + 1 < k_stop:
                grid_barrier(barrier, tl.num_programs(0) * tl.num_programs(1) * (phase + 1 - k_start))

    tl.store(dh_state + own, dh, mask=own_mask)


def _run_gru_forward(
    xw: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
    save: bool,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """-> hs, h_n and, when `save`, gates (else None): see gru_forward."""
    ops.check_gru_args(xw, w_hh, b_hn, h0, lengths)
    check_dtype("xw", xw)
    xw, w_hh = xw.contiguous(), w_hh.contiguous()
    steps, batch = xw.shape[:2]
    hidden = h0.shape[1]
    plan = plan_launch(batch, hidden, hidden, xw)
    hs = xw.new_empty(steps, batch, hidden)
    gates = xw.new_empty(steps, batch, 4 * hidden) if save else None
    h_buf = xw.new_empty(2, batch, hidden)
    h_buf[0].copy_(h0)
    run_phases(
        gru_forward_kernel,
        plan,
        steps,
        (xw, w_hh, None if b_hn is None else b_hn.contiguous(), h_buf, lengths, hs, gates, steps, batch, hidden),
        {"HAS_BIAS": b_hn is not None, "HAS_LENGTHS": lengths is not None, "SAVE": save, "BLOCK_K": block_size(hidden)},
    )
    return hs, h_buf[steps % 2].clone(), gates


def gru_forward(
    xw: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """xw [T, B, 3H], w_hh [3H, H], b_hn [H] or None, h0 [B, H]
    -> hs [T, B, H], h_n [B, H], gates [T, B, 4H] (r, z, n, W_hn h[t-1] + b_hn).

    Saved for backward per time step: hs B*H*e and gates B*4H*e bytes (e = element size of xw's
    dtype): 5*B*H*e in all.
    """
    return _run_gru_forward(xw, w_hh, b_hn, h0, lengths, save=True)


def gru_inference(
    xw: Tensor, w_hh: Tensor, b_hn: Optional[Tensor], h0: Tensor, lengths: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    """gru_forward without writing gates: -> hs, h_n."""
    return _run_gru_forward(xw, w_hh, b_hn, h0, lengths, save=False)[:2]


def gru_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    gates: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """grad_hs [T, B, H], grad_h_n [B, H] -> dxw [T, B, 3H], d_hn [T, B, H], dh0 [B, H]
    (d_hn: the gradient of W_hn h[t-1] + b_hn; see fused_rnn.reference.gru_backward)."""
    check_gru_backward_args(grad_hs, grad_h_n, w_hh, b_hn, h0, lengths, hs, gates)
    grad_hs, w_hh, h0 = grad_hs.contiguous(), w_hh.contiguous(), h0.contiguous()
    hs, gates = hs.contiguous(), gates.contiguous()
    steps, batch, hidden = hs.shape
    plan = plan_launch(batch, hidden, hidden, hs)
    dxw = hs.new_empty(steps, batch, 3 * hidden)
    d_hn = torch.empty_like(hs)
    dh_state = grad_h_n.to(torch.float32, copy=True).contiguous()
    run_phases(
        gru_backward_kernel,
        plan,
        steps + 1,
        (grad_hs, w_hh, h0, lengths, hs, gates, dxw, d_hn, dh_state, steps, batch, hidden),
        {"HAS_LENGTHS": lengths is not None, "BLOCK_K": block_size(hidden)},
    )
    return dxw, d_hn, dh_state.to(h0.dtype)
