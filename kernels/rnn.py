"""Vanilla RNN recurrence (tanh or relu): h[t] = act(xw[t] + h[t-1] @ W_hh^T), forward and backward.

Program (i, j) owns hidden units U = [i*BLOCK_U, (i+1)*BLOCK_U) (BLOCK_U rows of W_hh, the MMA's
M) of batch columns [j*BLOCK_B, (j+1)*BLOCK_B). The forward exchanges h through the double-buffered
state `h_buf [2, B, H]` (step t reads slot t % 2, writes slot (t+1) % 2); the backward
(W_t = W_hh^T, dh[t-1]^T = W_t[U] . d_pre[t]^T) folds the pre-activation gradients of step T-p
into dh and produces those of step T-1-p in phase p, exchanged through `d_state [2, B, H]`.
kernels.product has the recurrent product, kernels.launch the modes, kernels.plan the tiles.

Per-step cost, B16 H768 bfloat16 on an H100 (kernels.plan's plan and step_estimate_us; estimates):
48 programs of 16 units, 4 warps splitting K = 768 (chunks 512 + 256), W resident in shared memory
(16 x 768 x 2 = 24 KB per program). Per program and step: h[t-1] from L2 as tagged words
(kernels.exchange), 16 x 768 x 4 = 48 KB (2.4 MB over the grid); MMA 16 x 768 x 16 = 197 K MAC =
96 HMMA.m16n8k16; xw 512 B in, h 1 KB out; no barrier. Estimate: dependent L2 round trip ~0.7 us
+ shared-memory traffic 0.44 us (the largest of L2, MMA and shared) + ~0.1 us = ~1.24 us/step,
forward and backward alike.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fused_rnn import ops
from fused_rnn.reference import accumulation_dtype

from . import launch
from .barrier import arrive, wait
from .checks import check_dtype, check_rnn_backward_args
from .exchange import exchange_buffer, load_state, pack, store_state, unpack
from .product import recurrent_product, resident_weights
from .tiles import program_columns, program_units, tanh


@triton.jit(do_not_specialize=["T", "k_start", "k_stop", "first_block"])
def rnn_forward_kernel(
    xw, w_hh, h_buf, lengths, hs,  # [T, B, H], [H, H], [2, B, H], [B] or None, [T, B, H]
    T, B, H,
    barrier, k_start, k_stop, first_block,
    RELU: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, SPLIT: tl.constexpr, RESIDENT: tl.constexpr,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr, FMA: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, TAGGED: tl.constexpr,
):
    # Stage 1: this program's columns and units; its rows of W_hh.
    cols, col_valid, col_length = program_columns(lengths, B, T, first_block, HAS_LENGTHS, BLOCK_B)
    units, unit_valid, own_mask, own = program_units(H, cols, col_valid, BLOCK_U)  # own: in [B, H]
    w0, w1, w2 = resident_weights(w_hh, units, unit_valid, H, BLOCK_U, SPLIT, K0, K1, K2, RESIDENT, DOT)

    VALUE: tl.constexpr = hs.dtype.element_ty
    for t in tl.range(k_start, k_stop, num_stages=1):
        if t > k_start:
            wait(barrier, t - k_start, TAGGED)
        plane = tl.cast(t, tl.int64) * B * H
        h_read = h_buf + tl.cast(t % 2, tl.int64) * B * H
        h_write = h_buf + tl.cast((t + 1) % 2, tl.int64) * B * H
        # Stage 2: recurrent product against the whole previous state (written by phase t-1).
        pre = recurrent_product(
            w0, w1, w2, w_hh, units, unit_valid, h_read, cols, col_valid, H, t, BLOCK_U, BLOCK_B,
            SPLIT, K0, K1, K2, RESIDENT, BLOCK_K, STAGES, FMA, DOT, PRECISION, ACC, TAGGED, VALUE,
        )
        pre += tl.load(xw + plane + own, mask=own_mask, other=0.0).to(ACC)
        # Stage 3: activation; columns past their length keep their state and emit zeros.
        if RELU:
            h_new = tl.maximum(pre, 0.0)
        else:
            h_new = tanh(pre)
        live = (t < col_length)[None, :]
        # Stage 4: exchange h, arrive, then the step's output.
        h_old = load_state(h_read + own, own_mask, t, TAGGED, VALUE).to(ACC)
        store_state(h_write + own, tl.where(live, h_new, h_old), own_mask, t + 1, TAGGED, VALUE)
        if t + 1 < k_stop:
            arrive(barrier, TAGGED)
        tl.store(hs + plane + own, tl.where(live, h_new, 0.0).to(hs.dtype.element_ty), mask=own_mask)


@triton.jit(do_not_specialize=["T", "k_start", "k_stop", "first_block"])
def rnn_backward_kernel(
    grad_hs, w_t, lengths, hs, dxw, d_state, dh_state,
    # [T, B, H], W_hh^T [H, H], [B] or None, [T, B, H], [T, B, H], [2, B, H], [B, H] ACC
    T, B, H,
    barrier, k_start, k_stop, first_block,
    RELU: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, SPLIT: tl.constexpr, RESIDENT: tl.constexpr,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr, FMA: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, TAGGED: tl.constexpr,
):
    # Stage 1: columns, units; this program's rows of W_hh^T; dh carried in registers.
    cols, col_valid, col_length = program_columns(lengths, B, T, first_block, HAS_LENGTHS, BLOCK_B)
    units, unit_valid, own_mask, own = program_units(H, cols, col_valid, BLOCK_U)  # own: in [B, H]
    w0, w1, w2 = resident_weights(w_t, units, unit_valid, H, BLOCK_U, SPLIT, K0, K1, K2, RESIDENT, DOT)
    dh = tl.load(dh_state + own, mask=own_mask, other=0.0)
    VALUE: tl.constexpr = dxw.dtype.element_ty

    for phase in tl.range(k_start, k_stop, num_stages=1):
        if phase > k_start:
            wait(barrier, phase - k_start, TAGGED)
        t = T - 1 - phase
        # Stage 2: dh[t] += d_pre[t+1] @ W_hh on columns live at t+1 (d_pre is zero elsewhere;
        # phase 0 folds zeros, so that the product, and W's place in shared memory, is unconditional).
        d_read = d_state + tl.cast((phase + 1) % 2, tl.int64) * B * H
        carried = recurrent_product(
            w0, w1, w2, w_t, units, unit_valid, d_read, cols, col_valid, H, phase, BLOCK_U,
            BLOCK_B, SPLIT, K0, K1, K2, RESIDENT, BLOCK_K, STAGES, FMA, DOT, PRECISION, ACC,
            TAGGED, VALUE,
        )
        dh = tl.where((t + 1 < col_length)[None, :], dh + carried, dh)
        # Stage 3: pre-activation gradient of step t (the activation's derivative from h[t]).
        if phase < T:
            plane = tl.cast(t, tl.int64) * B * H
            live = (t < col_length)[None, :]
            grad = tl.load(grad_hs + plane + own, mask=own_mask, other=0.0).to(ACC)
            g = dh + tl.where(live, grad, 0.0)
            h = tl.load(hs + plane + own, mask=own_mask, other=0.0).to(ACC)
            if RELU:
                d_pre = tl.where(h > 0, g, 0.0)
            else:
                d_pre = g * (1.0 - h * h)
            d_pre = tl.where(live, d_pre, 0.0).to(VALUE)
            d_write = d_state + tl.cast(phase % 2, tl.int64) * B * H
            store_state(d_write + own, d_pre, own_mask, phase + 1, TAGGED, VALUE)
            if phase + 1 < k_stop:
                arrive(barrier, TAGGED)
            tl.store(dxw + plane + own, d_pre, mask=own_mask)
            dh = tl.where(live, 0.0, dh)

    tl.store(dh_state + own, dh, mask=own_mask)


def rnn_forward(
    xw: Tensor, w_hh: Tensor, h0: Tensor, lengths: Optional[Tensor], relu: bool
) -> tuple[Tensor, Tensor]:
    """xw [T, B, H], w_hh [H, H], h0 [B, H], lengths [B] -> hs [T, B, H], h_n [B, H].

    Saved for backward: hs only, B*H*e bytes per time step (e = element size of xw's dtype).
    """
    ops.check_rnn_args(xw, w_hh, h0, lengths)
    check_dtype("xw", xw)
    xw, w_hh = ops.contiguous(xw, w_hh)
    steps, batch, hidden = xw.shape
    hs = torch.empty_like(xw)
    h_buf = exchange_buffer((2, batch, hidden), xw.dtype, xw.device)
    h_buf[0] = pack(h0, 0)
    launch.run_phases(
        rnn_forward_kernel,
        launch.plans("rnn", "forward", batch, hidden, hidden, False, xw),
        steps,
        (xw, w_hh, h_buf, lengths, hs, steps, batch, hidden),
        {"RELU": relu, "HAS_LENGTHS": lengths is not None},
        f"rnn forward B={batch} H={hidden} {xw.dtype}",
    )
    return hs, unpack(h_buf[steps % 2], xw.dtype)


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
    grad_hs, hs = ops.contiguous(grad_hs, hs)
    steps, batch, hidden = hs.shape
    dxw = torch.empty_like(hs)
    d_state = exchange_buffer((2, batch, hidden), hs.dtype, hs.device)
    d_state[1] = 0  # what phase 0 folds: zeros, tagged as phase -1's output (kernels.exchange)
    dh_state = grad_h_n.to(accumulation_dtype(hs.dtype), copy=True).contiguous()
    launch.run_phases(
        rnn_backward_kernel,
        launch.plans("rnn", "backward", batch, hidden, hidden, False, hs),
        steps + 1,
        (grad_hs, w_hh.t().contiguous(), lengths, hs, dxw, d_state, dh_state, steps, batch, hidden),
        {"RELU": relu, "HAS_LENGTHS": lengths is not None},
        f"rnn backward B={batch} H={hidden} {hs.dtype}",
    )
    return dxw, dh_state.to(h0.dtype)
