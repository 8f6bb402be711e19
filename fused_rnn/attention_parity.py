"""Parity of the attention modules against the float64 reference.

One case = one score, one shape, one dtype, one device: the module's context, weights and every
gradient (query, keys, values, parameters) compared with the same module run by the reference
backend in float64 on the same (rounded) inputs and parameters. `fused-rnn check` and the attention
tests share this module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch

from .attention import AdditiveAttention, LuongAttention
from .parity import HALF_FACTOR, TF32_TOLERANCE, TOLERANCE, poisoned_allocations, relative_error

SCORES = ("additive", "dot", "scaled_dot", "general")
# The module outputs a loss can depend on; the weights are always requested.
OUTPUTS = ("context", "weights")


@dataclass(frozen=True)
class Case:
    """One attention shape. tq = 0 is the decoder step (query [B, Dq]); dv = 0 means values=None
    (the keys are the values)."""

    batch: int
    tq: int
    tk: int
    dq: int
    dk: int
    dv: int
    attn: int
    lengths: bool
    seed: int = 0

    def __str__(self) -> str:
        return (f"B{self.batch}-Tq{self.tq or 'step'}-Tk{self.tk}-Dq{self.dq}-Dk{self.dk}-Dv{self.dv}"
                f"-A{self.attn}{'-lengths' if self.lengths else ''}")


def make_module(score: str, case: Case, dtype: torch.dtype, backend: str) -> torch.nn.Module:
    torch.manual_seed(case.seed)
    if score == "additive":
        module = AdditiveAttention(case.dq, case.dk, case.attn, backend=backend)
    else:
        dq = case.dq if score == "general" else case.dk
        module = LuongAttention(dq, case.dk, score, backend=backend)
    return module.to(dtype)


def make_inputs(score: str, case: Case, generator: torch.Generator) -> dict[str, Optional[torch.Tensor]]:
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    query_shape = (case.batch, case.dq) if case.tq == 0 else (case.batch, case.tq, case.dq)
    return {
        "query": randn(*query_shape),
        "keys": randn(case.batch, case.tk, case.dk),
        "values": randn(case.batch, case.tk, case.dv) if case.dv else None,
        "key_lengths": torch.randint(1, case.tk + 1, (case.batch,), generator=generator)
        if case.lengths else None,
    }


def run_module(module, inputs, dtype, device, grad_context, grad_weights, outputs=OUTPUTS,
               need_weights: bool = True) -> dict[str, torch.Tensor]:
    """Context, weights (when need_weights) and every gradient of `module` on `inputs` cast to
    dtype and device, by name, for a loss that depends on the `outputs` named ("context",
    "weights"; the context alone without need_weights)."""
    if not need_weights and "weights" in outputs:
        raise ValueError("a loss on the weights needs need_weights=True")
    tensors = {n: t.to(device, dtype).requires_grad_() for n, t in inputs.items()
               if n != "key_lengths" and t is not None}
    lengths = inputs["key_lengths"]
    context, weights = module(
        tensors["query"], tensors["keys"], tensors.get("values"),
        key_lengths=None if lengths is None else lengths.to(device), need_weights=need_weights,
    )
    leaves = list(tensors.items()) + list(module.named_parameters())
    differentiated = {"context": (context, grad_context), "weights": (weights, grad_weights)}
    selected = [differentiated[name] for name in outputs]
    grads = torch.autograd.grad(
        [output for output, _ in selected], [t for _, t in leaves],
        [grad.to(device, dtype) for _, grad in selected],
    )
    result = {"context": context, "weights": weights} if need_weights else {"context": context}
    result.update({f"d_{name}": g for (name, _), g in zip(leaves, grads)})
    return result


def module_errors(score: str, case: Case, backend: str, dtype: torch.dtype, device: str = "cpu",
                  outputs=OUTPUTS, need_weights: bool = True) -> dict[str, float]:
    """Relative error of every output and gradient of `backend` in `dtype` on `device` against the
    float64 reference run on the same (rounded) inputs and parameters, the gradients those of a loss
    on `outputs` (with need_weights=False: the context alone, the weights not asked for); fresh
    outputs are NaN-filled so that an element a kernel forgets to write cannot pass."""
    generator = torch.Generator().manual_seed(case.seed)
    inputs = make_inputs(score, case, generator)
    module = make_module(score, case, dtype, backend)
    expected_module = copy.deepcopy(module).double()
    expected_module.backend = "reference"
    rounded = {n: t if t is None or n == "key_lengths" else t.to(dtype).double() for n, t in inputs.items()}
    batch, tk = case.batch, case.tk
    out_shape = (batch, case.dv or case.dk) if case.tq == 0 else (batch, case.tq, case.dv or case.dk)
    grad_context = torch.randn(out_shape, generator=generator, dtype=torch.float64)
    grad_weights = torch.randn(*out_shape[:-1], tk, generator=generator, dtype=torch.float64)
    outputs = outputs if need_weights else ("context",)
    expected = run_module(expected_module, rounded, torch.float64, "cpu", grad_context, grad_weights, outputs,
                          need_weights)
    with poisoned_allocations():
        actual = run_module(module.to(device), inputs, dtype, device, grad_context, grad_weights, outputs,
                            need_weights)
    return {name: relative_error(actual[name], expected[name]) for name in expected}


def tolerance(score: str, case: Case, dtype: torch.dtype, device: str = "cpu", need_weights: bool = True) -> float:
    """DESIGN.md's numerics: float64 1e-10, float32 1e-5 (5e-4 where CUDA matmuls may use tf32),
    half types twice the error of the reference computed in that dtype (with the same weights
    requested or not)."""
    if dtype == torch.float32 and device == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return TF32_TOLERANCE
    if dtype in TOLERANCE:
        return TOLERANCE[dtype]
    errors = module_errors(score, case, "reference", dtype, need_weights=need_weights)
    return HALF_FACTOR * max(errors.values())
