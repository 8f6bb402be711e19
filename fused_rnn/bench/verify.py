"""The check a provider passes before it is timed: its output (and in forward+backward mode every
gradient: inputs and parameters) against a float64 ground truth on the CPU, at the check version
of the point's shape (the same B, I, H over at most 16 steps; see shapes.py).

Thresholds are those of DESIGN.md: float64 1e-10, float32 1e-5 (5e-4 on CUDA where TF32 is
allowed), float16/bfloat16 twice the error of torch.nn (attention: the naive formula) computing the
same thing in that dtype on the same device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..parity import relative_error
from .base import Built
from .registry import PROVIDERS, ground_truth, low_precision_reference
from .shapes import Shape
from .workloads import make_inputs, make_output_grad, make_weights

CPU = torch.device("cpu")
FLOAT64_TOLERANCE = 1e-10
FLOAT32_TOLERANCE = 1e-5
TF32_TOLERANCE = 5e-4
LOW_PRECISION_FACTOR = 2.0

Values = dict[str, Tensor]


@dataclass(frozen=True)
class Check:
    """The outcome of one check: the largest relative error, where it was, and the threshold."""

    error: float
    worst: str
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance  # NaN and inf never pass

    def __str__(self) -> str:
        return f"relative error {self.error:.2e} in {self.worst} (tolerance {self.tolerance:.1e})"


def evaluate(built: Built, inputs: tuple, mode: str, grad_output: Optional[Tensor]) -> Values:
    """{"output": ..., and in forward+backward mode "d_<name>": gradient of every differentiable
    tensor (input0, ..., then parameters by name)}."""
    if mode == "forward":
        return {"output": built.forward(inputs)}
    output, grads = built.forward_backward(inputs, grad_output)
    values = {"output": output}
    values.update({f"d_{name}": grad for name, grad in grads.items()})
    return values


class GroundTruth:
    """float64 values of one op at the check version of one shape, with inputs and weights rounded
    to the dtype under test first (so that only the computation differs)."""

    def __init__(self, op: str, shape: Shape, dtype: torch.dtype) -> None:
        self.op, self.dtype = op, dtype
        self.shape = shape.check_version()
        self.weights = make_weights(op, shape)
        rounded = {name: w.to(dtype).double() for name, w in self.weights.items()}
        inputs = tuple(_to_float64(t) for t in make_inputs(op, self.shape, dtype, CPU))
        built = PROVIDERS[ground_truth(op)].build(op, self.shape, rounded, torch.float64, CPU)
        self.grad_output = make_output_grad(self.shape, dtype, CPU).double()
        self.values = evaluate(built, inputs, "forward+backward", self.grad_output)

    def check(self, built: Built, device: torch.device, mode: str, tolerance: float) -> Check:
        """Run `built` (made from self.weights in self.dtype on `device`) at the check shape."""
        inputs = make_inputs(self.op, self.shape, self.dtype, device)
        grad = self.grad_output.to(device=device, dtype=self.dtype)
        values = evaluate(built, inputs, mode, grad)
        errors = {
            name: math.inf if value is None else relative_error(value, self.values[name])
            for name, value in values.items()
            if name in self.values
        }
        worst = max(errors, key=errors.__getitem__)
        return Check(error=errors[worst], worst=worst, tolerance=tolerance)

    def tolerance(self, device: torch.device, mode: str) -> float:
        """The threshold for providers in self.dtype on `device` (see the module docstring)."""
        if self.dtype == torch.float64:
            return FLOAT64_TOLERANCE
        if self.dtype == torch.float32:
            tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
            return TF32_TOLERANCE if device.type == "cuda" and tf32 else FLOAT32_TOLERANCE
        name = low_precision_reference(self.op, device.type)
        built = PROVIDERS[name].build(self.op, self.shape, self.weights, self.dtype, device)
        own = self.check(built, device, mode, math.inf)
        return LOW_PRECISION_FACTOR * own.error


def _to_float64(tensor: Optional[Tensor]) -> Optional[Tensor]:
    return tensor.double() if tensor is not None and tensor.is_floating_point() else tensor
