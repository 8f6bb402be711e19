"""Plain-PyTorch additive and Luong attention with fused_rnn's parameter names and call signature.

The `--modules torch` path of the seq2seq example uses these in place of fused_rnn.AdditiveAttention
and fused_rnn.LuongAttention, so the two paths differ only in who computes the same formulas.
forward(query [B, Dq], keys [B, Tk, Dk], values [B, Tk, Dv] = keys, *, key_lengths [B],
need_weights) -> (context [B, Dv], weights [B, Tk] or None); one decoder step, as the example uses it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn


def _attend(scores: Tensor, values: Tensor, key_lengths: Optional[Tensor], need_weights: bool):
    """scores [B, Tk] -> softmax over keys below each row's length -> (context [B, Dv], weights)."""
    if key_lengths is not None:
        positions = torch.arange(scores.shape[1], device=scores.device)
        scores = scores.masked_fill(positions[None, :] >= key_lengths.to(scores.device)[:, None], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    context = torch.bmm(weights.unsqueeze(1), values).squeeze(1)
    return context, (weights if need_weights else None)


class TorchAdditiveAttention(nn.Module):
    """score(q, k_j) = v · tanh(W_q q + W_k k_j + bias). Parameters w_query [A, Dq], w_key [A, Dk],
    bias [A], v [A]."""

    def __init__(self, query_size: int, key_size: int, attn_size: int) -> None:
        super().__init__()
        self.w_query = nn.Parameter(torch.empty(attn_size, query_size))
        self.w_key = nn.Parameter(torch.empty(attn_size, key_size))
        self.bias = nn.Parameter(torch.empty(attn_size))
        self.v = nn.Parameter(torch.empty(attn_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in ±1/sqrt(fan_in), drawn in fused_rnn.AdditiveAttention's order (same seed, same
        values): fan_in is query_size for w_query and bias, key_size for w_key, attn_size for v."""
        for parameter, fan_in in ((self.w_query, self.w_query.shape[1]), (self.bias, self.w_query.shape[1]),
                                  (self.w_key, self.w_key.shape[1]), (self.v, self.v.shape[0])):
            nn.init.uniform_(parameter, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, query: Tensor, keys: Tensor, values: Optional[Tensor] = None, *,
                key_lengths: Optional[Tensor] = None, need_weights: bool = False):
        projected = torch.tanh((query @ self.w_query.T + self.bias).unsqueeze(1) + keys @ self.w_key.T)
        scores = projected @ self.v
        return _attend(scores, keys if values is None else values, key_lengths, need_weights)


class TorchLuongAttention(nn.Module):
    """score(q, k_j) = q · k_j ("dot"), q · k_j / sqrt(Dk) ("scaled_dot") or qᵀ W k_j ("general",
    parameter weight [Dq, Dk])."""

    def __init__(self, query_size: int, key_size: int, score: str = "general") -> None:
        super().__init__()
        if score not in ("dot", "scaled_dot", "general"):
            raise ValueError(f"score must be 'dot', 'scaled_dot' or 'general', got {score!r}")
        if score != "general" and query_size != key_size:
            raise ValueError(f"score={score!r} needs query_size == key_size, got {query_size} and {key_size}")
        self.score = score
        if score == "general":
            self.weight = nn.Parameter(torch.empty(query_size, key_size))
            bound = 1 / math.sqrt(query_size)  # as fused_rnn.LuongAttention
            nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, query: Tensor, keys: Tensor, values: Optional[Tensor] = None, *,
                key_lengths: Optional[Tensor] = None, need_weights: bool = False):
        if self.score == "general":
            query = query @ self.weight
        scores = torch.bmm(keys, query.unsqueeze(2)).squeeze(2)
        if self.score == "scaled_dot":
            scores = scores / math.sqrt(keys.shape[-1])
        return _attend(scores, keys if values is None else values, key_lengths, need_weights)
