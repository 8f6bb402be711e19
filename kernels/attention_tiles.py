"""Triton building blocks shared by the attention kernels: score tiles and tensor-core products.

A score tile is [BLOCK_Q, BLOCK_K] for queries `offs_q` and keys `offs_k` of one batch row, computed
in the accumulation dtype ACC:

    additive:  v . tanh(pq_i + pk_j), looping over the attention size A in chunks of BLOCK_A, so only
               [BLOCK_Q, BLOCK_K, BLOCK_A] of the [Tq, Tk, A] hidden tensor ever exists
    dot:       scale * q_i . k_j, one tl.dot over the whole (padded) feature size

Pointers passed in are already offset to the batch row; row offsets are int64.
"""

import triton
import triton.language as tl


@triton.jit
def tanh(x):
    """tanh(x) = 1 - 2 / (exp(2x) + 1): exactly +-1 where exp overflows or underflows."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def matmul(a, b, ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """a [M, K] @ b [K, N] accumulated in ACC. UPCAST computes in float32 (the interpreter gets
    bfloat16 products wrong)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, out_dtype=ACC, input_precision=PRECISION)


@triton.jit
def load_rows(ptr, rows, row_valid, cols, col_valid, row_stride, ACC: tl.constexpr):
    """[len(rows), len(cols)] tile of a row-major matrix, zero outside, converted to ACC."""
    offsets = rows.to(tl.int64)[:, None] * row_stride + cols[None, :]
    return tl.load(ptr + offsets, mask=row_valid[:, None] & col_valid[None, :], other=0.0).to(ACC)


@triton.jit
def load_rows_raw(ptr, rows, row_valid, cols, col_valid, row_stride):
    """[len(rows), len(cols)] tile of a row-major matrix in its own dtype, zero outside."""
    offsets = rows.to(tl.int64)[:, None] * row_stride + cols[None, :]
    return tl.load(ptr + offsets, mask=row_valid[:, None] & col_valid[None, :], other=0.0)


@triton.jit
def additive_hidden(PQ, PK, V_VEC, offs_q, q_valid, offs_k, k_valid, a0, A,
                    BLOCK_A: tl.constexpr, ACC: tl.constexpr):
    """For the attention-size chunk starting at a0: (tanh(pq_i + pk_j) [BQ, BK, BLOCK_A], v chunk
    [BLOCK_A], pq chunk, pk chunk), zero in padded lanes."""
    offs_a = a0 + tl.arange(0, BLOCK_A)
    a_valid = offs_a < A
    pq = load_rows(PQ, offs_q, q_valid, offs_a, a_valid, A, ACC)
    pk = load_rows(PK, offs_k, k_valid, offs_a, a_valid, A, ACC)
    v = tl.load(V_VEC + offs_a, mask=a_valid, other=0.0).to(ACC)
    return tanh(pq[:, None, :] + pk[None, :, :]), v, offs_a, a_valid


@triton.jit
def additive_scores(PQ, PK, V_VEC, offs_q, q_valid, offs_k, k_valid, A,
                    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_A: tl.constexpr,
                    ACC: tl.constexpr):
    """[BLOCK_Q, BLOCK_K] tile of v . tanh(pq_i + pk_j)."""
    scores = tl.zeros([BLOCK_Q, BLOCK_K], dtype=ACC)
    for a0 in range(0, A, BLOCK_A):
        hidden, v, _, _ = additive_hidden(PQ, PK, V_VEC, offs_q, q_valid, offs_k, k_valid, a0, A,
                                          BLOCK_A, ACC)
        scores += tl.sum(hidden * v[None, None, :], axis=2)
    return scores


