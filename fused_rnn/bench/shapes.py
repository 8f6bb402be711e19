"""The benchmark registry: ops, shapes and the named sweeps over them.

A recurrence shape is written B16-T1024-I768-H768 (batch, time steps, input size, hidden size), an
attention shape B32-Tq512-Tk512-D256-A256 (batch, query steps, key steps, feature size of queries,
keys and values, attention size of the additive score; Tq1 is the single decoder step, whose query
is [B, D]).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Union

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


Shape = Union[RecurrentShape, AttentionShape]

_RECURRENT_PATTERN = re.compile(r"^B(\d+)-T(\d+)-I(\d+)-H(\d+)$")
_ATTENTION_PATTERN = re.compile(r"^B(\d+)-Tq(\d+)-Tk(\d+)-D(\d+)-A(\d+)$")


def parse_shape(text: str) -> Shape:
    """'B16-T1024-I768-H768' -> RecurrentShape, 'B32-Tq512-Tk512-D256-A256' -> AttentionShape."""
    for pattern, kind in ((_RECURRENT_PATTERN, RecurrentShape), (_ATTENTION_PATTERN, AttentionShape)):
        match = pattern.match(text.strip())
        if match:
            sizes = [int(group) for group in match.groups()]
            if min(sizes) < 1:
                raise ValueError(f"shape {text!r}: every size must be at least 1")
            return kind(*sizes)
    raise ValueError(
        f"shape must look like B16-T1024-I768-H768 (recurrence) or B32-Tq512-Tk512-D256-A256 "
        f"(attention), got {text!r}"
    )


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
