"""Triton helpers shared by the recurrence kernels: tile offsets, weight slices, row lengths, tanh.

Conventions: a program owns BLOCK_B batch rows (`rows`) and BLOCK_H hidden units (`units`); `k`
ranges over the reduction dimension of the recurrent GEMM (BLOCK_K >= its size, masked).
"""

import triton
import triton.language as tl


@triton.jit
def tile_offsets(rows, row_stride, cols):
    """[len(rows), len(cols)] int64 offsets of (rows[i], cols[j]) in a row-major [*, row_stride] matrix."""
    return rows.to(tl.int64)[:, None] * row_stride + cols[None, :]


@triton.jit
def gate_rows_tile(w_ptr, gate, units, unit_mask, k, k_mask, H, K, DOT_DTYPE: tl.constexpr):
    """W[gate*H + units[j], k[i]] -> [BLOCK_K, BLOCK_H]: the rows of one gate for this program's
    units, transposed so that `h @ tile` is (h @ W^T) restricted to those units. W is [G*H, K]."""
    weight_rows = (gate * H + units).to(tl.int64)
    pointers = w_ptr + weight_rows[None, :] * K + k[:, None]
    tile = tl.load(pointers, mask=k_mask[:, None] & unit_mask[None, :], other=0.0)
    return tile.to(DOT_DTYPE)


@triton.jit
def gate_columns_tile(w_ptr, gate, k, k_mask, units, unit_mask, H, K, DOT_DTYPE: tl.constexpr):
    """W[gate*H + k[i], units[j]] -> [BLOCK_K, BLOCK_H]: this program's columns of one gate's rows,
    so that `d_gate @ tile` is (d_gate @ W_gate) restricted to those units. W is [G*H, K]."""
    weight_rows = (gate * H + k).to(tl.int64)
    pointers = w_ptr + weight_rows[:, None] * K + units[None, :]
    tile = tl.load(pointers, mask=k_mask[:, None] & unit_mask[None, :], other=0.0)
    return tile.to(DOT_DTYPE)


@triton.jit
def row_lengths(lengths_ptr, rows, row_mask, T, HAS_LENGTHS: tl.constexpr):
    """[BLOCK_B] number of live steps of each row: lengths[rows], or T for every row."""
    if HAS_LENGTHS:
        lengths = tl.load(lengths_ptr + rows, mask=row_mask, other=0)
    else:
        lengths = tl.zeros_like(rows).to(tl.int64) + T
    return lengths


@triton.jit
def tanh(x):
    """tanh in float32 through the sigmoid (absolute error ~1e-7; saturates to +-1 without NaN)."""
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0
