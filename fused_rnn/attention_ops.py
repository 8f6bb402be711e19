"""The attention custom ops: torch.library registration, fake functions, autograd, backend choice.
The ops are defined with `fused_rnn.op_library.define_op` (custom_op's registration without its
import of torch._dynamo on the first eager call); each name below is the op's OpOverload, which
eager callers run through `op_library.call_eagerly`.

Two score families, each a forward and a backward op taking the projected queries and keys (the
projections are GEMMs done through autograd by `fused_rnn.attention`):

    fused_rnn::additive_attention_forward (pq, pk, v, values, key_lengths, need_weights, backend)
        -> context [B, Tq, Dv], lse [B, Tq], weights [B, Tq, Tk] (or [0])
    fused_rnn::dot_attention_forward      (query, keys, values, key_lengths, scale, need_weights, backend)
        -> context, lse, weights         (dot, scaled_dot, and general with query = q @ W)
    fused_rnn::*_attention_backward       the input gradients (see `fused_rnn.reference`)

`backend` names the implementation: "reference" (fused_rnn.reference), "triton"
(fused_rnn.kernels.attention), "native" (fused_rnn.native: C++ on CPU tensors, CUDA on CUDA
tensors), or "auto" (the first of those that can run on the inputs' device). Backends receive
contiguous, validated inputs. The forward's backward calls the backward op of the same backend, which recomputes
the weights from the saved log-sum-exp; the backward ops are differentiable too (double backward),
through the float64-capable reference.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional, Union

import torch
from torch import Tensor

from . import reference
from .backends import (
    AUTO_ORDER,
    BACKEND_NAMES,
    check_backend_name,
    constant_when_traced,
    get_backend,
    resolve_backend,
    unavailable_reason,
)
from .op_library import call_eagerly, define_op, register_autograd
from .ops import contiguous, expect_shape, reference_vjp

ATTENTION_FUNCTIONS = (
    "additive_attention_forward",
    "additive_attention_backward",
    "dot_attention_forward",
    "dot_attention_backward",
)
_TRITON_ATTENTION_MODULE = "fused_rnn.kernels.attention"
FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# ----------------------------------------------------------------------------------------------
# Which module implements attention for a backend.
# ----------------------------------------------------------------------------------------------


def _attention_module(name: str) -> Optional[ModuleType]:
    """The module holding `name`'s attention functions, or None when it has none (yet)."""
    if name == "triton":
        try:
            return importlib.import_module(_TRITON_ATTENTION_MODULE)
        except ImportError:
            return None
    module = get_backend(name)
    return module if all(hasattr(module, f) for f in ATTENTION_FUNCTIONS) else None


def attention_unavailable_reason(name: str, device: Union[torch.device, str]) -> Optional[str]:
    """None when backend `name` can run attention on `device` now, else why not: the registry's
    reason, unless the backend judges its attention kernels apart (the native backend registers
    its CUDA attention kernels apart from its recurrence kernels)."""
    reason = unavailable_reason(name, device)
    if reason is None:
        return None
    try:
        judge = getattr(get_backend(name), "attention_unavailable_reason", None)
    except RuntimeError:
        return reason
    return reason if judge is None else judge(torch.device(device))


def _can_run_attention(name: str, device: torch.device) -> bool:
    return attention_unavailable_reason(name, device) is None and _attention_module(name) is not None


@constant_when_traced  # traced as its value: it imports and reads the environment
def resolve_attention_backend(name: str, device: Union[torch.device, str]) -> str:
    """The concrete backend that runs attention for `name` on `device`. "auto" takes the first
    backend of the registry's order for the device that can run attention; a named backend that
    cannot run raises the registry's RuntimeError (why, and how to get it), one without attention
    says so."""
    check_backend_name(name)
    device = torch.device(device)
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, ("reference",)):
            if _can_run_attention(candidate, device):
                return candidate
        return "reference"
    reason = attention_unavailable_reason(name, device)
    if reason is not None:
        resolve_backend(name, device)  # raises the registry's error: why, and how to get it
        raise RuntimeError(f"fused_rnn backend {name!r} cannot run attention on {device.type}: {reason}")
    if _attention_module(name) is None:
        raise RuntimeError(
            f"fused_rnn backend {name!r} does not implement attention yet; "
            f"use one of {attention_backends(device)}"
        )
    return name


def attention_backends(device: Union[torch.device, str] = "cpu") -> list[str]:
    """The backends that can run attention on `device` now (Triton on a CPU under
    TRITON_INTERPRET=1 included, though "auto" never picks it there)."""
    device = torch.device(device)
    return [name for name in BACKEND_NAMES if _can_run_attention(name, device)]


