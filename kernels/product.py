"""The recurrent product of every recurrence kernel: W_slice [ROWS, K] . state^T [K, BLOCK_B].

A program owns ROWS rows of a weight matrix W [*, K] (row-major; `w_rows[m]` is the W row of its
row m) and BLOCK_B batch columns (`cols[n]` is the state row of its column n), and computes

    acc[m, n] = sum_k W[w_rows[m], k] * state[cols[n], k]        -> [ROWS, BLOCK_B] float32 (ACC)

so W is the MMA's A operand and the batch its N dimension: with BLOCK_B = 16 no warp repeats
another's tile. Where the weights are the A operand the units (or gate rows) are M; K is split
across the program's warps (SPLIT = num_warps: a batched [SPLIT, ROWS, K/SPLIT] product, one
slice per warp, summed at the end) or, with SPLIT = 1, Triton spreads the warps over M and N.

Two ways to hold W:
- RESIDENT: the slice is loaded once, before the time loop, as up to three power-of-two chunks of
  K (K0 >= K1 >= K2, 0 for an unused chunk; K0 + K1 + K2 >= K, the excess masked), so K is not
  padded to a power of two. The chunks are loop-invariant: Triton keeps them in shared memory for
  the whole launch and the tensor cores read them from there every step.
- streamed: W is read again every step in chunks of BLOCK_K along K (pipelined STAGES deep, which
  is legal: W is read-only), for slices too large to stay on-chip.

FMA (float64): the product is accumulated one k at a time as outer products W[:, k] x state[k, :]
on the CUDA cores (SPLIT = 1, W streamed), so no float64 tl.dot (tensor-core or not) is assumed on
any Triton version, and no register holds more than the accumulator.

The state was written by other programs (other SMs) in the previous phase; kernels.exchange reads
it (waiting for its tags, or past L1 after a grid barrier).
"""

import triton
import triton.language as tl

from .exchange import load_state


