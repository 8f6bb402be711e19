"""Attention modules over the fused scoring ops: AdditiveAttention (Bahdanau) and LuongAttention.

Both take `forward(query, keys, values=None, *, key_lengths=None, need_weights=False)`:

    query        [B, Tq, Dq], or [B, Dq] for one decoder step
    keys         [B, Tk, Dk]
    values       [B, Tk, Dv] (default: keys)
    key_lengths  [B] integer, in 1..Tk: keys at positions >= key_lengths[b] get zero weight
    -> context   [B, Tq, Dv] (or [B, Dv]), weights [B, Tq, Tk] (or [B, Tk]) when need_weights, else None

The projections are GEMMs through autograd (W_q q + bias and W_k k for the additive score, q W for
"general"); scores, masking, softmax and the weighted sum of values are one fused op
(`fused_rnn.attention_ops`). `backend` ("auto", "reference", "triton", "native") is a keyword and a
settable attribute, as on the recurrent modules.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import attention_ops
from .modules import _BackendMixin
from .op_library import call_eagerly

LUONG_SCORES = ("dot", "scaled_dot", "general")


def _check_size(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than zero, got {value}")


class _Attention(_BackendMixin, nn.Module):
    """Argument checks and the decoder-step reshaping shared by both attention modules."""

    query_size: int
    key_size: int

    def _resolved_backend(self, device: torch.device) -> str:
        return attention_ops.resolve_attention_backend(self._backend, device)

    def _prepare(
        self, query: Tensor, keys: Tensor, values: Optional[Tensor], key_lengths: Optional[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor], bool]:
        """Checks the arguments -> (query [B, Tq, Dq], keys, values, key_lengths int64 on the keys'
        device or None, whether the query was one decoder step [B, Dq])."""
        name = type(self).__name__
        dtype = self._parameter_dtype(query.device)
        if query.dim() not in (2, 3):
            raise ValueError(
                f"{name}: query must have shape [B, Tq, query_size] or [B, query_size], "
                f"got {list(query.shape)}"
            )
        step = query.dim() == 2
        query = query.unsqueeze(1) if step else query
        if keys.dim() != 3:
            raise ValueError(f"{name}: keys must have shape [B, Tk, key_size], got {list(keys.shape)}")
        values = keys if values is None else values
        if values.dim() != 3:
            raise ValueError(f"{name}: values must have shape [B, Tk, Dv], got {list(values.shape)}")
        if query.shape[-1] != self.query_size:
            raise ValueError(
                f"{name}: query must have {self.query_size} features (query_size), "
                f"got shape {list(query.shape)}"
            )
        if keys.shape[-1] != self.key_size:
            raise ValueError(
                f"{name}: keys must have {self.key_size} features (key_size), got shape {list(keys.shape)}"
            )
        batch = query.shape[0]
        for arg, tensor in (("keys", keys), ("values", values)):
            if tensor.shape[0] != batch:
                raise ValueError(
                    f"{name}: {arg} must have batch size {batch} (the query's), got shape {list(tensor.shape)}"
                )
        if keys.shape[1] < 1:
            raise ValueError(f"{name}: keys must hold at least one key, got shape {list(keys.shape)}")
        if values.shape[1] != keys.shape[1]:
            raise ValueError(
                f"{name}: values must have Tk = {keys.shape[1]} positions (the keys'), "
                f"got shape {list(values.shape)}"
            )
        for arg, tensor in (("query", query), ("keys", keys), ("values", values)):
            if not tensor.is_floating_point():
                raise TypeError(f"{name}: {arg} must be a floating-point tensor, got {tensor.dtype}")
            if dtype is not None and tensor.dtype != dtype:
                raise TypeError(
                    f"{name}: {arg} must have dtype {dtype} (the parameters' dtype), got {tensor.dtype}"
                )
            if tensor.dtype != query.dtype:
                raise TypeError(f"{name}: {arg} must have dtype {query.dtype} (the query's), got {tensor.dtype}")
            if tensor.device != query.device:
                raise ValueError(
                    f"{name}: {arg} must be on {query.device} (the query's device), got {tensor.device}"
                )
        return query, keys, values, self._key_lengths(key_lengths, batch, keys), step

    def _parameter_dtype(self, device: torch.device) -> Optional[torch.dtype]:
        """The dtype inputs must have: the parameters' (any, under autocast, where the projections
        set the dtype the scoring op runs in)."""
        parameter = next(self.parameters(), None)
        if parameter is None or torch.is_autocast_enabled(device.type):
            return None
        return parameter.dtype

    def _key_lengths(self, key_lengths: Optional[Tensor], batch: int, keys: Tensor) -> Optional[Tensor]:
        if key_lengths is None:
            return None
        name = type(self).__name__
        if not isinstance(key_lengths, Tensor):
            key_lengths = torch.as_tensor(key_lengths)
        if key_lengths.is_floating_point() or key_lengths.is_complex() or key_lengths.dtype == torch.bool:
            raise TypeError(f"{name}: key_lengths must be an integer tensor, got {key_lengths.dtype}")
        if tuple(key_lengths.shape) != (batch,):
            raise ValueError(
                f"{name}: key_lengths must have shape [B] = [{batch}], got {list(key_lengths.shape)}"
            )
        return key_lengths.to(device=keys.device, dtype=torch.int64)

    @staticmethod
    def _finish(context: Tensor, weights: Tensor, need_weights: bool, step: bool):
        weights = weights if need_weights else None
        if step:
            context = context.squeeze(1)
            weights = None if weights is None else weights.squeeze(1)
        return context, weights


class AdditiveAttention(_Attention):
    """Bahdanau attention: score(i, j) = v . tanh(W_q q_i + W_k k_j + bias).

    Parameters: w_query [attn_size, query_size], w_key [attn_size, key_size], bias [attn_size],
    v [attn_size], initialised uniformly in +-1/sqrt(fan_in) like torch.nn.Linear
    (fan_in: query_size for w_query and bias, key_size for w_key, attn_size for v).
    """

    def __init__(self, query_size: int, key_size: int, attn_size: int, *, backend: str = "auto",
                 device=None, dtype=None) -> None:
        super().__init__()
        for name, value in (("query_size", query_size), ("key_size", key_size), ("attn_size", attn_size)):
            _check_size(name, value)
        self.query_size, self.key_size, self.attn_size = query_size, key_size, attn_size
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.w_query = nn.Parameter(torch.empty(attn_size, query_size, **factory))
        self.w_key = nn.Parameter(torch.empty(attn_size, key_size, **factory))
        self.bias = nn.Parameter(torch.empty(attn_size, **factory))
        self.v = nn.Parameter(torch.empty(attn_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for parameter, fan_in in (
            (self.w_query, self.query_size),
            (self.bias, self.query_size),
            (self.w_key, self.key_size),
            (self.v, self.attn_size),
        ):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(parameter, -bound, bound)

    def extra_repr(self) -> str:
        s = f"query_size={self.query_size}, key_size={self.key_size}, attn_size={self.attn_size}"
        return s + (f", backend={self.backend!r}" if self.backend != "auto" else "")

    def forward(self, query: Tensor, keys: Tensor, values: Optional[Tensor] = None, *,
                key_lengths: Optional[Tensor] = None, need_weights: bool = False):
        query, keys, values, key_lengths, step = self._prepare(query, keys, values, key_lengths)
        pq = F.linear(query, self.w_query, self.bias)  # [B, Tq, A]
        pk = F.linear(keys, self.w_key)  # [B, Tk, A]
        dtype = pq.dtype  # differs from the parameters' only under autocast
        context, _, weights = call_eagerly(
            attention_ops.additive_attention_forward, pq, pk.to(dtype), self.v.to(dtype), values.to(dtype),
            key_lengths, need_weights, self._resolved_backend(query.device),
        )
        return self._finish(context, weights, need_weights, step)


class LuongAttention(_Attention):
    """Luong attention: score "dot" q . k, "scaled_dot" q . k / sqrt(key_size), "general" q^T W k.

    "general" has the parameter weight [query_size, key_size], initialised uniformly in
    +-1/sqrt(query_size) like torch.nn.Bilinear; "dot" and "scaled_dot" have no parameters and need
    query_size == key_size.
    """

    def __init__(self, query_size: int, key_size: int, score: str = "general", *, backend: str = "auto",
                 device=None, dtype=None) -> None:
        super().__init__()
        _check_size("query_size", query_size)
        _check_size("key_size", key_size)
        if score not in LUONG_SCORES:
            raise ValueError(f"score must be one of {list(LUONG_SCORES)}, got {score!r}")
        if score != "general" and query_size != key_size:
            raise ValueError(
                f"score {score!r} needs query_size == key_size, got query_size={query_size} "
                f"and key_size={key_size} (use score='general' for different sizes)"
            )
        self.query_size, self.key_size, self.score = query_size, key_size, score
        self.backend = backend
        if score == "general":
            self.weight = nn.Parameter(torch.empty(query_size, key_size, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            bound = 1.0 / math.sqrt(self.query_size)
            nn.init.uniform_(self.weight, -bound, bound)

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.key_size) if self.score == "scaled_dot" else 1.0

    def extra_repr(self) -> str:
        s = f"query_size={self.query_size}, key_size={self.key_size}, score={self.score!r}"
        return s + (f", backend={self.backend!r}" if self.backend != "auto" else "")

    def forward(self, query: Tensor, keys: Tensor, values: Optional[Tensor] = None, *,
                key_lengths: Optional[Tensor] = None, need_weights: bool = False):
        query, keys, values, key_lengths, step = self._prepare(query, keys, values, key_lengths)
        projected = query if self.weight is None else query @ self.weight  # [B, Tq, Dk]
        dtype = projected.dtype  # differs from the inputs' only under autocast
        context, _, weights = call_eagerly(
            attention_ops.dot_attention_forward, projected, keys.to(dtype), values.to(dtype), key_lengths, self.scale,
            need_weights, self._resolved_backend(query.device),
        )
        return self._finish(context, weights, need_weights, step)
