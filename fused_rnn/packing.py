"""PackedSequence <-> the padded time-major layout [T, B, F] the recurrence ops take.

Written so that torch.compile traces packed input and TorchScript compiles it: only tensor
arithmetic on batch_sizes, no Python branch on its values. The batch size B is batch_sizes[0],
which is data; `packed_batch` takes it from a shape instead wherever one has it.
"""

from typing import List, NamedTuple, Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence


def packed_batch(packed: PackedSequence, states: Optional[List[Tensor]]) -> int:
    """B of a PackedSequence. In eager mode batch_sizes[0]. Traced (torch.compile, torch.jit.trace)
    the length of sorted_indices (a PackedSequence of unsorted rows has them) or the batch of the
    initial state (checked against batch_sizes[0] in eager mode) when there is one, so that B is a
    size the graph knows; else batch_sizes[0], a data-dependent size (torch.compile's fullgraph=True
    captures it; without fullgraph Dynamo breaks the graph there)."""
    if torch.jit.is_scripting():
        return int(packed.batch_sizes[0])
    if not torch.compiler.is_compiling() and not torch.jit.is_tracing():
        return int(packed.batch_sizes[0])
    if packed.sorted_indices is not None:
        return packed.sorted_indices.size(0)
    if states is not None and states[0].dim() == 3:
        return states[0].size(1)
    return int(packed.batch_sizes[0])


class Packing(NamedTuple):
    """Where the rows of a PackedSequence's data [N, F] sit in the padded grid [T, B]: row n is
    step `steps[n]` of batch row `rows[n]`, `flat[n]` = steps[n] * B + rows[n] (all [N] int64 on
    the data's device); `lengths` [B] (same device) counts each batch row's steps; `batch_sizes`
    [T] (on the CPU) is the PackedSequence's; `reversed` [N] (data's device) is the packed row of
    each row's time-reversed sequence, which packs with the same batch_sizes: row n at step t of a
    row of length L takes the row at step L - 1 - t (a permutation that is its own inverse)."""

    steps: Tensor
    rows: Tensor
    flat: Tensor
    lengths: Tensor
    batch_sizes: Tensor
    reversed: Tensor


def packed_grid(batch_sizes: Tensor, rows: int) -> Tensor:
    """The step of each of the `rows` = N packed rows of batch_sizes [T] (CPU) -> [N] int64, CPU."""
    return torch.repeat_interleave(torch.arange(batch_sizes.size(0)), batch_sizes, output_size=rows)


def step_offsets(batch_sizes: Tensor) -> Tensor:
    """The first packed row of each step: [T] = cumsum(batch_sizes) - batch_sizes."""
    return torch.cumsum(batch_sizes, 0) - batch_sizes


def flat_index(batch_sizes: Tensor, batch: int, rows: int) -> Tensor:
    """steps * B + rows of each of the N = `rows` packed rows (see Packing) -> [N] int64, CPU."""
    steps = packed_grid(batch_sizes, rows)
    return steps * batch + torch.arange(rows) - step_offsets(batch_sizes)[steps]


def previous_rows(batch_sizes: Tensor, batch: int, rows: int) -> Tensor:
    """For the packed rows past step 0 (rows B .. N-1), the packed row of the same batch row at the
    step before: row n of step t >= 1 follows row n - batch_sizes[t - 1] -> [N - B] int64, CPU."""
    later = packed_grid(batch_sizes, rows)[batch:]
    return torch.arange(batch, rows) - batch_sizes[later - 1]


def packing_of(data: Tensor, batch_sizes: Tensor, batch: int) -> Packing:
    """The Packing of a PackedSequence (data [N, F], batch_sizes [T] on the CPU, B = batch)."""
    lengths = (batch_sizes.unsqueeze(0) > torch.arange(batch).unsqueeze(1)).sum(1)
    rows = data.size(0)
    steps = packed_grid(batch_sizes, rows)
    offsets = step_offsets(batch_sizes)
    batch_rows = torch.arange(rows) - offsets[steps]
    reversed_rows = offsets[lengths[batch_rows] - 1 - steps] + batch_rows
    device = data.device
    return Packing(
        steps.to(device),
        batch_rows.to(device),
        (steps * batch + batch_rows).to(device),
        lengths.to(device),
        batch_sizes,
        reversed_rows.to(device),
    )


def padded_from_packed(data: Tensor, packing: Packing, steps: int) -> Tensor:
    """Packed data [N, F] -> padded [T, B, F] (zeros past each row's length)."""
    batch = packing.lengths.size(0)
    padded = data.new_zeros(steps * batch, data.size(1))
    # In place: out of place, index_copy would first copy the zeros into another [T * B, F].
    return padded.index_copy_(0, packing.flat, data).view(steps, batch, data.size(1))


def packed_from_padded(padded: Tensor, packing: Packing) -> Tensor:
    """Padded [T, B, F] -> packed data [N, F] (the rows inside each length, in packed order)."""
    return padded.reshape(-1, padded.size(2)).index_select(0, packing.flat)
