"""The printed tables of a sweep: per point, dtype and mode, each provider's time, µs per step,
achieved TFLOP/s, peak memory and time relative to the baseline (below 1: faster), printed as each
point is measured; and the summary of the whole run at the end. Column widths follow the content,
so columns never run together."""

from __future__ import annotations

from typing import Optional, Sequence

from .flops import flops
from .registry import baseline
from .results import dtype_name
from .runner import MEASURED, Outcome
from .shapes import RecurrentShape

BUSY_NOTE = "*: measured while the load average exceeded the number of cores (timings unreliable)"


def format_columns(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, indent: str = "  ") -> list[str]:
    """Lines of a table: the first `left` columns left-aligned, the others right-aligned, two
    spaces between columns at least."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return indent + "  ".join(parts).rstrip()

    return [line(header)] + [line(row) for row in rows]


def _group(outcomes: list[Outcome]) -> dict[tuple, list[Outcome]]:
    groups: dict[tuple, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.op, str(o.shape), dtype_name(o.dtype), o.mode), []).append(o)
    return groups


def _per_step(o: Outcome) -> str:
    return f"{1e3 * o.timing.median_ms / o.shape.steps:.1f}" if isinstance(o.shape, RecurrentShape) else "-"


def _ratio(o: Outcome, base: Optional[Outcome]) -> str:
    return "-" if base is None else f"{o.timing.median_ms / base.timing.median_ms:.2f}"


def _base(group: list[Outcome], op: str, device_type: str) -> Optional[Outcome]:
    name = baseline(op, device_type)
    return next((o for o in group if o.provider == name and o.status == MEASURED), None)


def _busy(o: Outcome) -> str:
    return "*" if o.busy else ""


HEADER = ("provider", "median ms", "p20-p80 ms", "µs/step", "TFLOP/s", "peak MiB", "time/base")


def format_table(outcomes: list[Outcome], device_type: str) -> str:
    """Per (op, shape, dtype, mode): a title line and a table of every provider."""
    lines = []
    for (op, shape, dtype, mode), group in _group(outcomes).items():
        base = _base(group, op, device_type)
        lines.append(f"{op} {shape} {dtype} {mode}  (baseline: {baseline(op, device_type)})")
        rows, failed = [], []
        for o in group:
            if o.status != MEASURED:
                failed.append(f"  {o.provider}: {o.status}: {o.reason}")
                continue
            t = o.timing
            tflops = flops(o.op, o.shape, o.mode) / (t.median_ms * 1e-3) / 1e12
            peak = "-" if o.peak_mib is None else f"{o.peak_mib:.1f}"
            rows.append((o.provider + _busy(o), f"{t.median_ms:.3f}", f"{t.p20_ms:.3f}-{t.p80_ms:.3f}",
                         _per_step(o), f"{tflops:.3f}", peak, _ratio(o, base)))
        if rows:
            lines += format_columns(HEADER, rows)
        lines += failed
        if any(o.busy for o in group if o.status == MEASURED):
            lines.append("  " + BUSY_NOTE)
        lines.append("")
    return "\n".join(lines)


SUMMARY_HEADER = ("op", "shape", "dtype", "mode", "provider", "median ms", "µs/step", "time/base")


def format_summary(outcomes: list[Outcome], device_type: str) -> str:
    """Every measured provider of the run, one line each, grouped by point, dtype and mode."""
    rows = []
    for (op, shape, dtype, mode), group in _group(outcomes).items():
        base = _base(group, op, device_type)
        first = True
        for o in group:
            if o.status != MEASURED:
                continue
            key = (op, shape, dtype, mode) if first else ("", "", "", "")
            rows.append((*key, o.provider + _busy(o), f"{o.timing.median_ms:.3f}", _per_step(o), _ratio(o, base)))
            first = False
    if not rows:
        return "nothing was measured"
    note = f"time/base: time relative to the baseline ({baseline('lstm', device_type)} for the recurrences; " \
           "below 1 is faster)"
    lines = format_columns(SUMMARY_HEADER, rows, left=5, indent="")
    if any(o.busy for o in outcomes if o.status == MEASURED):
        lines.append(BUSY_NOTE)
    return "\n".join([note, *lines])
