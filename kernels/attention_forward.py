"""Triton attention forward: score tiles -> key-length mask -> online softmax -> weighted values.

Grid (query blocks * B, key splits). Each program owns BLOCK_Q queries of one batch row and the keys
[split * keys_per_split, (split + 1) * keys_per_split) cut at the row's key length, and walks them
BLOCK_K at a time keeping the running max m, the running sum l and the unnormalised context
(FlashAttention's online softmax). It writes its normalised context and log-sum-exp; with one split
these are the results, with several (the decoder step, Tq = 1, splits the keys so that the GPU
fills) `combine_splits_kernel` merges the partial results. Raw scores are written only when the
weights were asked for (the launcher turns them into weights with the final log-sum-exp).
"""

import triton
import triton.language as tl

from .attention_tiles import load_rows_raw, matmul, score_tile


@triton.jit
def attention_forward_kernel(
    Q, K, V_VEC, VALUES, LENGTHS,  # q or pq [B, Tq, F]; k or pk [B, Tk, F]; v [F]; [B, Tk, DV]; [B]
    OUT, OUT_LSE, SCORES,  # [splits, B, Tq, DV], [splits, B, Tq] (ACC), raw scores [B, Tq, Tk] (ACC)
    Tq, Tk, F, DV, keys_per_split, scale,
    HAS_LENGTHS: tl.constexpr, ADDITIVE: tl.constexpr, STORE_SCORES: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_DV: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, CHUNK: tl.constexpr,
):
    ACC: tl.constexpr = OUT_LSE.dtype.element_ty
    q_blocks = tl.cdiv(Tq, BLOCK_Q)
    pid_q = tl.program_id(0) % q_blocks
    b = (tl.program_id(0) // q_blocks).to(tl.int64)
    split = tl.program_id(1)
    batch = tl.num_programs(0) // q_blocks

    # Stage 1: this program's queries and key range.
    Q += b * Tq * F
    K += b * Tk * F
    VALUES += b * Tk * DV
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_valid = offs_q < Tq
    offs_f = tl.arange(0, BLOCK_F)
    f_valid = offs_f < F
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_valid = offs_dv < DV
    key_end = Tk
    if HAS_LENGTHS:
        key_end = tl.load(LENGTHS + b).to(tl.int32)
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, key_end)
    if ADDITIVE:
        q_tile = scale
    else:
        q_tile = load_rows_raw(Q, offs_q, q_valid, offs_f, f_valid, F)

    # Stage 2: online softmax over key blocks.
    m = tl.full([BLOCK_Q], float("-inf"), dtype=ACC)
    l = tl.zeros([BLOCK_Q], dtype=ACC)
    acc = tl.zeros([BLOCK_Q, BLOCK_DV], dtype=ACC)
    for k0 in range(start, end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_valid = offs_k < end
        if ADDITIVE:
            k_tile = scale
        else:
            k_tile = load_rows_raw(K, offs_k, k_valid, offs_f, f_valid, F)
        s = score_tile(Q, K, V_VEC, q_tile, k_tile, offs_q, q_valid, offs_k, k_valid, F, scale,
                       ADDITIVE, BLOCK_Q, BLOCK_K, BLOCK_F, ACC, UPCAST, PRECISION, CHUNK)
        if STORE_SCORES:
            rows = b * Tq + offs_q.to(tl.int64)
            tl.store(SCORES + rows[:, None] * Tk + offs_k[None, :], s,
                     mask=q_valid[:, None] & k_valid[None, :])
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        values = load_rows_raw(VALUES, offs_k, k_valid, offs_dv, dv_valid, DV)
        weighted = matmul(p.to(VALUES.dtype.element_ty), values, ACC, UPCAST, PRECISION)
        acc = acc * alpha[:, None] + weighted
        m = m_new

    # Stage 3: normalised context and log-sum-exp (an empty key range gives 0 and -inf).
    live = l > 0
    safe_l = tl.where(live, l, 1.0)
    rows = (split.to(tl.int64) * batch + b) * Tq + offs_q.to(tl.int64)
    tl.store(OUT + rows[:, None] * DV + offs_dv[None, :], acc / safe_l[:, None],
             mask=q_valid[:, None] & dv_valid[None, :])
    tl.store(OUT_LSE + rows, tl.where(live, m + tl.log(safe_l), float("-inf")), mask=q_valid)


@triton.jit
def combine_splits_kernel(
    PART_OUT, PART_LSE,  # [splits, B, Tq, DV], [splits, B, Tq] (ACC)
    OUT, LSE,  # [B, Tq, DV], [B, Tq]
    splits, rows_total, Tq, DV,
    BLOCK_Q: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """Grid (query blocks * B): context = sum_s exp(lse_s - lse) out_s, lse = logsumexp_s lse_s."""
    ACC: tl.constexpr = PART_LSE.dtype.element_ty
    q_blocks = tl.cdiv(Tq, BLOCK_Q)
    offs_q = (tl.program_id(0) % q_blocks) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_valid = offs_q < Tq
    rows = (tl.program_id(0) // q_blocks).to(tl.int64) * Tq + offs_q.to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask = q_valid[:, None] & (offs_dv < DV)[None, :]

    # Stage 1: the largest partial log-sum-exp of each query.
    m = tl.full([BLOCK_Q], float("-inf"), dtype=ACC)
    for s in range(0, splits):
        m = tl.maximum(m, tl.load(PART_LSE + s * rows_total + rows, mask=q_valid, other=float("-inf")))
    m = tl.where(m == float("-inf"), 0.0, m)  # padded queries only: split 0 always holds a key

    # Stage 2: weighted sum of the partial contexts.
    total = tl.zeros([BLOCK_Q], dtype=ACC)
    acc = tl.zeros([BLOCK_Q, BLOCK_DV], dtype=ACC)
    for s in range(0, splits):
        part_rows = s * rows_total + rows
        w = tl.exp(tl.load(PART_LSE + part_rows, mask=q_valid, other=float("-inf")) - m)
        part = tl.load(PART_OUT + part_rows[:, None] * DV + offs_dv[None, :], mask=mask, other=0.0)
        total += w
        acc += w[:, None] * part
    safe_total = tl.where(total > 0, total, 1.0)
    tl.store(OUT + rows[:, None] * DV + offs_dv[None, :], acc / safe_total[:, None], mask=mask)
    tl.store(LSE + rows, m + tl.log(safe_total), mask=q_valid)
