"""The printed table of a sweep: per point, dtype and mode, each provider's time, µs per step,
achieved TFLOP/s, peak memory and time relative to the baseline (below 1: faster)."""

from __future__ import annotations

from .flops import flops
from .registry import baseline
from .runner import MEASURED, Outcome
from .shapes import RecurrentShape

HEADER = f"  {'provider':<13}{'median ms':>11}{'p20-p80 ms':>20}{'µs/step':>10}{'TFLOP/s':>9}{'peak MiB':>10}{'time/base':>11}"


def _group(outcomes: list[Outcome]) -> dict[tuple, list[Outcome]]:
    groups: dict[tuple, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.op, str(o.shape), str(o.dtype).removeprefix("torch."), o.mode), []).append(o)
    return groups


def _measured_line(o: Outcome, base_ms: float | None) -> str:
    t = o.timing
    per_step = f"{1e3 * t.median_ms / o.shape.steps:.1f}" if isinstance(o.shape, RecurrentShape) else "-"
    tflops = flops(o.op, o.shape, o.mode) / (t.median_ms * 1e-3) / 1e12
    peak = "-" if o.peak_mib is None else f"{o.peak_mib:.1f}"
    ratio = "-" if base_ms is None else f"{t.median_ms / base_ms:.2f}"
    spread = f"{t.p20_ms:.3f}-{t.p80_ms:.3f}"
    return f"  {o.provider:<13}{t.median_ms:>11.3f}{spread:>20}{per_step:>10}{tflops:>9.3f}{peak:>10}{ratio:>11}"


def format_table(outcomes: list[Outcome], device_type: str) -> str:
    lines = []
    for (op, shape, dtype, mode), group in _group(outcomes).items():
        base_name = baseline(op, device_type)
        base = next((o for o in group if o.provider == base_name and o.status == MEASURED), None)
        base_ms = base.timing.median_ms if base else None
        lines.append(f"{op} {shape} {dtype} {mode}  (baseline: {base_name})")
        lines.append(HEADER)
        for o in group:
            if o.status == MEASURED:
                lines.append(_measured_line(o, base_ms))
            else:
                lines.append(f"  {o.provider:<13}{o.status}: {o.reason}")
        lines.append("")
    return "\n".join(lines)
