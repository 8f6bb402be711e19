"""The Triton attention kernels' own paths (in the interpreter without a GPU): the decoder step
split across the keys (including key ranges wholly past a row's length), against the float64
reference and against the unsplit kernel."""

import pytest
import torch

from fused_rnn import attention_ops, reference

B, TK, F, DV = 3, 100, 9, 4
LENGTHS = torch.tensor([100, 5, 49])  # row 1: every split after the first is empty


@pytest.fixture(autouse=True)
def _triton():
    if "triton" not in attention_ops.attention_backends("cpu"):
        pytest.skip("Triton cannot run on the CPU here (needs TRITON_INTERPRET=1)")


def _kernels():
    from fused_rnn.kernels import attention

    return attention


def _inputs(additive: bool, queries: int, generator: torch.Generator):
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    q, k, values = randn(B, queries, F), randn(B, TK, F), randn(B, TK, DV)
    return (q, k, randn(F) / 3, values) if additive else (q, k, values)


def _forward(function, additive, inputs, need_weights, **options):
    if additive:
        return function.additive_attention_forward(*inputs, LENGTHS, need_weights, **options)
    return function.dot_attention_forward(*inputs, LENGTHS, 0.4, need_weights, **options)


@pytest.mark.parametrize("additive", [False, True], ids=["dot", "additive"])
def test_decoder_step_splits_keys_and_matches_reference(additive):
    kernels = _kernels()
    generator = torch.Generator().manual_seed(5)
    inputs = _inputs(additive, 1, generator)
    key_blocks = -(-TK // 16)
    assert kernels.forward_splits(B, key_blocks, torch.device("cpu")) > 1
    got = _forward(kernels, additive, inputs, True)
    expected = _forward(reference, additive, inputs, True)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)

    grad_context = torch.randn(B, 1, DV, generator=generator, dtype=torch.float64)
    context, lse, weights = expected
    if additive:
        got = kernels.additive_attention_backward(grad_context, None, *inputs, LENGTHS, context, lse, None)
        want = reference.additive_attention_backward(grad_context, None, *inputs, LENGTHS, context, lse, None)
    else:
        got = kernels.dot_attention_backward(grad_context, None, *inputs, LENGTHS, context, lse, None, 0.4)
        want = reference.dot_attention_backward(grad_context, None, *inputs, LENGTHS, context, lse, None, 0.4)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("splits", [1, 2, 7])
def test_split_count_does_not_change_results(splits):
    kernels = _kernels()
    inputs = _inputs(False, 3, torch.Generator().manual_seed(6))
    unsplit = kernels._forward(*inputs[:2], None, inputs[2], LENGTHS, 0.4, False, splits=1)
    split = kernels._forward(*inputs[:2], None, inputs[2], LENGTHS, 0.4, False, splits=splits)
    torch.testing.assert_close(split[0], unsplit[0], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(split[1], unsplit[1], rtol=1e-13, atol=1e-13)


def test_split_only_when_query_blocks_leave_processors_idle():
    kernels = _kernels()
    cpu = torch.device("cpu")
    processors = kernels.INTERPRETER_PROCESSORS
    assert kernels.forward_splits(2 * processors, 50, cpu) == 1
    assert kernels.forward_splits(1, 50, cpu) == 2 * processors
    assert kernels.forward_splits(1, 3, cpu) == 3
