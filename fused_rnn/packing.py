"""PackedSequence data to a padded batch and back, each as one gather or scatter.

torch.nn.utils.rnn.pad_packed_sequence copies the rows of each run of equal batch sizes into a
slice of the padded output, and autograd keeps one copy-into-slice node per run: its backward
copies the whole padded gradient once per run (quadratic in the number of distinct lengths, 20x
the recurrence's own time for 64 rows of 256 steps). Here the packed rows land in the padded
tensor through one index_copy, whose backward is one index_select.
"""

from __future__ import annotations

import torch
from torch import Tensor


def packed_positions(batch_sizes: Tensor) -> Tensor:
    """batch_sizes [T] (CPU int64, non-increasing) -> [N] int64: the position t * B + b in a
    flattened [T, B] padded batch of each packed row (step t, row b of the packed order)."""
    steps = torch.repeat_interleave(torch.arange(batch_sizes.numel()), batch_sizes)
    first_row_of_step = torch.cumsum(batch_sizes, 0) - batch_sizes
    rows = torch.arange(steps.numel()) - first_row_of_step[steps]
    return steps * batch_sizes[0] + rows


def padded_from_packed(data: Tensor, batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    """PackedSequence data [N, *] and batch_sizes [T] -> padded [T, B, *] in the packed (length-
    sorted) row order with zeros past each length, and lengths [B] (CPU int64): what
    pad_packed_sequence returns, through one differentiable scatter."""
    steps, batch = batch_sizes.numel(), int(batch_sizes[0])
    positions = packed_positions(batch_sizes).to(data.device)
    padded = data.new_zeros(steps * batch, *data.shape[1:]).index_copy(0, positions, data)
    lengths = (batch_sizes[None, :] > torch.arange(batch)[:, None]).sum(1)
    return padded.view(steps, batch, *data.shape[1:]), lengths
