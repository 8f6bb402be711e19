"""LSTM recurrence (torch.nn gate order i, f, g, o), forward and backward, optional projection.

Program (i, j) owns hidden units U = [i*BLOCK_U, (i+1)*BLOCK_U) of batch columns
[j*BLOCK_B, (j+1)*BLOCK_B), all four gate rows of those units (4*BLOCK_U rows of W_hh, the MMA's M)
and their cell state, which stays in registers for the whole launch. kernels.product has the
recurrent product, kernels.launch the modes, kernels.plan the tiles.

Forward, one phase per step: gates^T = W_hh[rows of U] . h[t-1]^T, read from the double-buffered
state `h_buf [2, B, P]` (step t reads slot t % 2, writes slot (t+1) % 2; words tagged with the
phase that wrote them: kernels.exchange).
With a projection (proj_size, w_hr [P, H]), h = (o * tanh(c)) @ W_hr^T mixes every unit, so a step
has two phases: (0) the gates and the unprojected u = o * tanh(c) of U, exchanged through
`u_buf [B, H]`; (1) program i projects rows [i*BLOCK_P, (i+1)*BLOCK_P) of h from all of u. (Its
products sit in a branch on the phase, so Triton keeps their resident W slices in registers and
stages them through shared memory every step.)

Backward (W_t = W_hh^T [P, 4H], the A operand: dh[t-1]^T = W_t[U] . d_gates[t]^T): phase p folds
the gate gradients of step T-p into dh, then produces those of step T-1-p, exchanged through
`d_state [2, B, 4H]` (T+1 phases). With a projection the gradient reaching h lives on P: phase
2p folds step T-p's gate gradients into dh for rows [i*BLOCK_P, ...) of P and exchanges
d_out = dh + grad_hs[t] through `dh_buf [B, P]`; phase 2p+1 computes d_u[U] = W_hr^T[U] . d_out^T
and the gate gradients of step t = T-1-p (2T+1 phases).

Per-step cost, B16 H768 P=H bfloat16 on an H100 (132 SMs, 50 MB L2), kernels.plan's plan and its
step_estimate_us (estimates, not measurements):
- Forward: 48 programs of 16 units (64 gate rows), 8 warps splitting K = 768 (chunks 512 + 256),
  W_hh resident in shared memory (64 x 768 x 2 = 96 KB per program, loaded once). Per program and
  step: h[t-1] from L2 as tagged words, 16 x 768 x 4 = 48 KB (2.4 MB over the grid); MMA
  64 x 768 x 16 = 786 K MAC = 384 HMMA.m16n8k16 (48 per warp); shared memory 96 KB of W and
  2 x 24 KB of h; xw 2 KB in, 4 gates, c and h 4.6 KB out; no barrier. Estimate: the dependent
  round trip through L2 (writer's exchange, reader's poll) ~0.7 us + 0.66 us of shared-memory
  traffic (the largest of L2 0.44, MMA 0.44, shared 0.66) + gate math ~0.1 = ~1.46 us/step
  (cuDNN: 1.96 us/step).
  Compiled for sm_90 this kernel keeps 8 bytes of stack, so kernels.launch runs the planner's
  third candidate, without local memory and within 5% of its estimate: 96 programs of 8 units,
  4 warps splitting K, 64 KB of W_hh resident, 220 registers, ~1.47 us/step.
- Backward: 48 programs of 16 units, 8 warps, W_hh^T resident (16 x 3072 x 2 = 96 KB; chunks
  3 x 1024). Per program and step: the gate gradients of step t+1 from L2 as tagged words,
  16 x 3072 x 4 = 192 KB (9.4 MB over the grid); MMA 786 K MAC; saved gates, cs and grad_hs
  ~3 KB in, 4 gate gradients out. Estimate ~0.7 + 1.76 (192 KB at ~64 B/clock into one SM) + 0.1
  = ~2.56 us/step.
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
from .checks import check_dtype, check_lstm_backward_args
from .exchange import exchange_buffer, load_state, pack, store_state, unpack
from .product import recurrent_product, resident_weights
from .tiles import gate_rows, plane_tile, program_columns, program_units, split_gates, tanh


@triton.jit(do_not_specialize=["T", "k_start", "k_stop", "first_block"])
def lstm_forward_kernel(
    xw, w_hh, w_hr, h_buf, u_buf, c_state, lengths, hs, cs, gates,
    # [T, B, 4H], [4H, P], [P, H] or None, [2, B, P], [B, H] or None (PROJECTED only), [B, H] ACC,
    # [B] or None, [T, B, P], [T, B, H] ACC or None, [T, B, 4H] or None (cs, gates: SAVE only)
    T, B, H, P,
    barrier, k_start, k_stop, first_block,
    HAS_LENGTHS: tl.constexpr, PROJECTED: tl.constexpr, SAVE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_P: tl.constexpr, SPLIT: tl.constexpr,
    RESIDENT: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    J0: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr, BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr, FMA: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, TAGGED: tl.constexpr,
):
    # Stage 1: this program's columns, units, gate rows of W_hh (and rows of W_hr); cell state.
    pid = tl.program_id(0)
    cols, col_valid, col_length = program_columns(lengths, B, T, first_block, HAS_LENGTHS, BLOCK_B)
    units, unit_valid, own_mask, own = program_units(H, cols, col_valid, BLOCK_U)  # own: in [B, H]
    gate_own = plane_tile(units, cols, 4 * H)  # gate i in a [B, 4H] plane (+ g*H for gate g)
    w_rows, w_valid = gate_rows(pid, H, 4, 4, BLOCK_U)
    w0, w1, w2 = resident_weights(w_hh, w_rows, w_valid, P, 4 * BLOCK_U, SPLIT, K0, K1, K2, RESIDENT, DOT)
    if PROJECTED:
        out_rows = pid * BLOCK_P + tl.arange(0, BLOCK_P)
        v0, v1, v2 = resident_weights(w_hr, out_rows, out_rows < P, H, BLOCK_P, SPLIT, J0, J1, J2, RESIDENT, DOT)
    else:
        out_rows = units
    out_mask = (out_rows < P)[:, None] & col_valid[None, :]
    state_own = plane_tile(out_rows, cols, P)  # the rows of h this program writes, in [B, P]
    c = tl.load(c_state + own, mask=own_mask, other=0.0)
    VALUE: tl.constexpr = hs.dtype.element_ty

    # Every exchanged word a phase writes carries the tag phase + 1 (kernels.exchange).
    for phase in tl.range(k_start, k_stop, num_stages=1):
        if phase > k_start:
            wait(barrier, phase - k_start, TAGGED)
        t = phase // 2 if PROJECTED else phase
        step = tl.cast(t, tl.int64) * B
        live = (t < col_length)[None, :]
        h_read = h_buf + tl.cast(t % 2, tl.int64) * B * P
        h_write = h_buf + tl.cast((t + 1) % 2, tl.int64) * B * P
        if (not PROJECTED) or (phase % 2 == 0):
            # Stage 2: recurrent product of the four gates' rows against h[t-1].
            acc = recurrent_product(
                w0, w1, w2, w_hh, w_rows, w_valid, h_read, cols, col_valid, P, phase, 4 * BLOCK_U,
                BLOCK_B, SPLIT, K0, K1, K2, RESIDENT, BLOCK_K, STAGES, FMA, DOT, PRECISION, ACC,
                TAGGED, VALUE,
            )
            a_i, a_f, a_g, a_o = split_gates(acc, BLOCK_U, BLOCK_B)
            # Stage 3: gates and cell update; columns past their length keep their state.
            x = xw + step * 4 * H + gate_own
            i = tl.sigmoid(tl.load(x, mask=own_mask, other=0.0).to(ACC) + a_i)
            f = tl.sigmoid(tl.load(x + H, mask=own_mask, other=0.0).to(ACC) + a_f)
            g = tanh(tl.load(x + 2 * H, mask=own_mask, other=0.0).to(ACC) + a_g)
            o = tl.sigmoid(tl.load(x + 3 * H, mask=own_mask, other=0.0).to(ACC) + a_o)
            c_new = f * c + i * g
            h_new = o * tanh(c_new)
            # Stage 4: exchange (h, or u for the projection), arrive, then the per-step outputs.
            if PROJECTED:
                store_state(u_buf + own, h_new, own_mask, phase + 1, TAGGED, VALUE)
            else:
                h_old = load_state(h_read + state_own, out_mask, phase, TAGGED, VALUE).to(ACC)
                store_state(h_write + state_own, tl.where(live, h_new, h_old), out_mask, phase + 1, TAGGED, VALUE)
            if phase + 1 < k_stop:
                arrive(barrier, TAGGED)
            if not PROJECTED:
                tl.store(hs + step * P + state_own, tl.where(live, h_new, 0.0).to(hs.dtype.element_ty), mask=out_mask)
            if SAVE:
                tl.store(cs + step * H + own, tl.where(live, c_new, 0.0), mask=own_mask)
                gate_type = gates.dtype.element_ty
                store_gate_tiles(
                    gates + step * 4 * H + gate_own, H, tl.where(live, i, 0.0).to(gate_type),
                    tl.where(live, f, 0.0).to(gate_type), tl.where(live, g, 0.0).to(gate_type),
                    tl.where(live, o, 0.0).to(gate_type), own_mask,
                )
            c = tl.where(live, c_new, c)
        else:
            # Projection phase: rows of h = u @ W_hr^T from every program's u.
            projected = recurrent_product(
                v0, v1, v2, w_hr, out_rows, out_rows < P, u_buf, cols, col_valid, H, phase, BLOCK_P,
                BLOCK_B, SPLIT, J0, J1, J2, RESIDENT, BLOCK_K, STAGES, FMA, DOT, PRECISION, ACC,
                TAGGED, VALUE,
            )
            kept = load_state(h_read + state_own, out_mask, phase - 1, TAGGED, VALUE).to(ACC)  # h[t-1]
            store_state(h_write + state_own, tl.where(live, projected, kept), out_mask, phase + 1, TAGGED, VALUE)
            if phase + 1 < k_stop:
                arrive(barrier, TAGGED)
            tl.store(hs + step * P + state_own, tl.where(live, projected, 0.0).to(hs.dtype.element_ty), mask=out_mask)

    tl.store(c_state + own, c, mask=own_mask)


@triton.jit
def store_gate_tiles(base, H, t0, t1, t2, t3, mask):
    """Four [BLOCK_U, BLOCK_B] gate tiles at base, base + H, base + 2H, base + 3H."""
    tl.store(base, t0, mask=mask)
    tl.store(base + H, t1, mask=mask)
    tl.store(base + 2 * H, t2, mask=mask)
    tl.store(base + 3 * H, t3, mask=mask)


@triton.jit
def step_gate_gradients(
    d_h, dc, live, t, B, H, own, gate_own, own_mask, c0, cs, gates, dxw, d_write, tag, barrier,
    notify, ACC: tl.constexpr, TAGGED: tl.constexpr,
):
    """Gate gradients of step t for this program's units from the gradient d_h reaching
    o * tanh(c[t]) and the cell-state gradient dc: exchanged through the slot `d_write` (words
    tagged `tag`), then (after the arrival, when `notify`) stored to dxw[t]. -> the cell-state
    gradient carried to step t-1."""
    step = tl.cast(t, tl.int64) * B
    saved = gates + step * 4 * H + gate_own
    i = tl.load(saved, mask=own_mask, other=0.0).to(ACC)
    f = tl.load(saved + H, mask=own_mask, other=0.0).to(ACC)
    g = tl.load(saved + 2 * H, mask=own_mask, other=0.0).to(ACC)
    o = tl.load(saved + 3 * H, mask=own_mask, other=0.0).to(ACC)
    c = tl.load(cs + step * H + own, mask=own_mask, other=0.0)
    if t > 0:
        c_prev = tl.load(cs + (step - B) * H + own, mask=own_mask, other=0.0)
    else:
        c_prev = tl.load(c0 + own, mask=own_mask, other=0.0).to(ACC)
    tanh_c = tanh(c)
    d_c = dc + d_h * o * (1.0 - tanh_c * tanh_c)
    VALUE: tl.constexpr = dxw.dtype.element_ty
    d_i = tl.where(live, d_c * g * i * (1.0 - i), 0.0).to(VALUE)
    d_f = tl.where(live, d_c * c_prev * f * (1.0 - f), 0.0).to(VALUE)
    d_g = tl.where(live, d_c * i * (1.0 - g * g), 0.0).to(VALUE)
    d_o = tl.where(live, d_h * tanh_c * o * (1.0 - o), 0.0).to(VALUE)
    exchange = d_write + gate_own
    store_state(exchange, d_i, own_mask, tag, TAGGED, VALUE)
    store_state(exchange + H, d_f, own_mask, tag, TAGGED, VALUE)
    store_state(exchange + 2 * H, d_g, own_mask, tag, TAGGED, VALUE)
    store_state(exchange + 3 * H, d_o, own_mask, tag, TAGGED, VALUE)
    if notify:
        arrive(barrier, TAGGED)
    store_gate_tiles(dxw + step * 4 * H + gate_own, H, d_i, d_f, d_g, d_o, own_mask)
    return tl.where(live, d_c * f, dc)


@triton.jit(do_not_specialize=["T", "k_start", "k_stop", "first_block"])
def lstm_backward_kernel(
    grad_hs, w_t, w_hr_t, c0, lengths, cs, gates, dxw, d_state, dh_buf, dh_state, dc_state, d_outputs,
    # [T, B, P], W_hh^T [P, 4H], W_hr^T [H, P] or None, [B, H], [B] or None, [T, B, H] ACC,
    # [T, B, 4H], [T, B, 4H], gate-gradient exchange [2, B, 4H] (PROJECTED: one slot used),
    # [B, P] or None (PROJECTED: d_out exchange), [B, P] ACC (grad_h_n in, dh0 out), [B, H] ACC
    # (grad_c_n in, dc0 out), [T, B, P] ACC or None (PROJECTED: d_out of every step)
    T, B, H, P,
    barrier, k_start, k_stop, first_block,
    HAS_LENGTHS: tl.constexpr, PROJECTED: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_P: tl.constexpr, SPLIT: tl.constexpr,
    RESIDENT: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    J0: tl.constexpr, J1: tl.constexpr, J2: tl.constexpr, BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr, FMA: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
    ACC: tl.constexpr, TAGGED: tl.constexpr,
):
    # Stage 1: columns, units; the rows of W_hh^T the fold multiplies (units, or rows of P when
    # PROJECTED) and of W_hr^T (units); dh and dc carried in registers.
    pid = tl.program_id(0)
    cols, col_valid, col_length = program_columns(lengths, B, T, first_block, HAS_LENGTHS, BLOCK_B)
    units, unit_valid, own_mask, own = program_units(H, cols, col_valid, BLOCK_U)  # own: in [B, H]
    gate_own = plane_tile(units, cols, 4 * H)
    fold_size: tl.constexpr = BLOCK_P if PROJECTED else BLOCK_U
    fold_rows = pid * fold_size + tl.arange(0, fold_size)
    if PROJECTED:
        v0, v1, v2 = resident_weights(w_hr_t, units, unit_valid, P, BLOCK_U, SPLIT, J0, J1, J2, RESIDENT, DOT)
    fold_valid = fold_rows < P
    fold_mask = fold_valid[:, None] & col_valid[None, :]
    fold_own = plane_tile(fold_rows, cols, P)  # the rows of dh this program carries, in [B, P]
    w0, w1, w2 = resident_weights(w_t, fold_rows, fold_valid, 4 * H, fold_size, SPLIT, K0, K1, K2, RESIDENT, DOT)
    dh = tl.load(dh_state + fold_own, mask=fold_mask, other=0.0)
    dc = tl.load(dc_state + own, mask=own_mask, other=0.0)
    VALUE: tl.constexpr = dxw.dtype.element_ty

    # Every exchanged word a phase writes carries the tag phase + 1 (kernels.exchange).
    for phase in tl.range(k_start, k_stop, num_stages=1):
        if phase > k_start:
            wait(barrier, phase - k_start, TAGGED)
        if PROJECTED:
            p = phase // 2
            d_read = d_state
            d_write = d_state
        else:
            p = phase
            d_read = d_state + tl.cast((p + 1) % 2, tl.int64) * B * 4 * H
            d_write = d_state + tl.cast(p % 2, tl.int64) * B * 4 * H
        t = T - 1 - p
        live = (t < col_length)[None, :]
        notify = phase + 1 < k_stop
        if (not PROJECTED) or (phase % 2 == 0):
            # Stage 2: fold the gate gradients of step t+1 into dh (rows live at t+1 only; phase 0
            # folds zeros, so that the product, and W's place in shared memory, is unconditional).
            carried = recurrent_product(
                w0, w1, w2, w_t, fold_rows, fold_valid, d_read, cols, col_valid, 4 * H, phase,
                fold_size, BLOCK_B, SPLIT, K0, K1, K2, RESIDENT, BLOCK_K, STAGES, FMA, DOT,
                PRECISION, ACC, TAGGED, VALUE,
            )
            if PROJECTED:
                dh = tl.where((t + 1 < col_length)[None, :], carried, dh)
            else:
                dh = tl.where((t + 1 < col_length)[None, :], dh + carried, dh)
            # Stage 3: the gradient reaching h[t]; without a projection, the gate gradients of t.
            if p < T:
                grad = tl.load(grad_hs + tl.cast(t, tl.int64) * B * P + fold_own, mask=fold_mask, other=0.0)
                d_h = tl.where(live, dh + grad.to(ACC), 0.0)
                if PROJECTED:
                    store_state(dh_buf + fold_own, d_h, fold_mask, phase + 1, TAGGED, VALUE)
                    if notify:
                        arrive(barrier, TAGGED)
                    tl.store(d_outputs + tl.cast(t, tl.int64) * B * P + fold_own, d_h, mask=fold_mask)
                else:
                    dc = step_gate_gradients(
                        d_h, dc, live, t, B, H, own, gate_own, own_mask, c0, cs, gates, dxw, d_write,
                        phase + 1, barrier, notify, ACC, TAGGED,
                    )
                    dh = tl.where(live, 0.0, dh)
        else:
            # Projection phase: d_u = d_out @ W_hr for these units, then their gate gradients.
            d_u = recurrent_product(
                v0, v1, v2, w_hr_t, units, unit_valid, dh_buf, cols, col_valid, P, phase, BLOCK_U,
                BLOCK_B, SPLIT, J0, J1, J2, RESIDENT, BLOCK_K, STAGES, FMA, DOT, PRECISION, ACC,
                TAGGED, VALUE,
            )
            dc = step_gate_gradients(
                d_u, dc, live, t, B, H, own, gate_own, own_mask, c0, cs, gates, dxw, d_write,
                phase + 1, barrier, notify, ACC, TAGGED,
            )

    tl.store(dh_state + fold_own, dh, mask=fold_mask)
    tl.store(dc_state + own, dc, mask=own_mask)


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
    xw, w_hh, w_hr = ops.contiguous(xw, w_hh, w_hr)
    steps, batch = xw.shape[:2]
    hidden, state = c0.shape[1], h0.shape[1]
    projected = w_hr is not None
    acc = accumulation_dtype(xw.dtype)
    hs = xw.new_empty(steps, batch, state)
    cs = xw.new_empty(steps, batch, hidden, dtype=acc) if save else None
    gates = torch.empty_like(xw) if save else None
    h_buf = exchange_buffer((2, batch, state), xw.dtype, xw.device)
    h_buf[0] = pack(h0, 0)
    u_buf = exchange_buffer((batch, hidden), xw.dtype, xw.device) if projected else None
    c_state = c0.to(acc, copy=True).contiguous()
    launch.run_phases(
        lstm_forward_kernel,
        launch.plans("lstm", "forward", batch, hidden, state, projected, xw),
        steps * (2 if projected else 1),
        (xw, w_hh, w_hr, h_buf, u_buf, c_state, lengths, hs, cs, gates, steps, batch, hidden, state),
        {"HAS_LENGTHS": lengths is not None, "PROJECTED": projected, "SAVE": save},
        f"lstm forward B={batch} H={hidden} P={state} {xw.dtype}",
    )
    return hs, unpack(h_buf[steps % 2], xw.dtype), c_state.to(xw.dtype), cs, gates


def lstm_forward(
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """xw [T, B, 4H], w_hh [4H, P], w_hr [P, H] or None, h0 [B, P], c0 [B, H]
    -> hs [T, B, P], h_n [B, P], c_n [B, H], cs [T, B, H] (accumulation dtype), gates [T, B, 4H].

    Saved for backward per time step: hs B*P*e, cs B*H*a and gates B*4H*e bytes
    (e = element size of xw's dtype, a = of the accumulation dtype).
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
    grad_hs, c0, cs, gates = ops.contiguous(grad_hs, c0, cs, gates)
    steps, batch, state = hs.shape
    hidden = c0.shape[1]
    projected = w_hr is not None
    acc = accumulation_dtype(hs.dtype)
    w_t = w_hh.t().contiguous()
    w_hr_t = w_hr.t().contiguous() if projected else None
    dxw = torch.empty_like(gates)
    d_state = exchange_buffer((1 if projected else 2, batch, 4 * hidden), hs.dtype, hs.device)
    d_state[0 if projected else 1] = 0  # what phase 0 folds: zeros, tagged as phase -1's output
    dh_buf = exchange_buffer((batch, state), hs.dtype, hs.device) if projected else None
    dh_state = grad_h_n.to(acc, copy=True).contiguous()
    dc_state = grad_c_n.to(acc, copy=True).contiguous()
    d_outputs = hs.new_empty(steps, batch, state, dtype=acc) if projected else None
    launch.run_phases(
        lstm_backward_kernel,
        launch.plans("lstm", "backward", batch, hidden, state, projected, hs),
        2 * steps + 1 if projected else steps + 1,
        (grad_hs, w_t, w_hr_t, c0, lengths, cs, gates, dxw, d_state, dh_buf, dh_state, dc_state,
         d_outputs, steps, batch, hidden, state),
        {"HAS_LENGTHS": lengths is not None, "PROJECTED": projected},
        f"lstm backward B={batch} H={hidden} P={state} {hs.dtype}",
    )
    if projected:
        unprojected = gates[..., 3 * hidden :].to(acc) * torch.tanh(cs)  # [T, B, H]
        dw_hr = torch.einsum("tbp,tbh->ph", d_outputs, unprojected).to(w_hr.dtype)
    else:
        dw_hr = grad_hs.new_zeros(0)
    return dxw, dh_state.to(h0.dtype), dc_state.to(c0.dtype), dw_hr
