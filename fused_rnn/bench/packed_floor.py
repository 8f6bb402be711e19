"""The floor of a packed point's goal: native time on a PackedSequence over native time on the
padded batch of the same B, T, I, H (goal 0.7).

A packed point's workload is the layer's padded workload with three things changed: the input is
packed first (pack_padded_sequence, and in the backward its gradient padded again), the layer runs
only the N row-steps inside the lengths, and the output is padded back (providers.packed_run). If
the layer costs no less per row-step on packed rows than on padded ones, its time is at least
N / (T*B) of the padded time, so the ratio is at least

    floor = N / (T*B) + (packing alone) / (padded layer)

where "packing alone" is the packed workload around a layer that returns its input. This module
measures both terms in one interleaved run (with the native packed and padded layers of every op,
so the ratio beside the floor is of the same run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import Built
from .providers import FusedProvider, packed_run
from .runner import step_of
from .shapes import RECURRENT_OPS, PackedShape, RecurrentShape
from .timing import Budget, time_interleaved
from .workloads import make_inputs, make_output_grad, make_weights, packed_lengths

PACKING = "packing"


class _ReturnsInput(nn.Module):
    """A stand-in for a recurrence module that computes nothing: (PackedSequence, None)."""

    def forward(self, packed):
        return packed, None


def packing_alone(shape: PackedShape) -> Built:
    """The packed workload of `shape` without the layer: x [T, B, I] packed, then padded back to
    [T, B, I] (zeros past each length); the output stands for the layer's, so I must equal H."""
    if shape.input_size != shape.hidden:
        raise ValueError(f"packing_alone needs I == H, got I={shape.input_size}, H={shape.hidden}")
    return Built(run=packed_run(_ReturnsInput(), shape), params={})


def row_step_fraction(shape: PackedShape) -> float:
    """N / (T*B): the packed rows' real lengths over the padded grid."""
    return float(packed_lengths(shape).sum()) / (shape.steps * shape.batch)


@dataclass(frozen=True)
class PackedFloor:
    """One op at one packed point, mode and dtype, all medians (ms) of one interleaved run."""

    op: str
    fraction: float
    packing_ms: float
    padded_ms: float
    packed_ms: float

    @property
    def floor(self) -> float:
        return self.fraction + self.packing_ms / self.padded_ms

    @property
    def ratio(self) -> float:
        return self.packed_ms / self.padded_ms


def measure_packed_floors(
    shape: PackedShape, dtype: torch.dtype, mode: str, budget: Budget, ops: tuple[str, ...] = RECURRENT_OPS
) -> list[PackedFloor]:
    """The packing alone and each op's native layer, packed and padded, timed interleaved on the
    CPU at `shape` in `dtype` and `mode` ("forward" or "forward+backward")."""
    cpu = torch.device("cpu")
    padded = RecurrentShape(shape.batch, shape.steps, shape.input_size, shape.hidden)
    inputs = make_inputs(ops[0], shape, dtype, cpu)
    grad_output = make_output_grad(shape, dtype, cpu)
    native = FusedProvider("native")
    steps = {PACKING: step_of(packing_alone(shape), inputs, mode, grad_output)}
    for op in ops:
        for kind, point in (("packed", shape), ("padded", padded)):
            built = native.build(op, point, make_weights(op, point), dtype, cpu)
            steps[f"{op} {kind}"] = step_of(built, inputs, mode, grad_output)
    timings = time_interleaved(steps, budget)
    fraction = row_step_fraction(shape)
    return [
        PackedFloor(op, fraction, timings[PACKING].median_ms, timings[f"{op} padded"].median_ms,
                    timings[f"{op} packed"].median_ms)
        for op in ops
    ]
