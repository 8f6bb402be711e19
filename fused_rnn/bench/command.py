"""`fused-rnn bench`: run a sweep on each device, print each point's table as it is measured (a
progress bar with an ETA on stderr), then the summary of the run and where the CSV and plots went.

A run writes to a folder of its own (results.run_dir, outside the tracked files) unless `save` asks
to update the committed results (benchmarks/results/) or `csv_path` names a file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import torch

from .plots import plot_results
from .progress import Progress
from .registry import PROVIDERS, QUICK_PROVIDERS, check_providers
from .report import format_summary, format_table
from .results import default_results_dir, environment, is_busy, make_row, read_rows, run_dir, write_rows
from .runner import ERROR, FAILED, MEASURED, Sweep, run_sweep
from .shapes import FULL_SWEEPS, MODES, OPS, Point, check_ops, parse_shape, quick_sweep, select_points, shape_fits_op
from .timing import Budget

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUICK_BUDGET = Budget(min_calls=3, max_calls=30, seconds=1.0)
FULL_BUDGET = Budget(min_calls=10, max_calls=100, seconds=4.0)


def available_devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def default_dtypes(device_type: str, quick: bool) -> list[torch.dtype]:
    """float32 on the CPU; bfloat16 on CUDA (and float16 in the full sweep)."""
    if device_type != "cuda":
        return [torch.float32]
    return [torch.bfloat16] if quick else [torch.bfloat16, torch.float16]


def busy_warning() -> Optional[str]:
    """A warning when other processes keep the CPU busy (CPU timings then mean little)."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if is_busy(load):
        return (f"warning: the CPU is busy (load {load:.1f} on {cores} cores); CPU timings will be unreliable "
                "and rows measured so are marked busy")
    return None


def parse_dtypes(names: list[str]) -> list[torch.dtype]:
    unknown = [name for name in names if name not in DTYPES]
    if unknown:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {unknown}")
    return [DTYPES[name] for name in names]


def points_for(device_type: str, quick: bool, ops: list[str], sweeps: list[str], shapes: list[str]) -> list[Point]:
    """Explicit shapes (for every requested op that takes them), else the named sweeps, else the
    quick or full sweep of the device type."""
    if shapes:
        parsed = [parse_shape(text) for text in shapes]
        return [Point(op, shape) for shape in parsed for op in (ops or OPS) if shape_fits_op(op, shape)]
    if not sweeps:
        sweeps = [quick_sweep(device_type)] if quick else list(FULL_SWEEPS)
    return select_points(sweeps, ops)


def output_paths(device_type: str, csv_path: Optional[str], plot_dir: Optional[str], save: bool,
                 run_folder: Optional[Path]) -> tuple[Path, Path]:
    """(CSV, plot folder) of one device: `csv_path` if given; the committed results with `save`;
    else the run's own folder."""
    if csv_path:
        path = Path(csv_path)
    elif save:
        path = default_results_dir() / f"{device_type}.csv"
    else:
        path = run_folder / f"{device_type}.csv"
    return path, Path(plot_dir) if plot_dir else path.parent / "plots"


def run_bench(
    quick: bool = False,
    ops: Optional[list[str]] = None,
    devices: Optional[list[str]] = None,
    csv_path: Optional[str] = None,
    plot_dir: Optional[str] = None,
    sweeps: Optional[list[str]] = None,
    shapes: Optional[list[str]] = None,
    providers: Optional[list[str]] = None,
    dtypes: Optional[list[str]] = None,
    modes: Optional[list[str]] = None,
    save: bool = False,
) -> int:
    """Run, print and store; 0 when every runnable provider passed its check and ran, else 1."""
    ops = check_ops(ops or [])
    providers = check_providers(providers or [])
    modes = modes or list(MODES)
    if any(mode not in MODES for mode in modes):
        raise ValueError(f"mode must be one of {list(MODES)}, got {modes}")
    devices = devices or available_devices()
    if "cuda" in devices and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    run_folder = None if (csv_path or save) else run_dir()
    status = 0
    for device_type in devices:
        device = torch.device(device_type)
        sweep = Sweep(
            device=device,
            points=points_for(device_type, quick, ops, sweeps or [], shapes or []),
            dtypes=parse_dtypes(dtypes) if dtypes else default_dtypes(device_type, quick),
            modes=modes,
            providers=providers or list(QUICK_PROVIDERS[device_type] if quick else PROVIDERS),
            budget=QUICK_BUDGET if quick else FULL_BUDGET,
        )
        env = environment(device)
        path, plots_folder = output_paths(device_type, csv_path, plot_dir, save, run_folder)
        print(f"fused-rnn bench on {device_type} ({env['device']}): {len(sweep.points)} points, "
              f"{sweep.size()} measurements; results to {path}", flush=True)
        warning = busy_warning() if device_type == "cpu" else None
        if warning:
            print(warning, file=sys.stderr, flush=True)
        progress = Progress(sweep.size())
        written: list[dict[str, str]] = []

        def store(point_outcomes, progress=progress, env=env, path=path, written=written) -> None:
            rows = [
                make_row(o.op, o.provider, o.mode, o.shape, o.dtype, o.timing, o.peak_mib, env, o.load)
                for o in point_outcomes
                if o.status == MEASURED
            ]
            write_rows(path, rows)
            written.extend(rows)
            progress.print(format_table(point_outcomes, device_type))

        outcomes = run_sweep(sweep, progress=progress, on_point=store)
        print(f"\nSummary on {device_type} ({env['device']}):", flush=True)
        print(format_summary(outcomes, device_type))
        print(f"\nwrote {len(written)} rows to {path}")
        plots = plot_results(read_rows(path), env["device"], device_type, plots_folder)
        for plot in plots:
            print(f"wrote {plot}")
        broken = [o for o in outcomes if o.status in (FAILED, ERROR)]
        for o in broken:
            print(f"{o.status}: {o.provider} {o.op} {o.shape} {o.mode}: {o.reason}", file=sys.stderr)
        status = status or (1 if broken else 0)
    return status
