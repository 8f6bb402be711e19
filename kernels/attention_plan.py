"""Tiles of the Triton attention kernels: a plain function of (score family, stage, shape, dtype),
so that the tiles an H100 would get can be compiled and checked on any machine
(tests/test_triton_compile.py compiles them for sm_90 over B in {1, 32}, Tq in {1, 128, 512, 2048},
Tk in {128, 512, 2048, 4096}, A = D = Dv in {64, 128, 256}, float16, bfloat16 and float32, forward
and backward, and asserts shared memory <= 232,448 bytes and no spills).

Stages: "forward" (attention_forward_kernel), "backward_kv" (one program per key block),
"backward_q" (one program per query block). A tile is BLOCK_Q queries x BLOCK_K keys, BLOCK_F
features (dot: the padded feature size, one tl.dot; additive: the chunk of the attention size the
[BLOCK_Q, BLOCK_K, BLOCK_F] hidden slice is computed in) and BLOCK_DV value features; CHUNK > 0
makes the dot score's two products over the feature and value sizes (S = q k^T, dP = dO V^T) read
their operands CHUNK columns at a time, for float32 on CUDA cores, where a product over 128 or
more columns would not fit a thread's registers.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_TILE = 16  # tl.dot's smallest dimension


@dataclass(frozen=True)
class Blocks:
    """Tile sizes of one launch: queries, keys, features (dot: the padded feature size; additive:
    the chunk of the attention size), values, and warps."""

    q: int
    k: int
    f: int
    dv: int
    warps: int
    chunk: int = 0  # dot scores: the score and dP products read their operands this many columns at a time

    def meta(self) -> dict:
        return dict(BLOCK_Q=self.q, BLOCK_K=self.k, BLOCK_F=self.f, BLOCK_DV=self.dv, CHUNK=self.chunk,
                    num_warps=self.warps)


def padded(size: int) -> int:
    """Smallest power of two >= size, at least 16 (tl.dot's minimum)."""
    return max(MIN_TILE, 1 << max(0, size - 1).bit_length())


def attention_blocks(additive: bool, stage: str, queries: int, features: int, value_size: int,
                     element_size: int, interpreting: bool) -> Blocks:
    """Tiles for `stage` of the additive (pq, pk of `features` = A columns) or dot (q, k of
    `features` = D columns) score over `queries` queries, values of `value_size` columns, inputs of
    `element_size` bytes."""
    dv = padded(value_size)
    if interpreting:  # small tiles, several chunks of A (and of wider dot features) in the tests
        chunk = min(8, 1 << max(0, max(features, 1) - 1).bit_length())
        if additive:
            return Blocks(16, 16, chunk, dv, 4)
        return Blocks(16, 16, padded(features), dv, 4, chunk=8 if max(features, value_size) > 8 else 0)
    few_queries = queries <= 16
    if element_size >= 4:  # float32 / float64 products run on CUDA cores: smallest tiles
        if additive:
            return Blocks(16, 16, 4, dv, 4)
        f = padded(features)
        # 128 or more features per row do not fit a thread's registers whole
        return Blocks(16, 16, f, dv, 8, chunk=32 if max(f, dv) >= 128 else 0)
    if additive:
        block_q = 16 if few_queries or stage == "backward_kv" else 32
        return Blocks(block_q, 32, 8, dv, 4)
    f = padded(features)
    wide = max(f, dv) > 128
    if stage == "forward":
        if few_queries:
            return Blocks(16, 64, f, dv, 4)
        return Blocks(32, 64, f, dv, 4) if wide else Blocks(64, 64, f, dv, 8)
    if stage == "backward_kv" and (few_queries or wide):  # wide 32-query tiles spill with grad_weights
        return Blocks(16, 32, f, dv, 8 if wide else 4)
    return Blocks(32, 32, f, dv, 8) if wide else Blocks(32, 64, f, dv, 8)
