"""GRU recurrence (torch.nn gate order r, z, n; b_hn inside r * (W_hn h + b_hn)), forward and backward.

Program (i, j) owns hidden units U = [i*BLOCK_U, (i+1)*BLOCK_U) of batch columns
[j*BLOCK_B, (j+1)*BLOCK_B) and the three gate rows of those units: the forward product has four
rows per unit (r, z, n and an unused slot, so that the gates split from a power-of-two tile) and
exchanges h through the double-buffered state `h_buf [2, B, H]`. The backward (W_t = W_hh^T
[H, 3H], dh[t-1]^T = W_t[U] . [d_r, d_z, d_hn][t]^T) exchanges the hidden-side gate gradients
through `d_state [2, B, 3H]`. kernels.product has the recurrent product, kernels.launch the modes,
kernels.plan the tiles.

Per-step cost, B16 H768 bfloat16 on an H100 (kernels.plan's plan and step_estimate_us; estimates):
forward 48 programs of 16 units (64 product rows, 48 of them real), 8 warps splitting K = 768, W
resident (96 KB per program): h[t-1] from L2 as tagged words 48 KB per program; MMA 786 K MAC (a
quarter on the unused slot); xw 1.5 KB in, h and 4 saved gates 2.5 KB out; no barrier: ~0.7 +
0.66 + 0.1 = ~1.46 us/step. Backward (K = 3H = 2304, chunks 1024 + 1024 + 256): 144 KB of tagged
gate gradients from L2 per program, ~0.7 + 1.32 + 0.1 = ~2.12 us/step.
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
from .checks import check_dtype, check_gru_backward_args
from .exchange import exchange_buffer, load_state, pack, store_state, unpack
from .lstm import store_gate_tiles
from .product import recurrent_product, resident_weights
from .tiles import gate_rows, plane_tile, program_columns, program_units, split_gates, tanh


@triton.jit(do_not_specialize=["T", "k_start", "k_stop", "first_block"])
def gru_forward_kernel(
    xw, w_hh, b_hn, h_buf, lengths, hs, gates,
    # [T, B, 3H], [3H, H], [H] or None, [2, B, H], [B] or None, [T, B, H], [T, B, 4H] or None
    # (None unless SAVE)
    T, B, H,
    barrier, k_start, k_stop, first_block,
    HAS_BIAS: tl.constexpr, HAS_LENGTHS: tl.constexpr, SAVE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, SPLIT: tl.constexpr, RESIDENT: tl.constexpr,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr, FMA: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, TAGGED: tl.constexpr,
):
    # Stage 1: columns, units, the gate rows of W_hh for these units; b_hn.
    pid = tl.program_id(0)
    cols, col_valid, col_length = program_columns(lengths, B, T, first_block, HAS_LENGTHS, BLOCK_B)
    units, unit_valid, own_mask, own = program_units(H, cols, col_valid, BLOCK_U)  # own: in [B, H]
    input_own = plane_tile(units, cols, 3 * H)  # gate r in a [B, 3H] plane (+ g*H for gate g)
    gate_own = plane_tile(units, cols, 4 * H)  # r in a [B, 4H] plane
    w_rows, w_valid = gate_rows(pid, H, 3, 4, BLOCK_U)
    w0, w1, w2 = resident_weights(w_hh, w_rows, w_valid, H, 4 * BLOCK_U, SPLIT, K0, K1, K2, RESIDENT, DOT)
    if HAS_BIAS:
        bias = tl.load(b_hn + units, mask=unit_valid, other=0.0).to(ACC)[:, None]
    else:
        bias = 0.0

    VALUE: tl.constexpr = hs.dtype.element_ty
    for t in tl.range(k_start, k_stop, num_stages=1):
        if t > k_start:
            wait(barrier, t - k_start, TAGGED)
        step = tl.cast(t, tl.int64) * B
        h_read = h_buf + tl.cast(t % 2, tl.int64) * B * H
        h_write = h_buf + tl.cast((t + 1) % 2, tl.int64) * B * H
        # Stage 2: recurrent product of the three gates' rows against h[t-1] (from phase t-1).
        acc = recurrent_product(
            w0, w1, w2, w_hh, w_rows, w_valid, h_read, cols, col_valid, H, t, 4 * BLOCK_U, BLOCK_B,
            SPLIT, K0, K1, K2, RESIDENT, BLOCK_K, STAGES, FMA, DOT, PRECISION, ACC, TAGGED, VALUE,
        )
        a_r, a_z, a_n, _ = split_gates(acc, BLOCK_U, BLOCK_B)
        # Stage 3: gates and update; columns past their length keep their state and emit zeros.
        h_old = load_state(h_read + own, own_mask, t, TAGGED, VALUE).to(ACC)
        x = xw + step * 3 * H + input_own
        r = tl.sigmoid(tl.load(x, mask=own_mask, other=0.0).to(ACC) + a_r)
        z = tl.sigmoid(tl.load(x + H, mask=own_mask, other=0.0).to(ACC) + a_z)
        h_n = a_n + bias
        n = tanh(tl.load(x + 2 * H, mask=own_mask, other=0.0).to(ACC) + r * h_n)
        h_new = (1.0 - z) * n + z * h_old
        live = (t < col_length)[None, :]
        # Stage 4: exchange h, arrive, then the step's outputs.
        store_state(h_write + own, tl.where(live, h_new, h_old), own_mask, t + 1, TAGGED, VALUE)
        if t + 1 < k_stop:
            arrive(barrier, TAGGED)
        tl.store(hs + step * H + own, tl.where(live, h_new, 0.0).to(hs.dtype.element_ty), mask=own_mask)
        if SAVE:
            gate_type = gates.dtype.element_ty
            store_gate_tiles(
                gates + step * 4 * H + gate_own, H, tl.where(live, r, 0.0).to(gate_type),
                tl.where(live, z, 0.0).to(gate_type), tl.where(live, n, 0.0).to(gate_type),
                tl.where(live, h_n, 0.0).to(gate_type), own_mask,
            )


@triton.jit(do_not_specialize=["T", "k_start", "k_stop", "first_block"])
def gru_backward_kernel(
    grad_hs, w_t, h0, lengths, hs, gates, dxw, d_hn, d_state, dh_state,
    # [T, B, H], W_hh^T [H, 3H], [B, H], [B] or None, [T, B, H], [T, B, 4H], [T, B, 3H], [T, B, H],
    # [2, B, 3H] (d_r, d_z, d_hn exchange), [B, H] ACC
    T, B, H,
    barrier, k_start, k_stop, first_block,
    HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, SPLIT: tl.constexpr, RESIDENT: tl.constexpr,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr, FMA: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, TAGGED: tl.constexpr,
):
    # Phase p folds the hidden-side gate gradients of step T-p (written by every program in phase
    # p-1) into dh, then produces the gate gradients of step T-1-p for this program's units.
    # Stage 1: columns, units; this program's rows of W_hh^T; dh carried in registers.
    cols, col_valid, col_length = program_columns(lengths, B, T, first_block, HAS_LENGTHS, BLOCK_B)
    units, unit_valid, own_mask, own = program_units(H, cols, col_valid, BLOCK_U)  # own: in [B, H]
    input_own = plane_tile(units, cols, 3 * H)
    gate_own = plane_tile(units, cols, 4 * H)
    w0, w1, w2 = resident_weights(w_t, units, unit_valid, 3 * H, BLOCK_U, SPLIT, K0, K1, K2, RESIDENT, DOT)
    dh = tl.load(dh_state + own, mask=own_mask, other=0.0)
    VALUE: tl.constexpr = dxw.dtype.element_ty

    for phase in tl.range(k_start, k_stop, num_stages=1):
        if phase > k_start:
            wait(barrier, phase - k_start, TAGGED)
        t = T - 1 - phase
        # Stage 2: dh[t] = g*z (already in dh) + [d_r, d_z, d_hn][t+1] @ W_hh on columns live at t+1
        # (phase 0 folds zeros, so that the product, and W's place in shared memory, is unconditional).
        d_read = d_state + tl.cast((phase + 1) % 2, tl.int64) * B * 3 * H
        carried = recurrent_product(
            w0, w1, w2, w_t, units, unit_valid, d_read, cols, col_valid, 3 * H, phase, BLOCK_U,
            BLOCK_B, SPLIT, K0, K1, K2, RESIDENT, BLOCK_K, STAGES, FMA, DOT, PRECISION, ACC,
            TAGGED, VALUE,
        )
        dh = tl.where((t + 1 < col_length)[None, :], dh + carried, dh)
        # Stage 3: gate gradients of step t from the saved gates and the previous state.
        if phase < T:
            step = tl.cast(t, tl.int64) * B
            live = (t < col_length)[None, :]
            grad = tl.load(grad_hs + step * H + own, mask=own_mask, other=0.0).to(ACC)
            g = dh + tl.where(live, grad, 0.0)
            saved = gates + step * 4 * H + gate_own
            r = tl.load(saved, mask=own_mask, other=0.0).to(ACC)
            z = tl.load(saved + H, mask=own_mask, other=0.0).to(ACC)
            n = tl.load(saved + 2 * H, mask=own_mask, other=0.0).to(ACC)
            h_n = tl.load(saved + 3 * H, mask=own_mask, other=0.0).to(ACC)
            if t > 0:
                h_prev = tl.load(hs + (step - B) * H + own, mask=own_mask, other=0.0).to(ACC)
            else:
                h_prev = tl.load(h0 + own, mask=own_mask, other=0.0).to(ACC)
            d_n_pre = g * (1.0 - z) * (1.0 - n * n)
            d_z_pre = g * (h_prev - n) * z * (1.0 - z)
            d_r_pre = d_n_pre * h_n * r * (1.0 - r)
            d_r = tl.where(live, d_r_pre, 0.0).to(VALUE)
            d_z = tl.where(live, d_z_pre, 0.0).to(VALUE)
            d_h_n = tl.where(live, d_n_pre * r, 0.0).to(VALUE)
            exchange = d_state + tl.cast(phase % 2, tl.int64) * B * 3 * H + input_own
            store_state(exchange, d_r, own_mask, phase + 1, TAGGED, VALUE)
            store_state(exchange + H, d_z, own_mask, phase + 1, TAGGED, VALUE)
            store_state(exchange + 2 * H, d_h_n, own_mask, phase + 1, TAGGED, VALUE)
            if phase + 1 < k_stop:
                arrive(barrier, TAGGED)
            out = dxw + step * 3 * H + input_own
            tl.store(out, d_r, mask=own_mask)
            tl.store(out + H, d_z, mask=own_mask)
            tl.store(out + 2 * H, tl.where(live, d_n_pre, 0.0).to(VALUE), mask=own_mask)
            tl.store(d_hn + step * H + own, d_h_n, mask=own_mask)
            dh = tl.where(live, g * z, dh)

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
    xw, w_hh, b_hn = ops.contiguous(xw, w_hh, b_hn)
    steps, batch = xw.shape[:2]
    hidden = h0.shape[1]
    hs = xw.new_empty(steps, batch, hidden)
    gates = xw.new_empty(steps, batch, 4 * hidden) if save else None
    h_buf = exchange_buffer((2, batch, hidden), xw.dtype, xw.device)
    h_buf[0] = pack(h0, 0)
    launch.run_phases(
        gru_forward_kernel,
        launch.plans("gru", "forward", batch, hidden, hidden, False, xw),
        steps,
        (xw, w_hh, b_hn, h_buf, lengths, hs, gates, steps, batch, hidden),
        {"HAS_BIAS": b_hn is not None, "HAS_LENGTHS": lengths is not None, "SAVE": save},
        f"gru forward B={batch} H={hidden} {xw.dtype}",
    )
    return hs, unpack(h_buf[steps % 2], xw.dtype), gates


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
    grad_hs, h0, hs, gates = ops.contiguous(grad_hs, h0, hs, gates)
    steps, batch, hidden = hs.shape
    dxw = hs.new_empty(steps, batch, 3 * hidden)
    d_hn = torch.empty_like(hs)
    d_state = exchange_buffer((2, batch, 3 * hidden), hs.dtype, hs.device)
    d_state[1] = 0  # what phase 0 folds: zeros, tagged as phase -1's output (kernels.exchange)
    dh_state = grad_h_n.to(accumulation_dtype(hs.dtype), copy=True).contiguous()
    launch.run_phases(
        gru_backward_kernel,
        launch.plans("gru", "backward", batch, hidden, hidden, False, hs),
        steps + 1,
        (grad_hs, w_hh.t().contiguous(), h0, lengths, hs, gates, dxw, d_hn, d_state, dh_state,
         steps, batch, hidden),
        {"HAS_LENGTHS": lengths is not None},
        f"gru backward B={batch} H={hidden} {hs.dtype}",
    )
    return dxw, d_hn, dh_state.to(h0.dtype)
