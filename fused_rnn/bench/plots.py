"""Plots of stored results (matplotlib, PNG): one figure per device type, op and dtype, with the
panels that have something to show, per mode: time against B and time against H (attention:
against Tq = Tk) per provider, with the p20-p80 band, and the speed-up of every provider over the
baseline at every shape (log axis labelled 0.5×, 1×, 2×, bars from p20 to p80). Each provider has
one colour in every panel and figure; rows measured on a busy machine (load average above the core
count) are drawn hollow / hatched."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

from .registry import PROVIDERS, baseline
from .results import Row
from .shapes import MODES, RecurrentShape, Shape, parse_shape

# matplotlib's tab10, by provider in registry order: the same colour for a provider everywhere
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf")
PROVIDER_COLOURS = {name: _PALETTE[index % len(_PALETTE)] for index, name in enumerate(PROVIDERS)}
BUSY_LABEL = "hollow / hatched: measured with load > cores"


def colour(provider: str) -> str:
    return PROVIDER_COLOURS.get(provider, "#000000")


def _busy(row: Row) -> bool:
    return row.get("busy") == "yes"


def _series(rows: list[Row], x_of: Callable[[Shape], Optional[int]], rest_of: Callable[[Shape], tuple]):
    """The longest family of shapes that differ only in one size: {provider: [(x, row), ...]}, or
    None when no family has two shapes."""
    families: dict[tuple, list[Row]] = {}
    for row in rows:
        shape = parse_shape(row["shape"])
        if x_of(shape) is not None:
            families.setdefault(rest_of(shape), []).append(row)
    best = max(families.values(), key=lambda f: len({r["shape"] for r in f}), default=[])
    if len({r["shape"] for r in best}) < 2:
        return None
    lines: dict[str, list[tuple[int, Row]]] = {}
    for row in best:
        lines.setdefault(row["provider"], []).append((x_of(parse_shape(row["shape"])), row))
    return {name: sorted(points, key=lambda p: p[0]) for name, points in lines.items()}


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


def _line_panel(axis, lines, xlabel: str) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    for provider, points in lines.items():
        xs = [x for x, _ in points]
        rows = [row for _, row in points]
        axis.fill_between(xs, [float(r["p20_ms"]) for r in rows], [float(r["p80_ms"]) for r in rows],
                          color=colour(provider), alpha=0.2, linewidth=0)
        axis.plot(xs, [float(r["median_ms"]) for r in rows], color=colour(provider), label=provider)
        for x, row in points:
            axis.plot([x], [float(row["median_ms"])], marker="o", color=colour(provider),
                      markerfacecolor="none" if _busy(row) else colour(provider))
    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_locator(FixedLocator(sorted({x for points in lines.values() for x, _ in points})))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_locator(NullLocator())
    axis.set_yscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("median time per call (ms), p20-p80 band")
    axis.grid(True, which="both", alpha=0.3)


def _comparisons(rows: list[Row], base_name: str):
    """(shapes, providers, base rows by shape) of the rows that have a baseline row, or None."""
    base = {r["shape"]: r for r in rows if r["provider"] == base_name}
    shapes = [s for s in dict.fromkeys(r["shape"] for r in rows) if s in base]
    providers = [p for p in dict.fromkeys(r["provider"] for r in rows if r["shape"] in base) if p != base_name]
    return (shapes, providers, base) if shapes and providers else None


def speedup_ticks(low: float, high: float) -> list[float]:
    """Powers of two from below `low` to above `high`, always 0.5, 1 and 2."""
    first = min(-1, math.floor(math.log2(low)))
    last = max(1, math.ceil(math.log2(high)))
    return [2.0 ** k for k in range(first, last + 1)]


def times_label(value: float) -> str:
    """2 -> "2×", 0.5 -> "0.5×", 0.125 -> "0.125×"."""
    return f"{value:g}×"


def _speedup_panel(axis, comparison, rows: list[Row], base_name: str) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    shapes, providers, base = comparison
    width = 0.8 / len(providers)
    values = []
    for index, provider in enumerate(providers):
        by_shape = {r["shape"]: r for r in rows if r["provider"] == provider}
        present = [(i, s) for i, s in enumerate(shapes) if s in by_shape]
        base_ms = [float(base[s]["median_ms"]) for _, s in present]
        speedups = [b / float(by_shape[s]["median_ms"]) for b, (_, s) in zip(base_ms, present)]
        slow = [b / float(by_shape[s]["p80_ms"]) for b, (_, s) in zip(base_ms, present)]
        fast = [b / float(by_shape[s]["p20_ms"]) for b, (_, s) in zip(base_ms, present)]
        values += speedups + slow + fast
        bars = axis.bar([i + index * width for i, _ in present], [v - 1.0 for v in speedups], bottom=1.0,
                        width=width, color=colour(provider), label=provider,
                        yerr=[[v - lo for v, lo in zip(speedups, slow)], [hi - v for v, hi in zip(speedups, fast)]],
                        error_kw={"elinewidth": 0.8, "capsize": 2})
        for bar, (_, s) in zip(bars, present):
            if _busy(by_shape[s]) or _busy(base[s]):
                bar.set_hatch("//")
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_yscale("log")
    ticks = speedup_ticks(min(values), max(values))
    axis.set_ylim(ticks[0] / 1.2, ticks[-1] * 1.2)
    axis.yaxis.set_major_locator(FixedLocator(ticks))
    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: times_label(value)))
    axis.yaxis.set_minor_locator(NullLocator())
    axis.set_xticks([i + (len(providers) - 1) * width / 2 for i in range(len(shapes))])
    axis.set_xticklabels(shapes, rotation=30, ha="right", fontsize=7)
    axis.set_ylabel(f"speed-up over {base_name}")
    axis.grid(True, axis="y", alpha=0.3)


def _panels(rows: list[Row], op: str, dtype: str, device_type: str) -> list[tuple[str, Callable]]:
    """(title, draw(axis)) of every panel that has something to show."""
    size_label = "H (I = H)" if isinstance(parse_shape(rows[0]["shape"]), RecurrentShape) else "Tq = Tk"
    base_name = baseline(op, device_type)
    panels = []
    for mode in MODES:
        in_mode = [r for r in rows if r["mode"] == mode]
        for x_of, rest_of, label in ((_batch, _without_batch, "B"), (_size, _without_size, size_label)):
            lines = _series(in_mode, x_of, rest_of)
            if lines:
                panels.append((f"{op} {mode} {dtype}: time against {label}",
                               lambda axis, lines=lines, label=label: _line_panel(axis, lines, label)))
        comparison = _comparisons(in_mode, base_name)
        if comparison:
            panels.append((f"{op} {mode} {dtype}: speed-up",
                           lambda axis, c=comparison, r=in_mode: _speedup_panel(axis, c, r, base_name)))
    return panels


def plot_results(rows: list[Row], device: str, device_type: str, folder: Path) -> list[Path]:
    """Write the figures of the rows measured on `device`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [r for r in rows if r["device"] == device]
    written = []
    for op, dtype in dict.fromkeys((r["op"], r["dtype"]) for r in rows):
        selected = [r for r in rows if r["op"] == op and r["dtype"] == dtype]
        panels = _panels(selected, op, dtype, device_type)
        if not panels:
            continue
        columns = min(3, len(panels))
        lines_of_panels = math.ceil(len(panels) / columns)
        figure, axes = plt.subplots(lines_of_panels, columns, figsize=(5.8 * columns, 4.6 * lines_of_panels),
                                    squeeze=False)
        flat = list(axes.flat)
        for axis, (title, draw) in zip(flat, panels):
            draw(axis)
            axis.set_title(title, fontsize=9)
        for axis in flat[len(panels):]:
            axis.remove()
        providers = list(dict.fromkeys(r["provider"] for r in selected))
        base_name = baseline(op, device_type)
        handles = [Patch(color=colour(p), label=f"{p} (baseline)" if p == base_name else p) for p in providers]
        if any(_busy(r) for r in selected):
            handles.append(Line2D([], [], marker="o", color="grey", markerfacecolor="none", linestyle="none",
                                  label=BUSY_LABEL))
        figure.suptitle(f"{op}, {dtype}, on {device}")
        figure.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
                      bbox_to_anchor=(0.5, 1 - 0.45 / figure.get_figheight()))
        figure.tight_layout(rect=(0, 0, 1, 1 - 0.75 / figure.get_figheight()))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{device_type}-{op}-{dtype}.png"
        figure.savefig(path, dpi=80)
        plt.close(figure)
        written.append(path)
    return written
