"""The attention providers: the naive eager formula (also the float64 ground truth), PyTorch's
scaled_dot_product_attention for the dot-product scores, and fused_rnn's attention modules.

Every attention provider computes, for query [B, Tq, D] ([B, D] for one decoder step), keys and
values [B, Tk, D] and key_lengths [B]: scores -> mask keys at or past each row's length -> softmax
over keys -> context = weights @ values ([B, Tq, D] or [B, D]). Scores (DESIGN.md):
additive v . tanh(W_q q + W_k k + bias), dot q . k, scaled_dot q . k / sqrt(D), general q^T W k.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Built, Provider, cast
from .shapes import ATTENTION_OPS, ATTENTION_SCORES
from .workloads import Weights


def _as_blocks(query: Tensor) -> Tensor:
    """query [B, Tq, D] or [B, D] -> [B, Tq, D]."""
    return query if query.dim() == 3 else query.unsqueeze(1)


def _like_query(context: Tensor, query: Tensor) -> Tensor:
    """context [B, Tq, D] -> the layout of the query ([B, D] for a decoder step)."""
    return context if query.dim() == 3 else context.squeeze(1)


def _key_mask(key_lengths: Tensor, key_steps: int) -> Tensor:
    """[B, 1, Tk] bool: True where the key is inside its row's length."""
    positions = torch.arange(key_steps, device=key_lengths.device)
    return (positions.unsqueeze(0) < key_lengths.unsqueeze(1)).unsqueeze(1)


def naive_attention(score: str, params: Weights, query: Tensor, keys: Tensor, values: Tensor, key_lengths: Tensor) -> Tensor:
    """The eager formula: materialises the scores (and for additive the [B, Tq, Tk, A] tanh)."""
    q = _as_blocks(query)
    if score == "additive":
        projected_q = F.linear(q, params["w_query"])  # [B, Tq, A]
        projected_k = F.linear(keys, params["w_key"], params["bias"])  # [B, Tk, A]
        hidden = torch.tanh(projected_q.unsqueeze(2) + projected_k.unsqueeze(1))  # [B, Tq, Tk, A]
        scores = hidden @ params["v"]  # [B, Tq, Tk]
    else:
        if score == "general":
            q = q @ params["weight"]
        scores = q @ keys.transpose(1, 2)
        if score == "scaled_dot":
            scores = scores / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~_key_mask(key_lengths, keys.shape[1]), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return _like_query(weights @ values, query)


class NaiveProvider(Provider):
    name = "naive"
    ops = ATTENTION_OPS

    def build(self, op, shape, weights, dtype, device) -> Built:
        params = cast(weights, dtype, device)
        score = ATTENTION_SCORES[op]
        return Built(run=lambda *inputs: naive_attention(score, params, *inputs), params=params)


class SdpaProvider(Provider):
    """torch.nn.functional.scaled_dot_product_attention with a boolean key mask (the general
    score projects the queries by W first)."""

    name = "sdpa"
    ops = ("dot_attention", "scaled_dot_attention", "general_attention")

    def build(self, op, shape, weights, dtype, device) -> Built:
        params = cast(weights, dtype, device)
        score = ATTENTION_SCORES[op]

        def run(query: Tensor, keys: Tensor, values: Tensor, key_lengths: Tensor) -> Tensor:
            q = _as_blocks(query)
            if score == "general":
                q = q @ params["weight"]
            scale = 1.0 / math.sqrt(q.shape[-1]) if score == "scaled_dot" else 1.0
            mask = _key_mask(key_lengths, keys.shape[1]).unsqueeze(1)  # [B, 1, 1, Tk]
            context = F.scaled_dot_product_attention(
                q.unsqueeze(1), keys.unsqueeze(1), values.unsqueeze(1), attn_mask=mask, scale=scale
            )
            return _like_query(context.squeeze(1), query)

        return Built(run=run, params=params)


def missing_fused_module(op: str) -> Optional[str]:
    """Why fused_rnn cannot run attention op `op` at all (its module is missing), or None."""
    import fused_rnn

    name = "AdditiveAttention" if ATTENTION_SCORES[op] == "additive" else "LuongAttention"
    if getattr(fused_rnn, name, None) is None:
        return f"fused_rnn.{name} is not in this build of fused_rnn"
    return None


def build_fused(op: str, shape, weights: Weights, dtype: torch.dtype, device: torch.device, backend: str) -> Built:
    """fused_rnn.AdditiveAttention / LuongAttention(backend=...) with the point's weights."""
    import fused_rnn

    score = ATTENTION_SCORES[op]
    if score == "additive":
        module: nn.Module = fused_rnn.AdditiveAttention(shape.dim, shape.dim, shape.attn, backend=backend)
    else:
        module = fused_rnn.LuongAttention(shape.dim, shape.dim, score=score, backend=backend)
    module.to(device=device, dtype=dtype)
    module.load_state_dict(cast(weights, dtype, device))

    def run(query: Tensor, keys: Tensor, values: Tensor, key_lengths: Tensor) -> Tensor:
        context, _ = module(query, keys, values, key_lengths=key_lengths)
        return context

    return Built(run=run, params=dict(module.named_parameters()))
