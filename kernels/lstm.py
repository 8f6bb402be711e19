"""LSTM recurrence (torch.nn gate order i, f, g, o), forward and backward, optional projection.

Program (i, j) owns hidden units U = [i*BLOCK_H, (i+1)*BLOCK_H) of batch rows [j*BLOCK_B, ...) and
all four gate rows of those units; the cell state of U stays in its registers for the whole launch.
The forward exchanges h through a double-buffered state `h_buf [2, B, P]`; the backward exchanges
the gate gradients through `dxw` itself (see kernels.launch for the modes).

Projection (proj_size, w_hr [P, H]): h = (o * tanh(c)) @ W_hr^T mixes every unit, so it is a torch
GEMM between per-step launches of the same kernels (PROJECTED): slower, one launch and a few small
torch ops per step, never persistent.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fused_rnn import ops
from fused_rnn.reference import keep_live, live_rows, zero_dead

from .barrier import grid_barrier
from .checks import check_dtype, check_lstm_backward_args
from .launch import block_size, launch_phase, plan_launch, run_phases
from .tiles import gate_columns_tile, gate_rows_tile, row_lengths, tanh, tile_offsets


@triton.jit
def lstm_forward_kernel(
    xw, w_hh, h_buf, c_state, lengths, hs, cs, gates, unprojected,
    # [T, B, 4H], [4H, P], [2, B, P], [B, H] f32, [B] or None, [T, B, P], [T, B, H] f32, [T, B, 4H]
    # (cs and gates: None unless SAVE), [B, H] f32 (PROJECTED only: o * tanh(c) of the step, for the
    # launcher to project)
    T, B, H, P,
    barrier, k_start, k_stop,
    HAS_LENGTHS: tl.constexpr, PROJECTED: tl.constexpr, SAVE: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    # Stage 1: units, rows; the four gates' rows of W_hh for these units, loaded once.
    units = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    k = tl.arange(0, BLOCK_K)
    unit_mask, row_mask, k_mask = units < H, rows < B, k < P
    own_mask = row_mask[:, None] & unit_mask[None, :]
    full_mask = row_mask[:, None] & k_mask[None, :]
    own = tile_offsets(rows, H, units)  # in a [B, H] plane
    gate_own = tile_offsets(rows, 4 * H, units)  # gate i in a [B, 4H] plane (+ g*H for gate g)
    state_own = tile_offsets(rows, P, units)  # in a [B, P] plane (P == H unless PROJECTED)
    full = tile_offsets(rows, P, k)
    row_length = row_lengths(lengths, rows, row_mask, T, HAS_LENGTHS)
    w_i = gate_rows_tile(w_hh, 0, units, unit_mask, k, k_mask, H, P, DOT_DTYPE)
    w_f = gate_rows_tile(w_hh, 1, units, unit_mask, k, k_mask, H, P, DOT_DTYPE)
    w_g = gate_rows_tile(w_hh, 2, units, unit_mask, k, k_mask, H, P, DOT_DTYPE)
    w_o = gate_rows_tile(w_hh, 3, units, unit_mask, k, k_mask, H, P, DOT_DTYPE)
    c = tl.load(c_state + own, mask=own_mask, other=0.0)

    for t in range(k_start, k_stop):
        step = tl.cast(t, tl.int64) * B
        h_read = h_buf + tl.cast(t % 2, tl.int64) * B * P
        h_write = h_buf + tl.cast((t + 1) % 2, tl.int64) * B * P
        # Stage 2: recurrent GEMM, one dot per gate against the whole previous state.
        h_prev = tl.load(h_read + full, mask=full_mask, other=0.0, cache_modifier=".cg").to(DOT_DTYPE)
        x = xw + step * 4 * H + gate_own
        i = tl.load(x, mask=own_mask, other=0.0).to(tl.float32)
        f = tl.load(x + H, mask=own_mask, other=0.0).to(tl.float32)
        g = tl.load(x + 2 * H, mask=own_mask, other=0.0).to(tl.float32)
        o = tl.load(x + 3 * H, mask=own_mask, other=0.0).to(tl.float32)
        i = tl.sigmoid(i + tl.dot(h_prev, w_i, input_precision=PRECISION))
        f = tl.sigmoid(f + tl.dot(h_prev, w_f, input_precision=PRECISION))
        g = tanh(g + tl.dot(h_prev, w_g, input_precision=PRECISION))
        o = tl.sigmoid(o + tl.dot(h_prev, w_o, input_precision=PRECISION))
        # Stage 3: cell update in float32; rows past their length keep their state, emit zeros.
        c_new = f * c + i * g
        h_new = o * tanh(c_new)
        live = (t < row_length)[:, None]
        if SAVE:
            tl.store(cs + step * H + own, tl.where(live, c_new, 0.0), mask=own_mask)
            saved = gates + step * 4 * H + gate_own
            tl.store(saved, tl.where(live, i, 0.0).to(gates.dtype.element_ty), mask=own_mask)
            tl.store(saved + H, tl.where(live, f, 0.0).to(gates.dtype.element_ty), mask=own_mask)
            tl.store(saved + 2 * H, tl.where(live, g, 0.0).to(gates.dtype.element_ty), mask=own_mask)
            tl.store(saved + 3 * H, tl.where(live, o, 0.0).to(gates.dtype.element_ty), mask=own_mask)
        c = tl.where(live, c_new, c)
        if PROJECTED:
            tl.store(unprojected + own, h_new, mask=own_mask)
        else:
            h_old = tl.load(h_read + state_own, mask=own_mask, other=0.0, cache_modifier=".cg")
            tl.store(hs + step * P + state_own, tl.where(live, h_new, 0.0).to(hs.dtype.element_ty), mask=own_mask)
            tl.store(h_write + state_own, tl.where(live, h_new.to(h_old.dtype), h_old), mask=own_mask)
        # Stage 4: every program has written h[t] before any reads it.
        if PERSISTENT:
            if t + 1 < k_stop:
                grid_barrier(barrier, tl.num_programs(0) * tl.num_programs(1) * (t + 1 - k_start))

    tl.store(c_state + own, c, mask=own_mask)


@triton.jit
def lstm_backward_kernel(
    grad_hs, w_hh, c0, lengths, cs, gates, dxw, dh_state, dc_state, d_unprojected,
    # [T, B, H], [4H, H], [B, H], [B] or None, [T, B, H] f32, [T, B, 4H], [T, B, 4H], [B, H] f32,
    # [B, H] f32, [B, H] f32 (PROJECTED only: the gradient of o * tanh(c) at the step)
    T, B, H,
    barrier, k_start, k_stop,
    HAS_LENGTHS: tl.constexpr, PROJECTED: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    # Phase p (0..T) first folds the gate gradients of step T-p (written by every program in phase
    # p-1) into dh, then produces the gate gradients of step T-1-p for this program's units.
    # PROJECTED: the launcher folds dh (through W_hh and W_hr) and hands in d_unprojected instead.
    # Stage 1: units, rows; the four gates' columns of W_hh for these units, loaded once; dh, dc
    # carried in registers.
    units = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    k = tl.arange(0, BLOCK_K)
    unit_mask, row_mask, k_mask = units < H, rows < B, k < H
    own_mask = row_mask[:, None] & unit_mask[None, :]
    full_mask = row_mask[:, None] & k_mask[None, :]
    own = tile_offsets(rows, H, units)
    gate_own = tile_offsets(rows, 4 * H, units)
    gate_full = tile_offsets(rows, 4 * H, k)
    row_length = row_lengths(lengths, rows, row_mask, T, HAS_LENGTHS)
    dc = tl.load(dc_state + own, mask=own_mask, other=0.0)
    if not PROJECTED:
        w_i = gate_columns_tile(w_hh, 0, k, k_mask, units, unit_mask, H, H, DOT_DTYPE)
        w_f = gate_columns_tile(w_hh, 1, k, k_mask, units, unit_mask, H, H, DOT_DTYPE)
        w_g = gate_columns_tile(w_hh, 2, k, k_mask, units, unit_mask, H, H, DOT_DTYPE)
        w_o = gate_columns_tile(w_hh, 3, k, k_mask, units, unit_mask, H, H, DOT_DTYPE)
        dh = tl.load(dh_state + own, mask=own_mask, other=0.0)

    for phase in range(k_start, k_stop):
        # Stage 2: dh[t-1] = d_gates[t] @ W_hh on rows live at t (d_gates is zero on the others).
        if not PROJECTED:
            if phase > 0:
                done = T - phase
                d_gates = dxw + tl.cast(done, tl.int64) * B * 4 * H + gate_full
                d_i = tl.load(d_gates, mask=full_mask, other=0.0, cache_modifier=".cg").to(DOT_DTYPE)
                d_f = tl.load(d_gates + H, mask=full_mask, other=0.0, cache_modifier=".cg").to(DOT_DTYPE)
                d_g = tl.load(d_gates + 2 * H, mask=full_mask, other=0.0, cache_modifier=".cg").to(DOT_DTYPE)
                d_o = tl.load(d_gates + 3 * H, mask=full_mask, other=0.0, cache_modifier=".cg").to(DOT_DTYPE)
                carried = tl.dot(d_i, w_i, input_precision=PRECISION)
                carried = tl.dot(d_f, w_f, acc=carried, input_precision=PRECISION)
                carried = tl.dot(d_g, w_g, acc=carried, input_precision=PRECISION)
                carried = tl.dot(d_o, w_o, acc=carried, input_precision=PRECISION)
                dh = tl.where((done < row_length)[:, None], dh + carried, dh)
        # Stage 3: gate gradients of step t from the saved activated gates and cell states.
        if phase < T:
            t = T - 1 - phase
            step = tl.cast(t, tl.int64) * B
            live = (t < row_length)[:, None]
            if PROJECTED:
                d_h = tl.load(d_unprojected + own, mask=own_mask, other=0.0)
            else:
                grad = tl.load(grad_hs + step * H + own, mask=own_mask, other=0.0).to(tl.float32)
                d_h = tl.where(live, dh + grad, 0.0)
            saved = gates + step * 4 * H + gate_own
            i = tl.load(saved, mask=own_mask, other=0.0).to(tl.float32)
            f = tl.load(saved + H, mask=own_mask, other=0.0).to(tl.float32)
            g = tl.load(saved + 2 * H, mask=own_mask, other=0.0).to(tl.float32)
            o = tl.load(saved + 3 * H, mask=own_mask, other=0.0).to(tl.float32)
            c = tl.load(cs + step * H + own, mask=own_mask, other=0.0)
            if t > 0:
                c_prev = tl.load(cs + (step - B) * H + own, mask=own_mask, other=0.0)
            else:
                c_prev = tl.load(c0 + own, mask=own_mask, other=0.0).to(tl.float32)
            tanh_c = tanh(c)
            d_c = dc + d_h * o * (1.0 - tanh_c * tanh_c)
            out = dxw + step * 4 * H + gate_own
            out_dtype = dxw.dtype.element_ty
            tl.store(out, tl.where(live, d_c * g * i * (1.0 - i), 0.0).to(out_dtype), mask=own_mask)
            tl.store(out + H, tl.where(live, d_c * c_prev * f * (1.0 - f), 0.0).to(out_dtype), mask=own_mask)
            tl.store(out + 2 * H, tl.where(live, d_c * i * (1.0 - g * g), 0.0).to(out_dtype), mask=own_mask)
            tl.store(out + 3 * H, tl.where(live, d_h * tanh_c * o * (1.0 - o), 0.0).to(out_dtype), mask=own_mask)
            dc = tl.where(live, d_c * f, dc)
            if not PROJECTED:
                dh = tl.where(live, 0.0, dh)
        # Stage 4: every program has written d_gates[t] before any folds it.
        if PERSISTENT:
            if phase + 1 < k_stop:
                grid_barrier(barrier, tl.num_programs(0) * tl.num_programs(1) * (phase + 1 - k_start))

    tl.store(dc_state + own, dc, mask=own_mask)
    if not PROJECTED:
        tl.store(dh_state + own, dh, mask=own_mask)


def _run_lstm_forward(
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """-> hs, h_n, c_n and, when `save`, cs and gates (else None): see lstm_forward."""
    ops.check_lstm_args(xw, w_hh, w_hr, h0, c0, lengths)
    check_dtype("xw", xw)
    xw, w_hh = xw.contiguous(), w_hh.contiguous()
    steps, batch = xw.shape[:2]
    hidden, state = c0.shape[1], h0.shape[1]
    plan = plan_launch(batch, hidden, state, xw, allow_persistent=w_hr is None)
    hs = xw.new_empty(steps, batch, state)
    cs = xw.new_empty(steps, batch, hidden, dtype=torch.float32) if save else None
    gates = torch.empty_like(xw) if save else None
    h_buf = xw.new_empty(2, batch, state)
    h_buf[0].copy_(h0)
    c_state = c0.to(torch.float32, copy=True).contiguous()
    unprojected = None if w_hr is None else xw.new_empty(batch, hidden, dtype=torch.float32)
    args = (xw, w_hh, h_buf, c_state, lengths, hs, cs, gates, unprojected, steps, batch, hidden, state)
    meta = {
        "HAS_LENGTHS": lengths is not None,
        "PROJECTED": w_hr is not None,
        "SAVE": save,
        "BLOCK_K": block_size(state),
    }
    if w_hr is None:
        run_phases(lstm_forward_kernel, plan, steps, args, meta)
    else:
        w_projection = w_hr.to(torch.float32).t()
        for t in range(steps):
            launch_phase(lstm_forward_kernel, plan, t, args, meta)
            projected = unprojected @ w_projection  # [B, P]
            live = live_rows(lengths, t)
            hs[t] = zero_dead(live, projected)
            h_buf[(t + 1) % 2] = keep_live(live, projected.to(xw.dtype), h_buf[t % 2])
    return hs, h_buf[steps % 2].clone(), c_state.to(xw.dtype), cs, gates


def lstm_forward(
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """xw [T, B, 4H], w_hh [4H, P], w_hr [P, H] or None, h0 [B, P], c0 [B, H]
    -> hs [T, B, P], h_n [B, P], c_n [B, H], cs [T, B, H] float32, gates [T, B, 4H].

    Saved for backward per time step: hs B*P*e, cs B*H*4 and gates B*4H*e bytes
    (e = element size of xw's dtype): B*(P*e + 4H + 4H*e) in all.
    """
    return _run_lstm_forward(xw, w_hh, w_hr, h0, c0, lengths, save=True)


def lstm_inference(
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """lstm_forward without writing cs and gates: -> hs, h_n, c_n."""
    return _run_lstm_forward(xw, w_hh, w_hr, h0, c0, lengths, save=False)[:3]


def lstm_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    grad_c_n: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    cs: Tensor,
    gates: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """grad_hs [T, B, P], grad_h_n [B, P], grad_c_n [B, H]
    -> dxw [T, B, 4H], dh0 [B, P], dc0 [B, H], dw_hr [P, H] (shape [0] without projection)."""
    check_lstm_backward_args(grad_hs, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, lengths, hs, cs, gates)
    grad_hs, w_hh, c0 = grad_hs.contiguous(), w_hh.contiguous(), c0.contiguous()
    cs, gates = cs.contiguous(), gates.contiguous()
    steps, batch = hs.shape[:2]
    hidden = c0.shape[1]
    plan = plan_launch(batch, hidden, hidden, hs, allow_persistent=w_hr is None)
    dxw = torch.empty_like(gates)
    dc_state = grad_c_n.to(torch.float32, copy=True).contiguous()
    dh_state = None if w_hr is not None else grad_h_n.to(torch.float32, copy=True).contiguous()
    d_unprojected = None if w_hr is None else hs.new_empty(batch, hidden, dtype=torch.float32)
    args = (grad_hs, w_hh, c0, lengths, cs, gates, dxw, dh_state, dc_state, d_unprojected, steps, batch, hidden)
    meta = {"HAS_LENGTHS": lengths is not None, "PROJECTED": w_hr is not None, "BLOCK_K": block_size(hidden)}
    if w_hr is None:
        run_phases(lstm_backward_kernel, plan, steps + 1, args, meta)
        return dxw, dh_state.to(h0.dtype), dc_state.to(c0.dtype), grad_hs.new_zeros(0)

    w_recurrent, w_projection = w_hh.to(torch.float32), w_hr.to(torch.float32)
    dh = grad_h_n.to(torch.float32)
    d_outputs = hs.new_empty(steps, batch, hs.shape[2], dtype=torch.float32)  # reaching each step's h
    for phase in range(steps):
        t = steps - 1 - phase
        live = live_rows(lengths, t)
        d_outputs[t] = zero_dead(live, dh + zero_dead(live, grad_hs[t].to(torch.float32)))
        torch.mm(d_outputs[t], w_projection, out=d_unprojected)
        launch_phase(lstm_backward_kernel, plan, phase, args, meta)
        dh = keep_live(live, dxw[t].to(torch.float32) @ w_recurrent, dh)
    unprojected = gates[..., 3 * hidden :].to(torch.float32) * torch.tanh(cs)  # [T, B, H]
    dw_hr = torch.einsum("tbp,tbh->ph", d_outputs, unprojected).to(w_hr.dtype)
    return dxw, dh.to(h0.dtype), dc_state.to(c0.dtype), dw_hr
