"""Deterministic weights and inputs of a benchmark point, shared by every provider.

Weights are drawn once per point in float64 on the CPU, named as torch.nn names them (recurrence:
weight_ih_l0 [G*H, I], weight_hh_l0 [G*H, H], bias_ih_l0 and bias_hh_l0 [G*H], and the same of
layers 1.. with inputs of size H for a StepwiseShape of several layers) or as
fused_rnn's attention modules name them (w_query [A, D], w_key [A, D], bias [A], v [A];
weight [D, D] for the general score). A provider casts them to its dtype and device.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .shapes import ATTENTION_SCORES, GATES, AttentionShape, PackedShape, RecurrentShape, Shape

Weights = dict[str, Tensor]


def _uniform(generator: torch.Generator, bound: float, *shape: int) -> Tensor:
    return (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def make_weights(op: str, shape: Shape, seed: int = 0) -> Weights:
    """float64 CPU weights of `op` at `shape`, scaled like the modules' own initialisation."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(shape, RecurrentShape):
        gates = GATES[op] * shape.hidden
        bound = 1.0 / math.sqrt(shape.hidden)
        weights = {}
        for layer in range(getattr(shape, "layers", 1)):
            inputs = shape.input_size if layer == 0 else shape.hidden
            weights[f"weight_ih_l{layer}"] = _uniform(generator, bound, gates, inputs)
            weights[f"weight_hh_l{layer}"] = _uniform(generator, bound, gates, shape.hidden)
            weights[f"bias_ih_l{layer}"] = _uniform(generator, bound, gates)
            weights[f"bias_hh_l{layer}"] = _uniform(generator, bound, gates)
        return weights
    score = ATTENTION_SCORES[op]
    bound = 1.0 / math.sqrt(shape.dim)
    if score == "additive":
        return {
            "w_query": _uniform(generator, bound, shape.attn, shape.dim),
            "w_key": _uniform(generator, bound, shape.attn, shape.dim),
            "bias": _uniform(generator, bound, shape.attn),
            "v": _uniform(generator, 1.0 / math.sqrt(shape.attn), shape.attn),
        }
    if score == "general":
        return {"weight": _uniform(generator, bound, shape.dim, shape.dim)}
    return {}


def make_inputs(
    op: str, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 1
) -> tuple[Optional[Tensor], ...]:
    """The inputs of `op` at `shape`: (x [T, B, I],) for a recurrence; (query [B, Tq, D] or
    [B, D], keys [B, Tk, D], values [B, Tk, D], key_lengths [B] int64 in [ceil(Tk/2), Tk]) for
    attention. Drawn in float32 on the CPU from `seed`, then cast, so every dtype and device sees
    the same values up to rounding."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*sizes: int) -> Tensor:
        return torch.randn(*sizes, generator=generator).to(device=device, dtype=dtype)

    if isinstance(shape, RecurrentShape):
        return (normal(shape.steps, shape.batch, shape.input_size),)
    assert isinstance(shape, AttentionShape)
    query_sizes = (shape.batch, shape.dim) if shape.query_steps == 1 else (shape.batch, shape.query_steps, shape.dim)
    query = normal(*query_sizes)
    keys = normal(shape.batch, shape.key_steps, shape.dim)
    values = normal(shape.batch, shape.key_steps, shape.dim)
    shortest = (shape.key_steps + 1) // 2
    lengths = torch.randint(shortest, shape.key_steps + 1, (shape.batch,), generator=generator)
    return query, keys, values, lengths.to(device)


def packed_lengths(shape: PackedShape, seed: int = 3) -> Tensor:
    """The row lengths of a packed point: [B] int64 drawn uniformly from [ceil(T/4), T], sorted
    by decreasing length as a PackedSequence holds its rows, so that packing the point's input
    permutes no rows (the same for every provider and dtype)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint((shape.steps + 3) // 4, shape.steps + 1, (shape.batch,), generator=generator)
    return lengths.sort(descending=True).values


def output_sizes(shape: Shape) -> tuple[int, ...]:
    """The shape of the op's output: [T, B, H] for a recurrence, the query's for attention."""
    if isinstance(shape, RecurrentShape):
        return (shape.steps, shape.batch, shape.hidden)
    if shape.query_steps == 1:
        return (shape.batch, shape.dim)
    return (shape.batch, shape.query_steps, shape.dim)


def make_output_grad(shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 2) -> Tensor:
    """A fixed random gradient for the op's output (the same values for every provider up to
    rounding to `dtype`)."""
    generator = torch.Generator().manual_seed(seed)
    grad = torch.randn(output_sizes(shape), generator=generator)
    return grad.to(device=device, dtype=dtype)
