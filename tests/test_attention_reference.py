"""The attention reference against an independent eager formula, and its written-out backward
against autograd through its forward (float64)."""

import pytest
import torch

from fused_rnn import reference

B, TQ, TK, A, D, DV = 3, 4, 7, 5, 6, 2
LENGTHS = torch.tensor([7, 1, 4])


def _inputs(score: str, generator: torch.Generator) -> list[torch.Tensor]:
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    if score == "additive":
        return [randn(B, TQ, A), randn(B, TK, A), randn(A), randn(B, TK, DV)]
    return [randn(B, TQ, D), randn(B, TK, D), randn(B, TK, DV)]


def _forward(score, inputs, lengths, need_weights=True):
    if score == "additive":
        return reference.additive_attention_forward(*inputs, lengths, need_weights)
    return reference.dot_attention_forward(*inputs, lengths, 0.375, need_weights)


def _backward(score, grad_context, grad_weights, inputs, lengths, context, lse, weights):
    if score == "additive":
        return reference.additive_attention_backward(
            grad_context, grad_weights, *inputs, lengths, context, lse, weights
        )
    return reference.dot_attention_backward(
        grad_context, grad_weights, *inputs, lengths, context, lse, weights, 0.375
    )


def _eager(score, inputs, lengths):
    """The textbook formula: scores, masked_fill(-inf), torch.softmax, weights @ values."""
    if score == "additive":
        pq, pk, v, values = inputs
        scores = torch.tanh(pq[:, :, None, :] + pk[:, None, :, :]) @ v
    else:
        q, k, values = inputs
        scores = 0.375 * torch.einsum("bid,bjd->bij", q, k)
    if lengths is not None:
        keep = torch.arange(TK)[None, None, :] < lengths[:, None, None]
        scores = scores.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ values, torch.logsumexp(scores, dim=-1), weights


@pytest.mark.parametrize("score", ["additive", "dot"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_forward_matches_eager_formula(score, lengths):
    inputs = _inputs(score, torch.Generator().manual_seed(1))
    for got, want in zip(_forward(score, inputs, lengths), _eager(score, inputs, lengths)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    context, _, empty = _forward(score, inputs, lengths, need_weights=False)
    assert empty.numel() == 0


@pytest.mark.parametrize("score", ["additive", "dot"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("weights_grad", [False, True], ids=["context-grad", "weights-grad"])
def test_backward_matches_autograd(score, lengths, weights_grad):
    generator = torch.Generator().manual_seed(2)
    inputs = [t.requires_grad_() for t in _inputs(score, generator)]
    context, lse, weights = _eager(score, inputs, lengths)
    grad_context = torch.randn(context.shape, generator=generator, dtype=torch.float64)
    grad_weights = torch.randn(weights.shape, generator=generator, dtype=torch.float64) if weights_grad else None
    outputs = [context] + ([weights] if weights_grad else [])
    grads = [grad_context] + ([grad_weights] if weights_grad else [])
    expected = torch.autograd.grad(outputs, inputs, grads)
    with torch.no_grad():
        context, lse, weights = _forward(score, inputs, lengths)
        got = _backward(score, grad_context, grad_weights, inputs, lengths, context, lse,
                        weights if weights_grad else None)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-12)