def _implementation(backend: str, device: torch.device) -> ModuleType:
    return _attention_module(resolve_attention_backend(backend, device))


# ----------------------------------------------------------------------------------------------
# Validation shared by the real and the fake implementations.
# ----------------------------------------------------------------------------------------------


def _check_floating(name: str, tensor: Tensor) -> None:
    if tensor.dtype not in FLOATING_DTYPES:
        raise RuntimeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {tensor.dtype}"
        )


def _check_like(name: str, tensor: Tensor, like: Tensor, like_name: str) -> None:
    if tensor.dtype != like.dtype:
        raise RuntimeError(
            f"{name} must have dtype {like.dtype} (the dtype of {like_name}), got {tensor.dtype}"
        )
    if tensor.device != like.device:
        raise RuntimeError(
            f"{name} must be on {like.device} (the device of {like_name}), got {tensor.device}"
        )


def _check_3d(name: str, tensor: Tensor, layout: str) -> None:
    if tensor.dim() != 3:
        raise RuntimeError(f"{name} must have shape {layout}, got {list(tensor.shape)}")


def check_key_lengths(key_lengths: Optional[Tensor], batch: int, keys: Tensor) -> None:
    """key_lengths: int64 [B] on the device of the keys (values are checked by the real op)."""
    if key_lengths is None:
        return
    if key_lengths.dtype != torch.int64:
        raise RuntimeError(f"key_lengths must have dtype torch.int64, got {key_lengths.dtype}")
    if key_lengths.device != keys.device:
        raise RuntimeError(
            f"key_lengths must be on {keys.device} (the device of the keys), got {key_lengths.device}"
        )
    expect_shape("key_lengths", key_lengths, [batch])


def check_key_lengths_range(key_lengths: Optional[Tensor], keys: int) -> None:
    """Every key length in 1..Tk (reads the values: real tensors only)."""
    if key_lengths is None or key_lengths.numel() == 0:
        return
    low, high = int(key_lengths.min()), int(key_lengths.max())
    if low < 1 or high > keys:
        raise RuntimeError(
            f"key_lengths must lie in [1, {keys}] (Tk = {keys} keys), got values in [{low}, {high}]"
        )


def _check_values(values: Tensor, batch: int, keys: int, like: Tensor, like_name: str) -> None:
    _check_3d("values", values, "[B, Tk, Dv]")
    _check_like("values", values, like, like_name)
    if values.shape[0] != batch or values.shape[1] != keys:
        raise RuntimeError(
            f"values must have shape [B, Tk, Dv] = [{batch}, {keys}, Dv] (B and Tk of the keys), "
            f"got {list(values.shape)}"
        )


def check_additive_args(
    pq: Tensor, pk: Tensor, v: Tensor, values: Tensor, key_lengths: Optional[Tensor]
) -> None:
    _check_3d("pq", pq, "[B, Tq, A]")
    _check_floating("pq", pq)
    batch, _, attn = pq.shape
    _check_3d("pk", pk, "[B, Tk, A]")
    _check_like("pk", pk, pq, "pq")
    if pk.shape[0] != batch or pk.shape[2] != attn:
        raise RuntimeError(
            f"pk must have shape [B, Tk, A] = [{batch}, Tk, {attn}] (B and A of pq), got {list(pk.shape)}"
        )
    if pk.shape[1] < 1:
        raise RuntimeError(f"pk must hold at least one key (Tk >= 1), got shape {list(pk.shape)}")
    _check_like("v", v, pq, "pq")
    expect_shape("v", v, [attn])
    _check_values(values, batch, pk.shape[1], pq, "pq")
    check_key_lengths(key_lengths, batch, pk)


def check_dot_args(
    query: Tensor, keys: Tensor, values: Tensor, key_lengths: Optional[Tensor], scale: float
) -> None:
    _check_3d("query", query, "[B, Tq, D]")
    _check_floating("query", query)
    batch, _, features = query.shape
    _check_3d("keys", keys, "[B, Tk, D]")
    _check_like("keys", keys, query, "query")
    if keys.shape[0] != batch or keys.shape[2] != features:
        raise RuntimeError(
            f"keys must have shape [B, Tk, D] = [{batch}, Tk, {features}] (B and D of query), "
            f"got {list(keys.shape)}"
        )
    if keys.shape[1] < 1:
        raise RuntimeError(f"keys must hold at least one key (Tk >= 1), got shape {list(keys.shape)}")
    _check_values(values, batch, keys.shape[1], query, "query")
    check_key_lengths(key_lengths, batch, keys)
    if not scale > 0 or scale == float("inf"):
        raise RuntimeError(f"scale must be a finite positive number, got {scale}")


