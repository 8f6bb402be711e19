"""What every provider is: a named way to run an op, that says why it cannot run or builds a
runnable instance for one point (weights loaded, on the device, in the dtype)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from .shapes import Shape
from .workloads import Weights


@dataclass
class Built:
    """A provider ready to run one point.

    `run(*inputs) -> output` runs the op (recurrence: x [T, B, I] -> output sequence [T, B, H];
    attention: query, keys, values, key_lengths -> context). `params` are the tensors whose
    gradients are measured and checked, under the names of the point's weights (a provider that
    stores weights in another layout lists only those it holds under those names).
    """

    run: Callable[..., Tensor]
    params: dict[str, Tensor]

    def differentiable(self, inputs: tuple[Optional[Tensor], ...]) -> dict[str, Tensor]:
        """The tensors gradients flow to, by name: floating inputs (input0, ...) then params."""
        named = {
            f"input{i}": t for i, t in enumerate(inputs) if t is not None and t.is_floating_point()
        }
        named.update(self.params)
        return named

    def forward(self, inputs: tuple[Optional[Tensor], ...]) -> Tensor:
        """The output, without autograd (inference)."""
        with torch.no_grad():
            return self.run(*inputs)

    def forward_backward(
        self, inputs: tuple[Optional[Tensor], ...], grad_output: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The output and the gradients of <output, grad_output> w.r.t. every differentiable
        tensor (computed with torch.autograd.grad, so nothing accumulates between calls)."""
        wrt = self.differentiable(inputs)
        with torch.enable_grad():
            for tensor in wrt.values():
                tensor.requires_grad_(True)
            output = self.run(*inputs)
            grads = torch.autograd.grad(output, list(wrt.values()), grad_output, allow_unused=True)
        return output, dict(zip(wrt, grads))


class Provider:
    """A benchmark provider. Subclasses set `name`, `ops`, `devices` and implement `build`."""

    name: str = ""
    ops: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu", "cuda")

    def unavailable_reason(
        self, op: str, shape: Shape, dtype: torch.dtype, device: torch.device
    ) -> Optional[str]:
        """None when the provider can run `op` at `shape` now, else a sentence saying why not."""
        return None

    def build(self, op: str, shape: Shape, weights: Weights, dtype: torch.dtype, device: torch.device) -> Built:
        raise NotImplementedError


def cast(weights: Weights, dtype: torch.dtype, device: torch.device) -> Weights:
    """The weights as leaf tensors of `dtype` on `device`."""
    return {name: w.detach().to(device=device, dtype=dtype) for name, w in weights.items()}
