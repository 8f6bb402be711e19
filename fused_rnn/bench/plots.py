"""Plots of stored results (matplotlib, PNG): one figure per device type, op and dtype, one row of
panels per mode: time against B, time against H (attention: against Tq = Tk) per provider, and the
speed-up of every provider over the baseline at every shape."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from .registry import baseline
from .results import Row
from .shapes import MODES, RecurrentShape, Shape, parse_shape


def _series(rows: list[Row], x_of: Callable[[Shape], Optional[int]], rest_of: Callable[[Shape], tuple]):
    """The longest family of shapes that differ only in one size: (x values, rows by provider)."""
    families: dict[tuple, list[Row]] = {}
    for row in rows:
        shape = parse_shape(row["shape"])
        if x_of(shape) is not None:
            families.setdefault(rest_of(shape), []).append(row)
    best = max(families.values(), key=lambda f: len({r["shape"] for r in f}), default=[])
    if len({r["shape"] for r in best}) < 2:
        return None
    lines: dict[str, list[tuple[int, float]]] = {}
    for row in best:
        lines.setdefault(row["provider"], []).append((x_of(parse_shape(row["shape"])), float(row["median_ms"])))
    return {name: sorted(points) for name, points in lines.items()}


def _batch(shape: Shape) -> int:
    return shape.batch


def _without_batch(shape: Shape) -> tuple:
    if isinstance(shape, RecurrentShape):
        return ("rnn", shape.steps, shape.input_size, shape.hidden)
    return ("attention", shape.query_steps, shape.key_steps, shape.dim, shape.attn)


def _size(shape: Shape) -> Optional[int]:
    """H for a recurrence with I = H; Tq for attention with Tq = Tk (None: not on that axis)."""
    if isinstance(shape, RecurrentShape):
        return shape.hidden if shape.input_size == shape.hidden else None
    return shape.query_steps if shape.query_steps == shape.key_steps else None


def _without_size(shape: Shape) -> tuple:
    if isinstance(shape, RecurrentShape):
        return ("rnn", shape.batch, shape.steps)
    return ("attention", shape.batch, shape.dim, shape.attn)


def _line_panel(axis, rows: list[Row], x_of, rest_of, xlabel: str) -> None:
    lines = _series(rows, x_of, rest_of)
    if not lines:
        axis.text(0.5, 0.5, f"no series over {xlabel}", ha="center", va="center", transform=axis.transAxes)
        axis.set_axis_off()
        return
    for provider, points in lines.items():
        axis.plot([x for x, _ in points], [y for _, y in points], marker="o", label=provider)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("median time per call (ms)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)


def _speedup_panel(axis, rows: list[Row], base_name: str) -> None:
    base = {r["shape"]: float(r["median_ms"]) for r in rows if r["provider"] == base_name}
    shapes = [s for s in dict.fromkeys(r["shape"] for r in rows) if s in base]
    providers = [p for p in dict.fromkeys(r["provider"] for r in rows if r["shape"] in base) if p != base_name]
    if not shapes or not providers:
        axis.text(0.5, 0.5, f"nothing to compare with {base_name}", ha="center", va="center", transform=axis.transAxes)
        axis.set_axis_off()
        return
    width = 0.8 / len(providers)
    speedups = []
    for index, provider in enumerate(providers):
        times = {r["shape"]: float(r["median_ms"]) for r in rows if r["provider"] == provider}
        xs = [i + index * width for i, s in enumerate(shapes) if s in times]
        ys = [base[s] / times[s] for s in shapes if s in times]
        speedups += ys
        # bars grow from 1 (as fast as the baseline) up to a speed-up or down to a slow-down
        axis.bar(xs, [y - 1.0 for y in ys], bottom=1.0, width=width, label=provider)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_yscale("log")
    axis.set_ylim(min(speedups + [1.0]) / 1.3, max(speedups + [1.0]) * 1.3)
    axis.set_xticks([i + (len(providers) - 1) * width / 2 for i in range(len(shapes))])
    axis.set_xticklabels(shapes, rotation=30, ha="right", fontsize=7)
    axis.set_ylabel(f"speed-up over {base_name} (its time / time)")
    axis.legend(fontsize=7)


def _worth_plotting(rows: list[Row], base_name: str) -> bool:
    """Whether any panel would show something: a series over B or size, or a comparison."""
    for mode in MODES:
        in_mode = [r for r in rows if r["mode"] == mode]
        if _series(in_mode, _batch, _without_batch) or _series(in_mode, _size, _without_size):
            return True
        compared = {r["shape"] for r in in_mode if r["provider"] == base_name}
        if any(r["shape"] in compared and r["provider"] != base_name for r in in_mode):
            return True
    return False


def plot_results(rows: list[Row], device: str, device_type: str, folder: Path) -> list[Path]:
    """Write the figures of the rows measured on `device`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["device"] == device]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for op, dtype in dict.fromkeys((r["op"], r["dtype"]) for r in rows):
        selected = [r for r in rows if r["op"] == op and r["dtype"] == dtype]
        if not _worth_plotting(selected, baseline(op, device_type)):
            continue
        modes = [m for m in MODES if any(r["mode"] == m for r in selected)]
        figure, axes = plt.subplots(len(modes), 3, figsize=(17, 4.5 * len(modes)), squeeze=False)
        size_label = "H (I = H)" if op in ("rnn", "lstm", "gru") else "Tq = Tk"
        for axis_row, mode in zip(axes, modes):
            in_mode = [r for r in selected if r["mode"] == mode]
            _line_panel(axis_row[0], in_mode, _batch, _without_batch, "B")
            _line_panel(axis_row[1], in_mode, _size, _without_size, size_label)
            _speedup_panel(axis_row[2], in_mode, baseline(op, device_type))
            axis_row[0].set_title(f"{op} {mode} {dtype}: time against B")
            axis_row[1].set_title(f"{op} {mode} {dtype}: time against {size_label}")
            axis_row[2].set_title(f"{op} {mode} {dtype}: speed-up")
        figure.suptitle(f"{op}, {dtype}, on {device}")
        figure.tight_layout()
        path = folder / f"{device_type}-{op}-{dtype}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written
