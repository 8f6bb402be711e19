"""The state the programs of a batch block exchange every phase (h, or the gate gradients), stored
with the phase that wrote it in the same word, so that readers wait for the data itself instead of
a grid barrier (NCCL's "LL" protocol).

A 16-bit value travels in an int32 word (value bits << 16 | tag), a 32-bit value in an int64 word
(value bits << 32 | tag); one aligned word is written and read as a unit, so a reader that sees the
tag it expects sees the value written with it. The tag of a word written in phase q is q + 1; a
reader in phase p expecting the output of phase q reads its words (volatile loads) again until
every tag equals q + 1 (mod 2^16 or 2^32). Buffers are double-buffered where a phase
reads and writes the same kind of state, so a slot is rewritten only two phases later, which no
program reaches before every program has read it (it needs their outputs of the phase between).
Writes are relaxed atomic exchanges and reads volatile loads, so writer and reader are both
morally strong in the PTX memory model. Each step then costs one dependent round trip through
L2, and no barrier.

float64 values would need 128-bit words: the float64 kernels exchange plain values through the
same buffers and meet at kernels.barrier's grid barrier between phases (TAGGED = False).

Host side: `exchange_buffer` allocates the words, `pack`/`unpack` convert initial and final states.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_WORDS = {2: torch.int32, 4: torch.int64}
_MASKS = {2: 0xFFFF, 4: 0xFFFFFFFF}
_VALUE_BITS = {2: torch.int16, 4: torch.int32}


def tagged(dtype: torch.dtype) -> bool:
    """Whether values of `dtype` are exchanged with their phase tag (all but float64)."""
    return dtype.itemsize in _WORDS


def exchange_buffer(shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Words for values of `dtype` (plain values for float64), every tag set to one no phase
    writes first (all ones), values zero."""
    if not tagged(dtype):
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.full(shape, _MASKS[dtype.itemsize], dtype=_WORDS[dtype.itemsize], device=device)


def pack(values: torch.Tensor, tag: int) -> torch.Tensor:
    """Values as words carrying `tag` (float64: the values themselves)."""
    if not tagged(values.dtype):
        return values
    size = values.dtype.itemsize
    bits = values.contiguous().view(_VALUE_BITS[size]).to(_WORDS[size]) & _MASKS[size]
    return (bits << (8 * size)) | (tag & _MASKS[size])


def unpack(words: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The values of words holding `dtype` (float64: a copy)."""
    if not tagged(dtype):
        return words.clone()
    size = dtype.itemsize
    return (words >> (8 * size)).to(_VALUE_BITS[size]).view(dtype)


@triton.jit
def words_of(values, tag, VALUE: tl.constexpr):
    """values (converted to VALUE) -> words carrying `tag` (a phase number, < 2^31)."""
    if VALUE.primitive_bitwidth == 16:
        bits = values.to(VALUE).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        words = (bits << 16) | (tl.cast(tag, tl.int32) & 0xFFFF)
    else:
        bits = values.to(VALUE).to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        words = (bits << 32) | tl.cast(tag, tl.int64)
    return words


@triton.jit
def carries(words, tag, VALUE: tl.constexpr):
    """Whether each word carries `tag`."""
    if VALUE.primitive_bitwidth == 16:
        ok = (words & 0xFFFF) == (tl.cast(tag, tl.int32) & 0xFFFF)
    else:
        ok = words.to(tl.int32) == tl.cast(tag, tl.int32)  # the low 32 bits
    return ok


@triton.jit
def values_of(words, VALUE: tl.constexpr):
    """words -> their values (VALUE)."""
    if VALUE.primitive_bitwidth == 16:
        values = (words >> 16).to(tl.int16).to(VALUE, bitcast=True)
    else:
        values = (words >> 32).to(tl.int32).to(VALUE, bitcast=True)
    return values


@triton.jit
def load_state(pointers, mask, tag, TAGGED: tl.constexpr, VALUE: tl.constexpr):
    """The exchanged values at `pointers` (zero outside `mask`): TAGGED, once every word carries
    `tag` (the whole tile is read again until it does: the fewest values live across the wait);
    otherwise plain values (after a grid barrier), read past L1."""
    if TAGGED:
        words = tl.load(pointers, mask=mask, other=0, volatile=True)
        while tl.max((mask & ~carries(words, tag, VALUE)).to(tl.int32)) > 0:
            words = tl.load(pointers, mask=mask, other=0, volatile=True)
        values = values_of(words, VALUE)
    else:
        values = tl.load(pointers, mask=mask, other=0.0, cache_modifier=".cg")
    return values


@triton.jit
def store_state(pointers, values, mask, tag, TAGGED: tl.constexpr, VALUE: tl.constexpr):
    """Exchange `values` (as VALUE): TAGGED, words carrying `tag` written by relaxed atomic
    exchanges; otherwise plain stores (read after a grid barrier)."""
    if TAGGED:
        tl.atomic_xchg(pointers, words_of(values, tag, VALUE), mask=mask, sem="relaxed", scope="gpu")
    else:
        tl.store(pointers, values.to(VALUE), mask=mask)
