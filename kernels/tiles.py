"""Triton helpers shared by the recurrence kernels: tile offsets, column lengths, gates, tanh.

Conventions: tiles are transposed, [units, batch columns] (the recurrent product's output is
W_slice . h^T). A program owns BLOCK_B batch rows, its `cols`, and BLOCK_U hidden units, its
`units`; the gate rows of its units in the forward products are ordered unit-major, gate-minor
(row m = u * SLOTS + gate), SLOTS = 4 for LSTM (i, f, g, o) and GRU (r, z, n and an unused slot).
"""

import triton
import triton.language as tl


@triton.jit
def plane_tile(units, cols, row_stride):
    """[len(units), len(cols)] int64 offsets of (row cols[n], column units[m]) in a row-major
    [*, row_stride] plane."""
    return cols.to(tl.int64)[None, :] * row_stride + units[:, None]


@triton.jit
def gate_rows(pid, H, G: tl.constexpr, SLOTS: tl.constexpr, BLOCK_U: tl.constexpr):
    """The W rows of program `pid`'s gate rows m = u * SLOTS + g (W is [G*H, K], gate-major):
    -> (row index g*H + unit [SLOTS*BLOCK_U], valid mask)."""
    m = tl.arange(0, SLOTS * BLOCK_U)
    unit = pid * BLOCK_U + m // SLOTS
    gate = m % SLOTS
    return gate * H + unit, (unit < H) & (gate < G)


@triton.jit
def split_gates(acc, BLOCK_U: tl.constexpr, BLOCK_B: tl.constexpr):
    """[4*BLOCK_U, BLOCK_B] gate rows (unit-major, gate-minor) -> four [BLOCK_U, BLOCK_B] tiles."""
    acc = tl.permute(tl.reshape(acc, [BLOCK_U, 4, BLOCK_B]), [0, 2, 1])
    even, odd = tl.split(tl.reshape(acc, [BLOCK_U, BLOCK_B, 2, 2]))
    g0, g2 = tl.split(even)
    g1, g3 = tl.split(odd)
    return g0, g1, g2, g3


@triton.jit
def program_columns(lengths_ptr, B, T, first_block, HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr):
    """This program's batch columns (batch block first_block + grid axis 1), their validity, and
    the number of live steps of each: lengths[cols], or T for every column
    -> ([BLOCK_B], [BLOCK_B], [BLOCK_B] int64)."""
    cols = (first_block + tl.program_id(1)) * BLOCK_B + tl.arange(0, BLOCK_B)
    col_valid = cols < B
    if HAS_LENGTHS:
        lengths = tl.load(lengths_ptr + cols, mask=col_valid, other=0)
    else:
        lengths = tl.zeros_like(cols).to(tl.int64) + T
    return cols, col_valid, lengths


@triton.jit
def program_units(H, cols, col_valid, BLOCK_U: tl.constexpr):
    """This program's hidden units (grid axis 0), their validity, the mask of its [BLOCK_U, BLOCK_B]
    tile and the tile's offsets in a [B, H] plane."""
    units = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)
    unit_valid = units < H
    return units, unit_valid, unit_valid[:, None] & col_valid[None, :], plane_tile(units, cols, H)


@triton.jit
def tanh(x):
    """tanh through the sigmoid (float32: absolute error ~1e-7; saturates to +-1 without NaN)."""
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0