@triton.jit
def weight_chunk(w_ptr, w_rows, row_valid, K, k_start,
                 ROWS: tl.constexpr, WIDTH: tl.constexpr, SPLIT: tl.constexpr, DOT: tl.constexpr):
    """W[w_rows[m], k_start + k] for k in [0, WIDTH), zero outside the rows and K
    -> [ROWS, WIDTH] (SPLIT = 1) or [SPLIT, ROWS, WIDTH // SPLIT] (warp s: the s-th part of k)."""
    row_starts = w_rows.to(tl.int64) * K
    if SPLIT == 1:
        k = k_start + tl.arange(0, WIDTH)
        pointers = w_ptr + row_starts[:, None] + k[None, :]
        mask = row_valid[:, None] & (k < K)[None, :]
    else:
        part = tl.arange(0, SPLIT)[:, None, None] * (WIDTH // SPLIT)
        k = k_start + part + tl.arange(0, WIDTH // SPLIT)[None, None, :]
        pointers = w_ptr + row_starts[None, :, None] + k
        mask = row_valid[None, :, None] & (k < K)
    return tl.load(pointers, mask=mask, other=0.0).to(DOT)


@triton.jit
def state_chunk(state_ptr, cols, col_valid, K, k_start, tag,
                WIDTH: tl.constexpr, SPLIT: tl.constexpr, DOT: tl.constexpr, TAGGED: tl.constexpr,
                VALUE: tl.constexpr):
    """state[cols[n], k_start + k] (state [*, K] row-major, exchanged: kernels.exchange; `tag` the
    tag its words must carry), zero outside the columns and K -> [WIDTH, BLOCK_B] (SPLIT = 1) or
    [SPLIT, WIDTH // SPLIT, BLOCK_B], matching weight_chunk."""
    col_starts = cols.to(tl.int64) * K
    if SPLIT == 1:
        k = k_start + tl.arange(0, WIDTH)
        pointers = state_ptr + col_starts[None, :] + k[:, None]
        mask = col_valid[None, :] & (k < K)[:, None]
    else:
        part = tl.arange(0, SPLIT)[:, None, None] * (WIDTH // SPLIT)
        k = k_start + part + tl.arange(0, WIDTH // SPLIT)[None, :, None]
        pointers = state_ptr + col_starts[None, None, :] + k
        mask = col_valid[None, None, :] & (k < K)
    return load_state(pointers, mask, tag, TAGGED, VALUE).to(DOT)


@triton.jit
def multiply_add(w, s, acc, PRECISION: tl.constexpr):
    """acc + w @ s (batched over the leading dimension when SPLIT > 1)."""
    return tl.dot(w, s, acc, input_precision=PRECISION)


@triton.jit
def resident_weights(w_ptr, w_rows, row_valid, K,
                     ROWS: tl.constexpr, SPLIT: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr,
                     K2: tl.constexpr, RESIDENT: tl.constexpr, DOT: tl.constexpr):
    """The RESIDENT chunks of this program's W slice (0 for an unused chunk or when streamed)."""
    w0 = 0.0
    w1 = 0.0
    w2 = 0.0
    if RESIDENT:
        w0 = weight_chunk(w_ptr, w_rows, row_valid, K, 0, ROWS, K0, SPLIT, DOT)
        if K1 > 0:
            w1 = weight_chunk(w_ptr, w_rows, row_valid, K, K0, ROWS, K1, SPLIT, DOT)
        if K2 > 0:
            w2 = weight_chunk(w_ptr, w_rows, row_valid, K, K0 + K1, ROWS, K2, SPLIT, DOT)
    return w0, w1, w2


@triton.jit
def recurrent_product(w0, w1, w2, w_ptr, w_rows, row_valid, state_ptr, cols, col_valid, K, tag,
                      ROWS: tl.constexpr, BLOCK_B: tl.constexpr, SPLIT: tl.constexpr,
                      K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, RESIDENT: tl.constexpr,
                      BLOCK_K: tl.constexpr, STAGES: tl.constexpr, FMA: tl.constexpr,
                      DOT: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                      TAGGED: tl.constexpr, VALUE: tl.constexpr):
    """W_slice . state^T -> [ROWS, BLOCK_B] in ACC, from the resident chunks w0..w2 or streaming W;
    the state's words must carry `tag` (kernels.exchange)."""
    if SPLIT == 1:
        acc = tl.zeros([ROWS, BLOCK_B], dtype=ACC)
    else:
        acc = tl.zeros([SPLIT, ROWS, BLOCK_B], dtype=ACC)
    if FMA:
        row_starts = w_rows.to(tl.int64) * K
        col_starts = cols.to(tl.int64) * K
        for k in tl.range(0, K):
            w = tl.load(w_ptr + row_starts + k, mask=row_valid, other=0.0).to(ACC)
            s = load_state(state_ptr + col_starts + k, col_valid, tag, TAGGED, VALUE).to(ACC)
            acc += w[:, None] * s[None, :]
    elif RESIDENT:
        s0 = state_chunk(state_ptr, cols, col_valid, K, 0, tag, K0, SPLIT, DOT, TAGGED, VALUE)
        acc = multiply_add(w0, s0, acc, PRECISION)
        if K1 > 0:
            s1 = state_chunk(state_ptr, cols, col_valid, K, K0, tag, K1, SPLIT, DOT, TAGGED, VALUE)
            acc = multiply_add(w1, s1, acc, PRECISION)
        if K2 > 0:
            s2 = state_chunk(state_ptr, cols, col_valid, K, K0 + K1, tag, K2, SPLIT, DOT, TAGGED, VALUE)
            acc = multiply_add(w2, s2, acc, PRECISION)
    else:
        for k_start in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            w = weight_chunk(w_ptr, w_rows, row_valid, K, k_start, ROWS, BLOCK_K, SPLIT, DOT)
            s = state_chunk(state_ptr, cols, col_valid, K, k_start, tag, BLOCK_K, SPLIT, DOT, TAGGED, VALUE)
            acc = multiply_add(w, s, acc, PRECISION)
    if SPLIT > 1:
        acc = tl.sum(acc, axis=0)
    return acc
