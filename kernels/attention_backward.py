"""Triton attention backward: score tiles recomputed from the saved log-sum-exp, P = exp(S - lse),
dS = P * (dP - delta) with dP = grad_context @ values^T (+ grad_weights), delta precomputed per query.

Two kernels, no atomics (results are deterministic):
- `attention_backward_kv_kernel`, grid (key blocks * B): one program per key block walks every
  query block and owns the gradients of its keys: d_values = P^T grad_context, and d_keys (dot:
  scale dS^T q, in registers) or d_pk and the per-program part of d_v (additive: chunks of the
  attention size, added into buffers only this program writes, with a barrier between query blocks).
  When all queries fit in one block (the decoder step) it also writes this key block's share of the
  query gradient, summed by the launcher: the query side is then split across the keys too.
- `attention_backward_q_kernel`, grid (query blocks * B): one program per query block walks the
  key blocks for d_query (dot, in registers) or d_pq (additive, chunks as above).
"""

import triton
import triton.language as tl

from .attention_tiles import (
    add_rows, add_vector, additive_hidden, load_rows_raw, matmul, score_gradient, score_tile,
)


@triton.jit
def attention_backward_kv_kernel(
    Q, K, V_VEC, VALUES, LENGTHS, GRAD_OUT, GW, LSE, DELTA,
    DK,  # dot: d_keys [B, Tk, F]; additive: d_pk [B, Tk, A] (ACC, zero-filled)
    DVALUES,  # [B, Tk, DV]
    DV_VEC_PART,  # additive: [B, key blocks, A] (ACC, zero-filled)
    DQ_PART,  # SINGLE_Q_BLOCK: [key blocks, B, Tq, F] (ACC, zero-filled)
    Tq, Tk, F, DV, scale,
    HAS_LENGTHS: tl.constexpr, HAS_GRAD_WEIGHTS: tl.constexpr, ADDITIVE: tl.constexpr,
    SINGLE_Q_BLOCK: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_DV: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, CHUNK: tl.constexpr,
):
    ACC: tl.constexpr = LSE.dtype.element_ty
    IN: tl.constexpr = VALUES.dtype.element_ty
    key_blocks = tl.cdiv(Tk, BLOCK_K)
    pid_k = tl.program_id(0) % key_blocks
    b = (tl.program_id(0) // key_blocks).to(tl.int64)
    batch = tl.num_programs(0) // key_blocks

    # Stage 1: this program's keys and their values.
    Q += b * Tq * F
    K += b * Tk * F
    VALUES += b * Tk * DV
    GRAD_OUT += b * Tq * DV
    GW += b * Tq * Tk
    LSE += b * Tq
    DELTA += b * Tq
    key_end = Tk
    if HAS_LENGTHS:
        key_end = tl.load(LENGTHS + b).to(tl.int32)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_valid = offs_k < key_end
    k_stored = offs_k < Tk
    offs_f = tl.arange(0, BLOCK_F)
    f_valid = offs_f < F
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_valid = offs_dv < DV
    if ADDITIVE:
        k_tile = scale
    else:
        k_tile = load_rows_raw(K, offs_k, k_valid, offs_f, f_valid, F)
    values = load_rows_raw(VALUES, offs_k, k_valid, offs_dv, dv_valid, DV)
    q_end = tl.where(pid_k * BLOCK_K < key_end, Tq, 0)  # a block past the key length skips the loop

    # Stage 2: walk the query blocks.
    d_values = tl.zeros([BLOCK_K, BLOCK_DV], dtype=ACC)
    d_keys = tl.zeros([BLOCK_K, BLOCK_F], dtype=ACC)
    for q0 in range(0, q_end, BLOCK_Q):
        offs_q = q0 + tl.arange(0, BLOCK_Q)
        q_valid = offs_q < Tq
        if ADDITIVE:
            q_tile = scale
        else:
            q_tile = load_rows_raw(Q, offs_q, q_valid, offs_f, f_valid, F)
        s = score_tile(Q, K, V_VEC, q_tile, k_tile, offs_q, q_valid, offs_k, k_valid, F, scale,
                       ADDITIVE, BLOCK_Q, BLOCK_K, BLOCK_F, ACC, UPCAST, PRECISION, CHUNK)
        lse = tl.load(LSE + offs_q, mask=q_valid, other=float("inf"))
        p = tl.exp(s - lse[:, None])
        grad_out = load_rows_raw(GRAD_OUT, offs_q, q_valid, offs_dv, dv_valid, DV)
        d_values += matmul(tl.trans(p.to(IN)), grad_out, ACC, UPCAST, PRECISION)
        delta = tl.load(DELTA + offs_q, mask=q_valid, other=0.0)
        ds = score_gradient(p, grad_out, values, GRAD_OUT, VALUES, GW, offs_q, q_valid, offs_k, k_valid,
                            DV, Tk, delta, HAS_GRAD_WEIGHTS, ACC, UPCAST, PRECISION, CHUNK).to(IN)
        if ADDITIVE:
            ds_acc = ds.to(ACC)
            for a0 in range(0, F, BLOCK_F):
                hidden, v, offs_a, a_valid = additive_hidden(Q, K, V_VEC, offs_q, q_valid, offs_k, k_valid,
                                                             a0, F, BLOCK_F, ACC)
                d_pre = ds_acc[:, :, None] * (1.0 - hidden * hidden) * v[None, None, :]
                add_rows(DK + b * Tk * F, offs_k, k_valid, offs_a, a_valid, F, tl.sum(d_pre, 0))
                d_v = tl.sum(tl.sum(ds_acc[:, :, None] * hidden, 0), 0)
                add_vector(DV_VEC_PART + (b * key_blocks + pid_k) * F, offs_a, a_valid, d_v)
                if SINGLE_Q_BLOCK:
                    part = DQ_PART + (pid_k * batch + b) * Tq * F
                    tl.store(part + offs_q.to(tl.int64)[:, None] * F + offs_a[None, :], tl.sum(d_pre, 1),
                             mask=q_valid[:, None] & a_valid[None, :])
            tl.debug_barrier()  # this program's read-add-writes are visible to all its threads
        else:
            d_keys += matmul(tl.trans(ds), q_tile, ACC, UPCAST, PRECISION) * scale
            if SINGLE_Q_BLOCK:
                part = DQ_PART + (pid_k * batch + b) * Tq * F
                tl.store(part + offs_q.to(tl.int64)[:, None] * F + offs_f[None, :],
                         matmul(ds, k_tile, ACC, UPCAST, PRECISION) * scale,
                         mask=q_valid[:, None] & f_valid[None, :])

    # Stage 3: the key-side gradients (zero past the key length).
    rows = b * Tk + offs_k.to(tl.int64)
    tl.store(DVALUES + rows[:, None] * DV + offs_dv[None, :], d_values,
             mask=k_stored[:, None] & dv_valid[None, :])
    if not ADDITIVE:
        tl.store(DK + rows[:, None] * F + offs_f[None, :], d_keys, mask=k_stored[:, None] & f_valid[None, :])


@triton.jit
def attention_backward_q_kernel(
    Q, K, V_VEC, VALUES, LENGTHS, GRAD_OUT, GW, LSE, DELTA,
    DQ,  # dot: d_query [B, Tq, F]; additive: d_pq [B, Tq, A] (ACC, zero-filled)
    Tq, Tk, F, DV, scale,
    HAS_LENGTHS: tl.constexpr, HAS_GRAD_WEIGHTS: tl.constexpr, ADDITIVE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_DV: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, CHUNK: tl.constexpr,
):
    ACC: tl.constexpr = LSE.dtype.element_ty
    IN: tl.constexpr = VALUES.dtype.element_ty
    q_blocks = tl.cdiv(Tq, BLOCK_Q)
    pid_q = tl.program_id(0) % q_blocks
    b = (tl.program_id(0) // q_blocks).to(tl.int64)

    # Stage 1: this program's queries, their output gradient, lse and delta.
    Q += b * Tq * F
    K += b * Tk * F
    VALUES += b * Tk * DV
    GRAD_OUT += b * Tq * DV
    GW += b * Tq * Tk
    DQ += b * Tq * F
    key_end = Tk
    if HAS_LENGTHS:
        key_end = tl.load(LENGTHS + b).to(tl.int32)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_valid = offs_q < Tq
    offs_f = tl.arange(0, BLOCK_F)
    f_valid = offs_f < F
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_valid = offs_dv < DV
    if ADDITIVE:
        q_tile = scale
    else:
        q_tile = load_rows_raw(Q, offs_q, q_valid, offs_f, f_valid, F)
    grad_out = load_rows_raw(GRAD_OUT, offs_q, q_valid, offs_dv, dv_valid, DV)
    lse = tl.load(LSE + b * Tq + offs_q, mask=q_valid, other=float("inf"))
    delta = tl.load(DELTA + b * Tq + offs_q, mask=q_valid, other=0.0)

    # Stage 2: walk the live key blocks.
    d_query = tl.zeros([BLOCK_Q, BLOCK_F], dtype=ACC)
    for k0 in range(0, key_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_valid = offs_k < key_end
        if ADDITIVE:
            k_tile = scale
        else:
            k_tile = load_rows_raw(K, offs_k, k_valid, offs_f, f_valid, F)
        s = score_tile(Q, K, V_VEC, q_tile, k_tile, offs_q, q_valid, offs_k, k_valid, F, scale,
                       ADDITIVE, BLOCK_Q, BLOCK_K, BLOCK_F, ACC, UPCAST, PRECISION, CHUNK)
        p = tl.exp(s - lse[:, None])
        values = load_rows_raw(VALUES, offs_k, k_valid, offs_dv, dv_valid, DV)
        ds = score_gradient(p, grad_out, values, GRAD_OUT, VALUES, GW, offs_q, q_valid, offs_k, k_valid,
                            DV, Tk, delta, HAS_GRAD_WEIGHTS, ACC, UPCAST, PRECISION, CHUNK).to(IN)
        if ADDITIVE:
            ds_acc = ds.to(ACC)
            for a0 in range(0, F, BLOCK_F):
                hidden, v, offs_a, a_valid = additive_hidden(Q, K, V_VEC, offs_q, q_valid, offs_k, k_valid,
                                                             a0, F, BLOCK_F, ACC)
                d_pre = ds_acc[:, :, None] * (1.0 - hidden * hidden) * v[None, None, :]
                add_rows(DQ, offs_q, q_valid, offs_a, a_valid, F, tl.sum(d_pre, 1))
            tl.debug_barrier()  # this program's read-add-writes are visible to all its threads
        else:
            d_query += matmul(ds, k_tile, ACC, UPCAST, PRECISION) * scale

    # Stage 3: the dot-score query gradient.
    if not ADDITIVE:
        tl.store(DQ + offs_q.to(tl.int64)[:, None] * F + offs_f[None, :], d_query,
                 mask=q_valid[:, None] & f_valid[None, :])