def _fake_outputs(query: Tensor, values: Tensor, keys: int, need_weights: bool):
    batch, steps = query.shape[:2]
    acc = reference.accumulation_dtype(query.dtype)
    weights = values.new_empty(batch, steps, keys) if need_weights else values.new_empty(0)
    return values.new_empty(batch, steps, values.shape[2]), query.new_empty(batch, steps, dtype=acc), weights


# ----------------------------------------------------------------------------------------------
# Forward and backward ops.
# ----------------------------------------------------------------------------------------------


@define_op("fused_rnn::additive_attention_forward")
def additive_attention_forward(
    pq: Tensor,
    pk: Tensor,
    v: Tensor,
    values: Tensor,
    key_lengths: Optional[Tensor],
    need_weights: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    check_additive_args(pq, pk, v, values, key_lengths)
    check_key_lengths_range(key_lengths, pk.shape[1])
    implementation = _implementation(backend, pq.device)
    args = contiguous(pq, pk, v, values, key_lengths)
    return implementation.additive_attention_forward(*args, need_weights)


@torch.library.register_fake(additive_attention_forward)
def _(pq, pk, v, values, key_lengths, need_weights, backend):
    check_additive_args(pq, pk, v, values, key_lengths)
    return _fake_outputs(pq, values, pk.shape[1], need_weights)


@define_op("fused_rnn::additive_attention_backward")
def additive_attention_backward(
    grad_context: Tensor,
    grad_weights: Optional[Tensor],
    pq: Tensor,
    pk: Tensor,
    v: Tensor,
    values: Tensor,
    key_lengths: Optional[Tensor],
    context: Tensor,
    lse: Tensor,
    weights: Optional[Tensor],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> d_pq [B, Tq, A], d_pk [B, Tk, A], d_v [A], d_values [B, Tk, Dv]."""
    implementation = _implementation(backend, pq.device)
    args = contiguous(grad_context, grad_weights, pq, pk, v, values, key_lengths, context, lse, weights)
    return implementation.additive_attention_backward(*args)


@torch.library.register_fake(additive_attention_backward)
def _(grad_context, grad_weights, pq, pk, v, values, key_lengths, context, lse, weights, backend):
    return torch.empty_like(pq), torch.empty_like(pk), torch.empty_like(v), torch.empty_like(values)


@define_op("fused_rnn::dot_attention_forward")
def dot_attention_forward(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    key_lengths: Optional[Tensor],
    scale: float,
    need_weights: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    check_dot_args(query, keys, values, key_lengths, scale)
    check_key_lengths_range(key_lengths, keys.shape[1])
    implementation = _implementation(backend, query.device)
    args = contiguous(query, keys, values, key_lengths)
    return implementation.dot_attention_forward(*args, scale, need_weights)


@torch.library.register_fake(dot_attention_forward)
def _(query, keys, values, key_lengths, scale, need_weights, backend):
    check_dot_args(query, keys, values, key_lengths, scale)
    return _fake_outputs(query, values, keys.shape[1], need_weights)


@define_op("fused_rnn::dot_attention_backward")
def dot_attention_backward(
    grad_context: Tensor,
    grad_weights: Optional[Tensor],
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    key_lengths: Optional[Tensor],
    context: Tensor,
    lse: Tensor,
    weights: Optional[Tensor],
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> d_query [B, Tq, D], d_keys [B, Tk, D], d_values [B, Tk, Dv]."""
    implementation = _implementation(backend, query.device)
    args = contiguous(grad_context, grad_weights, query, keys, values, key_lengths, context, lse, weights)
    return implementation.dot_attention_backward(*args, scale)


@torch.library.register_fake(dot_attention_backward)
def _(grad_context, grad_weights, query, keys, values, key_lengths, context, lse, weights, scale, backend):
    return torch.empty_like(query), torch.empty_like(keys), torch.empty_like(values)


# ----------------------------------------------------------------------------------------------
# Autograd of the forward ops.
# ----------------------------------------------------------------------------------------------


def _save_forward(ctx, inputs: tuple, output: tuple, need_weights: bool, backend: str) -> None:
    context, lse, weights = output
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # an unused weights output then costs the backward nothing
    ctx.save_for_backward(*inputs, context, lse, weights if need_weights else None)
    ctx.need_weights, ctx.backend = need_weights, backend


def _backward_inputs(
    ctx, context: Tensor, weights: Optional[Tensor], grad_context: Optional[Tensor],
    grad_weights: Optional[Tensor],
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """(grad_context, grad_weights, weights) for the backward op. Grads are not materialised, so an
    unused output arrives as None: an unused context then gets a zero gradient, and the weights go
    to the backward op only together with a gradient of theirs (the backward ops take grad_weights
    and weights both or neither: weights requested for display but unused by the loss add nothing)."""
    grad_context = torch.zeros_like(context) if grad_context is None else grad_context
    if grad_weights is None or not ctx.need_weights:
        return grad_context, None, None
    return grad_context, grad_weights, weights


def _additive_setup_context(ctx, inputs, output):
    pq, pk, v, values, key_lengths, need_weights, backend = inputs
    _save_forward(ctx, (pq, pk, v, values, key_lengths), output, need_weights, backend)


def _additive_grad(ctx, grad_context, _grad_lse, grad_weights):
    pq, pk, v, values, key_lengths, context, lse, weights = ctx.saved_tensors
    grad_context, grad_weights, weights = _backward_inputs(ctx, context, weights, grad_context, grad_weights)
    d_pq, d_pk, d_v, d_values = call_eagerly(
        additive_attention_backward, grad_context, grad_weights, pq, pk, v, values, key_lengths, context, lse,
        weights, ctx.backend,
    )
    return d_pq, d_pk, d_v, d_values, None, None, None


register_autograd(additive_attention_forward, _additive_grad, setup_context=_additive_setup_context)


def _dot_setup_context(ctx, inputs, output):
    query, keys, values, key_lengths, scale, need_weights, backend = inputs
    _save_forward(ctx, (query, keys, values, key_lengths), output, need_weights, backend)
    ctx.scale = scale


def _dot_grad(ctx, grad_context, _grad_lse, grad_weights):
    query, keys, values, key_lengths, context, lse, weights = ctx.saved_tensors
    grad_context, grad_weights, weights = _backward_inputs(ctx, context, weights, grad_context, grad_weights)
    d_query, d_keys, d_values = call_eagerly(
        dot_attention_backward, grad_context, grad_weights, query, keys, values, key_lengths, context, lse, weights,
        ctx.scale, ctx.backend,
    )
    return d_query, d_keys, d_values, None, None, None, None


register_autograd(dot_attention_forward, _dot_grad, setup_context=_dot_setup_context)


# ----------------------------------------------------------------------------------------------
# Autograd of the backward ops (double backward), through the reference: the forward is
# recomputed from the original inputs, so context, lse and weights get no gradient of their own.
# ----------------------------------------------------------------------------------------------


def _additive_backward_setup_context(ctx, inputs, output):
    grad_context, grad_weights, pq, pk, v, values, key_lengths, *_ = inputs
    ctx.save_for_backward(grad_context, grad_weights, pq, pk, v, values, key_lengths)


def _additive_backward_grad(ctx, grad_d_pq, grad_d_pk, grad_d_v, grad_d_values):
    grad_context, grad_weights, pq, pk, v, values, key_lengths = ctx.saved_tensors
    need_weights = grad_weights is not None

    def backward_from_inputs(grad_context, grad_weights, pq, pk, v, values):
        context, lse, weights = reference.additive_attention_forward(
            pq, pk, v, values, key_lengths, need_weights
        )
        return reference.additive_attention_backward(
            grad_context, grad_weights, pq, pk, v, values, key_lengths, context, lse,
            weights if need_weights else None,
        )

    grads = reference_vjp(
        backward_from_inputs,
        [grad_context, grad_weights, pq, pk, v, values],
        [grad_d_pq, grad_d_pk, grad_d_v, grad_d_values],
    )
    return (*grads, None, None, None, None, None)


register_autograd(
    additive_attention_backward, _additive_backward_grad, setup_context=_additive_backward_setup_context
)


def _dot_backward_setup_context(ctx, inputs, output):
    grad_context, grad_weights, query, keys, values, key_lengths, _, _, _, scale, _ = inputs
    ctx.save_for_backward(grad_context, grad_weights, query, keys, values, key_lengths)
    ctx.scale = scale


def _dot_backward_grad(ctx, grad_d_query, grad_d_keys, grad_d_values):
    grad_context, grad_weights, query, keys, values, key_lengths = ctx.saved_tensors
    need_weights, scale = grad_weights is not None, ctx.scale

    def backward_from_inputs(grad_context, grad_weights, query, keys, values):
        context, lse, weights = reference.dot_attention_forward(
            query, keys, values, key_lengths, scale, need_weights
        )
        return reference.dot_attention_backward(
            grad_context, grad_weights, query, keys, values, key_lengths, context, lse,
            weights if need_weights else None, scale,
        )

    grads = reference_vjp(
        backward_from_inputs,
        [grad_context, grad_weights, query, keys, values],
        [grad_d_query, grad_d_keys, grad_d_values],
    )
    return (*grads, None, None, None, None, None, None)


register_autograd(dot_attention_backward, _dot_backward_grad, setup_context=_dot_backward_setup_context)
