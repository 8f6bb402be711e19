"""fused_rnn.packing: PackedSequence data to a padded batch as one differentiable scatter, equal to
pad_packed_sequence forward and backward, with a backward of one node (pad_packed_sequence's
keeps one copy per run of equal batch sizes, each copying the whole gradient)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fused_rnn.packing import packing_of, padded_from_packed


@pytest.mark.parametrize("lengths", [[4, 9, 1, 7, 7], [3], [5, 5, 5]])
def test_padded_from_packed_equals_pad_packed_sequence(lengths):
    x = torch.randn(max(lengths), len(lengths), 3, dtype=torch.float64, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    expected, expected_lengths = pad_packed_sequence(PackedSequence(packed.data, packed.batch_sizes))
    packing = packing_of(packed.data, packed.batch_sizes, len(lengths))
    padded = padded_from_packed(packed.data, packing, max(lengths))
    assert torch.equal(padded, expected) and torch.equal(packing.lengths, expected_lengths)
    grad = torch.randn_like(padded)
    (want,) = torch.autograd.grad(expected, packed.data, grad, retain_graph=True)
    (got,) = torch.autograd.grad(padded, packed.data, grad)
    assert torch.equal(got, want)


def test_backward_is_one_node():
    data = torch.randn(20, 2, requires_grad=True)
    batch_sizes = torch.tensor([5, 4, 4, 3, 2, 1, 1])
    padded = padded_from_packed(data, packing_of(data, batch_sizes, 5), 7)
    nodes, stack = set(), [padded.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in nodes:
            nodes.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    copies = [n for n in nodes if "CopySlices" in type(n).__name__]
    assert not copies and len([n for n in nodes if "AccumulateGrad" not in type(n).__name__]) <= 2
