"""The benchmark registry: ops, shapes and the named sweeps over them.

A recurrence shape is written B16-T1024-I768-H768 (batch, time steps, input size, hidden size), an
attention shape B32-Tq512-Tk512-D256-A256 (batch, query steps, key steps, feature size of queries,
keys and values, attention size of the additive score; Tq1 is the single decoder step, whose query
is [B, D]). Two recurrence workloads other than one layer over a padded batch carry a suffix:
B64-T256-I256-H256-packed (a PackedSequence, rows of lengths spread over [T/4, T]) and
L2-B64-T20-I500-H500-steps or B64-T20-I500-H500-cells (T calls of one step each, the state carried
from call to call, as a decoder makes them: of an L-layer module, or of a cell).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Optional, Union

RECURRENT_OPS = ("rnn", "lstm", "gru")
ATTENTION_OPS = ("additive_attention", "dot_attention", "scaled_dot_attention", "general_attention")
OPS = RECURRENT_OPS + ATTENTION_OPS
MODES = ("forward", "forward+backward")

# Gate count G of each recurrence: the layer's GEMMs have G*H columns.
GATES = {"rnn": 1, "lstm": 4, "gru": 3}

# The score of each attention op, as fused_rnn.LuongAttention / the naive formula name it.
ATTENTION_SCORES = {
    "additive_attention": "additive",
    "dot_attention": "dot",
    "scaled_dot_attention": "scaled_dot",
    "general_attention": "general",
}


@dataclass(frozen=True)
class RecurrentShape:
    """One layer over a sequence: input [T, B, I], hidden size H."""

    batch: int
    steps: int
    input_size: int
    hidden: int

    def __str__(self) -> str:
        return f"B{self.batch}-T{self.steps}-I{self.input_size}-H{self.hidden}"

    def check_version(self) -> "RecurrentShape":
        """The shape the float64 check runs on: the same B, I, H over at most 16 steps."""
        return replace(self, steps=min(self.steps, 16))


@dataclass(frozen=True)
class AttentionShape:
    """Queries [B, Tq, D] ([B, D] when Tq = 1), keys and values [B, Tk, D], additive size A."""

    batch: int
    query_steps: int
    key_steps: int
    dim: int
    attn: int

    def __str__(self) -> str:
        return f"B{self.batch}-Tq{self.query_steps}-Tk{self.key_steps}-D{self.dim}-A{self.attn}"

    def check_version(self) -> "AttentionShape":
        """The shape the float64 check runs on: few rows and short sequences, so the naive
        float64 additive score [B, Tq, Tk, A] stays small; D and A unchanged."""
        return replace(
            self,
            batch=min(self.batch, 4),
            query_steps=min(self.query_steps, 64),
            key_steps=min(self.key_steps, 256),
        )


@dataclass(frozen=True)
class PackedShape(RecurrentShape):
    """One layer over a PackedSequence of `batch` rows whose lengths are drawn uniformly from
    [ceil(T/4), T] (workloads.packed_lengths), sorted by decreasing length (a PackedSequence's
    order: the input's packing permutes no rows, whose backward on the CPU, an index_add_ across
    the batch dimension, costs more than the recurrence); the output is padded back to [T, B, H]
    (zeros past each length)."""

    def __str__(self) -> str:
        return f"{super().__str__()}-packed"


@dataclass(frozen=True)
class StepwiseShape(RecurrentShape):
    """T calls of one step each on x[t] [B, I], the state carried from call to call (a decoder):
    of a module of `layers` layers, or of a cell (`cell`, one layer); the output is each call's
    last-layer state, stacked to [T, B, H]."""

    layers: int = 1
    cell: bool = False

    def __str__(self) -> str:
        if self.cell:
            return f"{super().__str__()}-cells"
        return f"L{self.layers}-{super().__str__()}-steps"


Shape = Union[RecurrentShape, AttentionShape]

_RECURRENT_PATTERN = re.compile(r"^(?:L(\d+)-)?B(\d+)-T(\d+)-I(\d+)-H(\d+)(?:-(packed|steps|cells))?$")
_ATTENTION_PATTERN = re.compile(r"^B(\d+)-Tq(\d+)-Tk(\d+)-D(\d+)-A(\d+)$")
_FORMS = (
    "B16-T1024-I768-H768 (recurrence; with -packed, or L2-...-steps and ...-cells for stepwise calls) "
    "or B32-Tq512-Tk512-D256-A256 (attention)"
)


def _recurrent_shape(layers: Optional[str], sizes: list[int], workload: Optional[str]) -> RecurrentShape:
    if (layers is not None) != (workload == "steps"):
        raise ValueError("a number of layers L<n>- goes with the -steps suffix, and only with it")
    if workload == "packed":
        return PackedShape(*sizes)
    if workload in ("steps", "cells"):
        return StepwiseShape(*sizes, layers=int(layers or 1), cell=workload == "cells")
    return RecurrentShape(*sizes)


def parse_shape(text: str) -> Shape:
    """'B16-T1024-I768-H768' -> RecurrentShape (PackedShape or StepwiseShape with a suffix),
    'B32-Tq512-Tk512-D256-A256' -> AttentionShape."""
    text = text.strip()
    match = _RECURRENT_PATTERN.match(text)
    if match:
        layers, *groups, workload = match.groups()
        sizes = [int(group) for group in groups]
        if min(sizes + [int(layers or 1)]) < 1:
            raise ValueError(f"shape {text!r}: every size must be at least 1")
        try:
            return _recurrent_shape(layers, sizes, workload)
        except ValueError as error:
            raise ValueError(f"shape {text!r}: {error}") from None
    match = _ATTENTION_PATTERN.match(text)
    if match:
        sizes = [int(group) for group in match.groups()]
        if min(sizes) < 1:
            raise ValueError(f"shape {text!r}: every size must be at least 1")
        return AttentionShape(*sizes)
    raise ValueError(f"shape must look like {_FORMS}, got {text!r}")


def shape_fits_op(op: str, shape: Shape) -> bool:
    """Recurrence ops take recurrence shapes, attention ops attention shapes."""
    return isinstance(shape, RecurrentShape) == (op in RECURRENT_OPS)


@dataclass(frozen=True)
class Point:
    """One op at one shape."""

    op: str
    shape: Shape


STANDARD = RecurrentShape(batch=16, steps=1024, input_size=768, hidden=768)


def _recurrent(ops, shapes) -> list[Point]:
    return [Point(op, shape) for op in ops for shape in shapes]


def _attention_points(shapes) -> list[Point]:
    return [Point(op, shape) for op in ATTENTION_OPS for shape in shapes]


# Named sweeps. The CUDA sweeps follow the speed goals of the backend issues; "cpu-quick" (what
# `make bench` runs, a few minutes on a 2-core CPU) holds the CPU points the native CPU kernels are
# judged at (T=256, B=16, I=H=256 and T=256, B=32, I=H=512) plus small B and H series at T=256 so
# that the plots have lines, one vanilla RNN point and two small attention points.
JUDGED_CPU = [RecurrentShape(16, 256, 256, 256), RecurrentShape(32, 256, 512, 512)]
SWEEPS: dict[str, list[Point]] = {
    "standard": _recurrent(RECURRENT_OPS, [STANDARD]),
    "batch": _recurrent(RECURRENT_OPS, [RecurrentShape(b, 1024, 768, 768) for b in (1, 16, 64, 256)]),
    "hidden": _recurrent(RECURRENT_OPS, [RecurrentShape(16, 1024, h, h) for h in (256, 512, 768, 1024)]),
    "steps": _recurrent(RECURRENT_OPS, [RecurrentShape(16, t, 768, 768) for t in (128, 256, 512, 1024, 2048)]),
    "attention": _attention_points(
        [AttentionShape(32, t, t, 256, 256) for t in (128, 512, 2048)] + [AttentionShape(32, 1, 4096, 256, 256)]
    ),
    "cuda-quick": _recurrent(("lstm", "gru"), [STANDARD, RecurrentShape(64, 1024, 768, 768)])
    + _attention_points([AttentionShape(32, 512, 512, 256, 256), AttentionShape(32, 1, 4096, 256, 256)]),
    "cpu-quick": _recurrent(("lstm", "gru"), JUDGED_CPU)
    + _recurrent(("lstm",), [RecurrentShape(b, 256, 256, 256) for b in (4, 8)])
    + _recurrent(("lstm",), [RecurrentShape(16, 256, h, h) for h in (64, 128)])
    + _recurrent(("rnn",), [RecurrentShape(16, 256, 256, 256)])
    + [Point(op, AttentionShape(8, 64, 64, 64, 64)) for op in ("additive_attention", "dot_attention")],
}

# "cpu-goals": the points the native CPU backend is judged at against torch.nn (oneDNN / ATen):
# one layer at every T x B x H of the grid below (I = H), packed batches beside their padded
# counterparts in the grid, a 2-layer module and a cell called one step at a time (decoders).
# Run it in float32 and float64 (--dtype float32,float64).
CPU_GOAL_GRID = [
    RecurrentShape(b, t, h, h) for t in (64, 256, 1024) for b in (1, 16, 64) for h in (128, 256, 512, 1024)
]
CPU_GOAL_PACKED = [PackedShape(b, 256, h, h) for b, h in ((16, 256), (64, 256), (64, 512))]
SWEEPS["cpu-goals"] = (
    _recurrent(RECURRENT_OPS, CPU_GOAL_GRID)
    + _recurrent(RECURRENT_OPS, CPU_GOAL_PACKED)
    + _recurrent(("lstm", "gru"), [StepwiseShape(64, 20, 500, 500, layers=2)])
    + _recurrent(("lstm", "gru"), [StepwiseShape(64, 20, 500, 500, cell=True)])
)
FULL_SWEEPS = ("standard", "batch", "hidden", "steps", "attention")


def quick_sweep(device_type: str) -> str:
    """The name of the quick sweep of a device type."""
    return "cuda-quick" if device_type == "cuda" else "cpu-quick"


def select_points(sweeps: list[str], ops: list[str] | None) -> list[Point]:
    """The points of the named sweeps (in order, without repeats), restricted to `ops`."""
    for name in sweeps:
        if name not in SWEEPS:
            raise ValueError(f"sweep must be one of {sorted(SWEEPS)}, got {name!r}")
    check_ops(ops or [])
    points: list[Point] = []
    for name in sweeps:
        for point in SWEEPS[name]:
            if point not in points and (not ops or point.op in ops):
                points.append(point)
    return points


def check_ops(ops: list[str]) -> list[str]:
    """Return `ops` if every name is an op, else raise ValueError listing the choices."""
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"op must be one of {list(OPS)}, got {unknown}")
    return ops
