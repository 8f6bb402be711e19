"""Vanilla RNN recurrence (tanh or relu): h[t] = act(xw[t] + h[t-1] @ W_hh^T), forward and backward.

Program (i, j) owns hidden units [i*BLOCK_H, (i+1)*BLOCK_H) of batch rows [j*BLOCK_B, ...). The
forward exchanges h through a double-buffered state `h_buf [2, B, H]` (step t reads slot t % 2 and
writes slot (t+1) % 2, so one barrier per step suffices); the backward exchanges the gate gradients
through `dxw` itself (see kernels.launch for the modes).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fused_rnn import ops

from .barrier import grid_barrier
from .checks import check_dtype, check_rnn_backward_args
from .launch import block_size, plan_launch, run_phases
from .tiles import gate_columns_tile, gate_rows_tile, row_lengths, tanh, tile_offsets


@triton.jit
def rnn_forward_kernel(
    xw, w_hh, h_buf, lengths, hs,  # [T, B, H], [H, H], [2, B, H], [B] or None, [T, B, H]
    T, B, H,
    barrier, k_start, k_stop,
    RELU: tl.constexpr, HAS_LENGTHS: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    # Stage 1: this program's units and rows; its slice of W_hh, loaded once for every step.
    units = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    k = tl.arange(0, BLOCK_K)
    unit_mask, row_mask, k_mask = units < H, rows < B, k < H
    own_mask = row_mask[:, None] & unit_mask[None, :]
    full_mask = row_mask[:, None] & k_mask[None, :]
    own = tile_offsets(rows, H, units)  # [BLOCK_B, BLOCK_H] in a [B, H] plane
    full = tile_offsets(rows, H, k)  # [BLOCK_B, BLOCK_K] in a [B, H] plane
    row_length = row_lengths(lengths, rows, row_mask, T, HAS_LENGTHS)
    w = gate_rows_tile(w_hh, 0, units, unit_mask, k, k_mask, H, H, DOT_DTYPE)

    for t in range(k_start, k_stop):
        plane = tl.cast(t, tl.int64) * B * H
        h_read = h_buf + tl.cast(t % 2, tl.int64) * B * H
        h_write = h_buf + tl.cast((t + 1) % 2, tl.int64) * B * H
        # Stage 2: recurrent GEMM over the whole previous state.
        h_prev = tl.load(h_read + full, mask=full_mask, other=0.0, cache_modifier=".cg")
        pre = tl.load(xw + plane + own, mask=own_mask, other=0.0).to(tl.float32)
        pre += tl.dot(h_prev.to(DOT_DTYPE), w, input_precision=PRECISION)
        # Stage 3: activation; rows past their length keep their state and emit zeros.
        if RELU:
            h_new = tl.maximum(pre, 0.0)
        else:
            h_new = tanh(pre)
        live = (t < row_length)[:, None]
        h_old = tl.load(h_read + own, mask=own_mask, other=0.0, cache_modifier=".cg")
        tl.store(hs + plane + own, tl.where(live, h_new, 0.0).to(hs.dtype.element_ty), mask=own_mask)
        tl.store(h_write + own, tl.where(live, h_new.to(h_old.dtype), h_old), mask=own_mask)
        # Stage 4: every program has written h[t] before any reads it.
        if PERSISTENT:
            if t + 1 < k_stop:
                grid_barrier(barrier, tl.num_programs(0) * tl.num_programs(1) * (t + 1 - k_start))


@triton.jit
def rnn_backward_kernel(
    grad_hs, w_hh, lengths, hs, dxw, dh_state,  # [T, B, H], [H, H], [B], [T, B, H], [T, B, H], [B, H] f32
    T, B, H,
    barrier, k_start, k_stop,
    RELU: tl.constexpr, HAS_LENGTHS: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    # Phase p (0..T) first folds the gate gradients of step T-p (written by every program in phase
    # p-1) into dh, then produces the gate gradients of step T-1-p for this program's units.
    # Stage 1: units, rows; this program's columns of W_hh, loaded once; dh carried in registers.
    units = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    k = tl.arange(0, BLOCK_K)
    unit_mask, row_mask, k_mask = units < H, rows < B, k < H
    own_mask = row_mask[:, None] & unit_mask[None, :]
    full_mask = row_mask[:, None] & k_mask[None, :]
    own = tile_offsets(rows, H, units)
    full = tile_offsets(rows, H, k)
    row_length = row_lengths(lengths, rows, row_mask, T, HAS_LENGTHS)
    w = gate_columns_tile(w_hh, 0, k, k_mask, units, unit_mask, H, H, DOT_DTYPE)
    dh = tl.load(dh_state + own, mask=own_mask, other=0.0)

    for phase in range(k_start, k_stop):
        # Stage 2: dh[t-1] = d_pre[t] @ W_hh on rows live at t (d_pre is zero on the others).
        if phase > 0:
            done = T - phase
            d_pre_all = tl.load(dxw + tl.cast(done, tl.int64) * B * H + full, mask=full_mask, other=0.0, cache_modifier=".cg")
            carried = tl.dot(d_pre_all.to(DOT_DTYPE), w, input_precision=PRECISION)
            dh = tl.where((done < row_length)[:, None], dh + carried, dh)
        # Stage 3: gate gradient of step t through the activation (its derivative from h[t]).
        if phase < T:
            t = T - 1 - phase
            plane = tl.cast(t, tl.int64) * B * H
            live = (t < row_length)[:, None]
            grad = tl.load(grad_hs + plane + own, mask=own_mask, other=0.0).to(tl.float32)
            g = dh + tl.where(live, grad, 0.0)
            h = tl.load(hs + plane + own, mask=own_mask, other=0.0).to(tl.float32)
            if RELU:
                d_pre = tl.where(h > 0, g, 0.0)
            else:
                d_pre = g * (1.0 - h * h)
            tl.store(dxw + plane + own, tl.where(live, d_pre, 0.0).to(dxw.dtype.element_ty), mask=own_mask)
            dh = tl.where(live, 0.0, dh)
        # Stage 4: every program has written d_pre[t] before any folds it.
        if PERSISTENT:
            if phase + 1 < k_stop:
                grid_barrier(barrier, tl.num_programs(0) * tl.num_programs(1) * (phase + 1 - k_start))

    tl.store(dh_state + own, dh, mask=own_mask)


def rnn_forward(
    xw: Tensor, w_hh: Tensor, h0: Tensor, lengths: Optional[Tensor], relu: bool
) -> tuple[Tensor, Tensor]:
    """xw [T, B, H], w_hh [H, H], h0 [B, H], lengths [B] -> hs [T, B, H], h_n [B, H].

    Saved for backward: hs only, B*H*e bytes per time step (e = element size of xw's dtype).
    """
    ops.check_rnn_args(xw, w_hh, h0, lengths)
    check_dtype("xw", xw)
    xw, w_hh = xw.contiguous(), w_hh.contiguous()
    steps, batch, hidden = xw.shape
    plan = plan_launch(batch, hidden, hidden, xw)
    hs = torch.empty_like(xw)
    h_buf = xw.new_empty(2, batch, hidden)
    h_buf[0].copy_(h0)
    run_phases(
        rnn_forward_kernel,
        plan,
        steps,
        (xw, w_hh, h_buf, lengths, hs, steps, batch, hidden),
        {"RELU": relu, "HAS_LENGTHS": lengths is not None, "BLOCK_K": block_size(hidden)},
    )
    return hs, h_buf[steps % 2].clone()


def rnn_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    relu: bool,
) -> tuple[Tensor, Tensor]:
    """grad_hs [T, B, H], grad_h_n [B, H] -> dxw [T, B, H], dh0 [B, H]."""
    check_rnn_backward_args(grad_hs, grad_h_n, w_hh, h0, lengths, hs)
    grad_hs, w_hh, hs = grad_hs.contiguous(), w_hh.contiguous(), hs.contiguous()
    steps, batch, hidden = hs.shape
    plan = plan_launch(batch, hidden, hidden, hs)
    dxw = torch.empty_like(hs)
    dh_state = grad_h_n.to(torch.float32, copy=True).contiguous()
    run_phases(
        rnn_backward_kernel,
        plan,
        steps + 1,
        (grad_hs, w_hh, lengths, hs, dxw, dh_state, steps, batch, hidden),
        {"RELU": relu, "HAS_LENGTHS": lengths is not None, "BLOCK_K": block_size(hidden)},
    )
    return dxw, dh_state.to(h0.dtype)
