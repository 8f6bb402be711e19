"""Triton backend of the attention ops: the attention functions of `fused_rnn.reference`, with the
same signatures, inputs (contiguous, validated by `fused_rnn.attention_ops`) and outputs.

The kernels (attention_forward.py, attention_backward.py) never hold more than one
[BLOCK_Q, BLOCK_K, BLOCK_A] slice of the additive hidden tensor, and store [B, Tq, Tk] only when
the weights are asked for; their tiles are attention_plan's. On the CPU they run in Triton's
interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
from torch import Tensor

from fused_rnn.reference import accumulation_dtype, attention_softmax_delta

from . import launch
from .attention_plan import Blocks, attention_blocks
from .attention_backward import attention_backward_kv_kernel, attention_backward_q_kernel
from .attention_forward import attention_forward_kernel, combine_splits_kernel

# The interpreter runs programs one after another; splitting the keys is still exercised there,
# as if the device had this many processors.
INTERPRETER_PROCESSORS = 4


def _blocks(q: Tensor, additive: bool, stage: str, features: int, value_size: int) -> Blocks:
    """The planner's tiles for a launch on q's device (a CPU tensor: the interpreter's)."""
    return attention_blocks(additive, stage, q.shape[1], features, value_size, q.element_size(),
                            interpreting=q.device.type == "cpu")


def _kernel_options(q: Tensor) -> dict:
    """UPCAST: the interpreter computes bfloat16 tl.dot wrongly, so products run in float32 there.
    PRECISION: tf32 only where torch allows it for float32 matmuls."""
    interpreting = q.device.type == "cpu"
    tf32 = q.dtype == torch.float32 and not interpreting and torch.backends.cuda.matmul.allow_tf32
    return {
        "UPCAST": interpreting and q.dtype == torch.bfloat16,
        "PRECISION": "tf32" if tf32 else "ieee",
    }


def _device(tensor: Tensor):
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()


def forward_splits(programs: int, key_blocks: int, device: torch.device) -> int:
    """How many parts the keys are split into: enough programs for two waves of the device's
    processors when the query blocks alone are too few (the decoder step), one otherwise."""
    processors = INTERPRETER_PROCESSORS if device.type == "cpu" else launch.device_limits(device).sms
    target = 2 * processors
    if programs >= target:
        return 1
    return max(1, min(key_blocks, triton.cdiv(target, programs)))


def _forward(
    q: Tensor,
    k: Tensor,
    v_vec: Optional[Tensor],
    values: Tensor,
    key_lengths: Optional[Tensor],
    scale: float,
    need_weights: bool,
    splits: Optional[int] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Shared launcher: additive when v_vec is given (q, k = pq, pk), dot otherwise."""
    batch, queries, features = q.shape
    keys, value_size = k.shape[1], values.shape[2]
    acc = accumulation_dtype(q.dtype)
    context = values.new_empty(batch, queries, value_size)
    lse = q.new_empty(batch, queries, dtype=acc)
    scores = q.new_full((batch, queries, keys), float("-inf"), dtype=acc) if need_weights else None
    if batch * queries > 0:
        additive = v_vec is not None
        blocks = _blocks(q, additive, "forward", features, value_size)
        q_blocks, key_blocks = triton.cdiv(queries, blocks.q), triton.cdiv(keys, blocks.k)
        if splits is None:
            splits = forward_splits(batch * q_blocks, key_blocks, q.device)
        keys_per_split = triton.cdiv(key_blocks, splits) * blocks.k
        splits = triton.cdiv(keys, keys_per_split)
        if splits == 1:
            out, out_lse = context, lse
        else:
            out = q.new_empty(splits, batch, queries, value_size, dtype=acc)
            out_lse = q.new_empty(splits, batch, queries, dtype=acc)
        with _device(q):
            attention_forward_kernel[(q_blocks * batch, splits)](
                q, k, q if v_vec is None else v_vec, values, q if key_lengths is None else key_lengths,
                out, out_lse, out_lse if scores is None else scores,
                queries, keys, features, value_size, keys_per_split, scale,
                HAS_LENGTHS=key_lengths is not None, ADDITIVE=additive, STORE_SCORES=need_weights,
                **blocks.meta(), **_kernel_options(q),
            )
            if splits > 1:
                combine_splits_kernel[(q_blocks * batch,)](
                    out, out_lse, context, lse, splits, batch * queries, queries, value_size,
                    BLOCK_Q=blocks.q, BLOCK_DV=blocks.dv, num_warps=4,
                )
    if scores is None:
        return context, lse, values.new_empty(0)
    return context, lse, torch.exp(scores.sub_(lse.unsqueeze(-1))).to(values.dtype)


def _backward(
    grad_context: Tensor,
    grad_weights: Optional[Tensor],
    q: Tensor,
    k: Tensor,
    v_vec: Optional[Tensor],
    values: Tensor,
    key_lengths: Optional[Tensor],
    context: Tensor,
    lse: Tensor,
    weights: Optional[Tensor],
    scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shared launcher -> (d_q, d_k, d_v_vec or None, d_values); additive when v_vec is given."""
    batch, queries, features = q.shape
    keys, value_size = k.shape[1], values.shape[2]
    additive = v_vec is not None
    if batch * queries == 0:
        d_v_vec = None if v_vec is None else torch.zeros_like(v_vec)
        return torch.zeros_like(q), torch.zeros_like(k), d_v_vec, torch.zeros_like(values)
    acc = accumulation_dtype(q.dtype)
    delta = attention_softmax_delta(grad_context, context, grad_weights, weights).contiguous()
    kv_blocks = _blocks(q, additive, "backward_kv", features, value_size)
    key_blocks = triton.cdiv(keys, kv_blocks.k)
    single_q_block = queries <= kv_blocks.q
    d_values = torch.empty_like(values)
    d_k = torch.zeros(k.shape, dtype=acc, device=k.device) if additive else torch.empty_like(k)
    d_v_part = q.new_zeros(batch, key_blocks, features, dtype=acc) if additive else lse
    d_q_part = q.new_zeros(key_blocks, batch, queries, features, dtype=acc) if single_q_block else lse
    flags = dict(
        HAS_LENGTHS=key_lengths is not None, HAS_GRAD_WEIGHTS=grad_weights is not None, ADDITIVE=additive,
        **_kernel_options(q),
    )
    inputs = (
        q, k, q if v_vec is None else v_vec, values, q if key_lengths is None else key_lengths,
        grad_context, lse if grad_weights is None else grad_weights, lse, delta,
    )
    sizes = (queries, keys, features, value_size, scale)
    with _device(q):
        attention_backward_kv_kernel[(key_blocks * batch,)](
            *inputs, d_k, d_values, d_v_part, d_q_part, *sizes,
            SINGLE_Q_BLOCK=single_q_block, **flags, **kv_blocks.meta(),
        )
        if single_q_block:
            d_q = d_q_part.sum(0)
        else:
            q_blocks = _blocks(q, additive, "backward_q", features, value_size)
            d_q = torch.zeros(q.shape, dtype=acc, device=q.device) if additive else torch.empty_like(q)
            attention_backward_q_kernel[(triton.cdiv(queries, q_blocks.q) * batch,)](
                *inputs, d_q, *sizes, **flags, **q_blocks.meta()
            )
    d_v_vec = d_v_part.sum((0, 1)).to(v_vec.dtype) if additive else None
    return d_q.to(q.dtype), d_k.to(k.dtype), d_v_vec, d_values


def additive_attention_forward(
    pq: Tensor, pk: Tensor, v: Tensor, values: Tensor, key_lengths: Optional[Tensor], need_weights: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """See fused_rnn.reference.additive_attention_forward."""
    return _forward(pq, pk, v, values, key_lengths, 1.0, need_weights)


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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """See fused_rnn.reference.additive_attention_backward."""
    return _backward(grad_context, grad_weights, pq, pk, v, values, key_lengths, context, lse, weights, 1.0)


def dot_attention_forward(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    key_lengths: Optional[Tensor],
    scale: float,
    need_weights: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """See fused_rnn.reference.dot_attention_forward."""
    return _forward(query, keys, None, values, key_lengths, scale, need_weights)


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
) -> tuple[Tensor, Tensor, Tensor]:
    """See fused_rnn.reference.dot_attention_backward."""
    d_query, d_keys, _, d_values = _backward(
        grad_context, grad_weights, query, keys, None, values, key_lengths, context, lse, weights, scale
    )
    return d_query, d_keys, d_values

