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
    step `steps[n]` of batch row `rows[n]` (both [N] int64 on the data's device); `lengths` [B]
    (same device) counts each batch row's steps."""

    steps: Tensor
    rows: Tensor
    lengths: Tensor


def packing_of(data: Tensor, batch_sizes: Tensor, batch: int) -> Packing:
    """The Packing of a PackedSequence (data [N, F], batch_sizes [T] on the CPU, B = batch)."""
    lengths = (batch_sizes.unsqueeze(0) > torch.arange(batch).unsqueeze(1)).sum(1)
    rows = data.size(0)
    steps = torch.repeat_interleave(torch.arange(batch_sizes.size(0)), batch_sizes, output_size=rows)
    first_row_of_step = torch.cumsum(batch_sizes, 0) - batch_sizes
    batch_rows = torch.arange(rows) - first_row_of_step[steps]
    return Packing(steps.to(data.device), batch_rows.to(data.device), lengths.to(data.device))


def padded_from_packed(data: Tensor, packing: Packing, steps: int) -> Tensor:
    """Packed data [N, F] -> padded [T, B, F] (zeros past each row's length)."""
    padded = data.new_zeros(steps, packing.lengths.size(0), data.size(1))
    return padded.index_put((packing.steps, packing.rows), data)


def packed_from_padded(padded: Tensor, packing: Packing) -> Tensor:
    """Padded [T, B, F] -> packed data [N, F] (the rows inside each length, in packed order)."""
    return padded[packing.steps, packing.rows]