@triton.jit
def rows_product(A, offs_a, a_valid, B, offs_b, b_valid, width, ROWS_A: tl.constexpr,
                 ROWS_B: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
                 PRECISION: tl.constexpr):
    """A[offs_a, :width] @ B[offs_b, :width]^T [ROWS_A, ROWS_B] (both row-major with rows of
    `width`), CHUNK columns at a time read from memory: on CUDA cores a product holds whole rows of
    its operands per thread, which for wide rows exceeds the registers."""
    out = tl.zeros([ROWS_A, ROWS_B], dtype=ACC)
    for c0 in range(0, width, CHUNK):
        cols = c0 + tl.arange(0, CHUNK)
        valid = cols < width
        a = load_rows_raw(A, offs_a, a_valid, cols, valid, width)
        b = load_rows_raw(B, offs_b, b_valid, cols, valid, width)
        out += matmul(a, tl.trans(b), ACC, UPCAST, PRECISION)
    return out


@triton.jit
def score_tile(PQ, PK, V_VEC, q_tile, k_tile, offs_q, q_valid, offs_k, k_valid, A, scale,
               ADDITIVE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
               BLOCK_A: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
               PRECISION: tl.constexpr, CHUNK: tl.constexpr):
    """The [BLOCK_Q, BLOCK_K] score tile, -inf outside the live keys `k_valid`. Dot scores take
    the caller's tiles q_tile [BLOCK_Q, BLOCK_F] and k_tile [BLOCK_K, BLOCK_F] (CHUNK > 0: read q
    and k again CHUNK features at a time instead); additive scores read pq and pk chunk by chunk
    (and ignore the tiles)."""
    if ADDITIVE:
        scores = additive_scores(PQ, PK, V_VEC, offs_q, q_valid, offs_k, k_valid, A,
                                 BLOCK_Q, BLOCK_K, BLOCK_A, ACC)
    elif CHUNK > 0:
        scores = rows_product(PQ, offs_q, q_valid, PK, offs_k, k_valid, A, BLOCK_Q, BLOCK_K, CHUNK,
                              ACC, UPCAST, PRECISION) * scale
    else:
        scores = matmul(q_tile, tl.trans(k_tile), ACC, UPCAST, PRECISION) * scale
    return tl.where(k_valid[None, :], scores, float("-inf"))


@triton.jit
def add_rows(ptr, rows, row_valid, cols, col_valid, row_stride, value):
    """tile += value on a row-major matrix the calling program owns (read, add, write back)."""
    offsets = rows.to(tl.int64)[:, None] * row_stride + cols[None, :]
    mask = row_valid[:, None] & col_valid[None, :]
    tl.store(ptr + offsets, tl.load(ptr + offsets, mask=mask, other=0.0) + value, mask=mask)


@triton.jit
def add_vector(ptr, offs, valid, value):
    """vector += value on a buffer the calling program owns."""
    tl.store(ptr + offs, tl.load(ptr + offs, mask=valid, other=0.0) + value, mask=valid)


@triton.jit
def score_gradient(p, grad_out, values, GRAD_OUT, VALUES, GW, offs_q, q_valid, offs_k, k_valid, DV,
                   Tk, delta, HAS_GRAD_WEIGHTS: tl.constexpr, ACC: tl.constexpr,
                   UPCAST: tl.constexpr, PRECISION: tl.constexpr, CHUNK: tl.constexpr):
    """dS = P * (dP - delta) [BLOCK_Q, BLOCK_K], dP = grad_out [BQ, DV] @ values [BK, DV]^T (CHUNK > 0:
    read from GRAD_OUT and VALUES CHUNK columns at a time) + the weights' gradient GW [Tq, Tk]
    when given."""
    if CHUNK > 0:
        dp = rows_product(GRAD_OUT, offs_q, q_valid, VALUES, offs_k, k_valid, DV, p.shape[0], p.shape[1],
                          CHUNK, ACC, UPCAST, PRECISION)
    else:
        dp = matmul(grad_out, tl.trans(values), ACC, UPCAST, PRECISION)
    if HAS_GRAD_WEIGHTS:
        dp += load_rows(GW, offs_q, q_valid, offs_k, k_valid, Tk, ACC)
    return p * (dp - delta[:, None])
