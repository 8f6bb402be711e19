"""The results store: CSV files with one row per measurement, and where a run puts them.

Columns (exactly): op, provider, mode, shape, dtype, median_ms, p20_ms, p80_ms, peak_mem_mib,
device, torch, triton, cuda, commit, date, load, busy. `load` is the 1-minute load average when
the row was measured and `busy` is "yes" when it exceeded the number of cores (other work was
running: the timing is unreliable). Files written before those two columns existed read with
them empty. A row's key is (op, provider, mode, shape, dtype, device): writing a row replaces the
stored row with the same key, so re-running a sweep updates it.

A run writes to a folder of its own (`run_dir`): runs/<UTC time>/ under benchmarks/ in a source
checkout (git-ignored), else under ./fused_rnn_results/. `fused-rnn bench --save` writes to the
committed benchmarks/results/ instead.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Iterable, Optional

import torch

from .shapes import Shape
from .timing import Timing

COLUMNS = (
    "op", "provider", "mode", "shape", "dtype", "median_ms", "p20_ms", "p80_ms", "peak_mem_mib",
    "device", "torch", "triton", "cuda", "commit", "date", "load", "busy",
)
_ADDED_COLUMNS = ("load", "busy")  # absent from files written before them
KEY = ("op", "provider", "mode", "shape", "dtype", "device")

Row = dict[str, str]
REPOSITORY = Path(__file__).resolve().parents[2]


def default_results_dir() -> Path:
    """benchmarks/results of the source checkout fused_rnn runs from (the committed results),
    else ./fused_rnn_results."""
    if (REPOSITORY / "benchmarks").is_dir():
        return REPOSITORY / "benchmarks" / "results"
    return Path.cwd() / "fused_rnn_results"


def run_dir(now: Optional[datetime.datetime] = None) -> Path:
    """A new folder for one run's CSV and plots, outside the tracked files: benchmarks/runs/<UTC
    time> in a source checkout (git-ignored), else ./fused_rnn_results/runs/<UTC time>."""
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    parent = REPOSITORY / "benchmarks" / "runs" if (REPOSITORY / "benchmarks").is_dir() else Path.cwd() / "fused_rnn_results" / "runs"
    path, suffix = parent / stamp, 1
    while path.exists():
        suffix += 1
        path = parent / f"{stamp}-{suffix}"
    return path


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name with the number of threads torch uses and the
    vector ISA ATen runs on it ("AMD EPYC (2 threads, AVX2)"): a virtual machine's model name
    alone does not tell an AVX2 Zen 3 from an AVX-512 Zen 5."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{model} ({threads} thread{'s' if threads != 1 else ''}, {torch.backends.cpu.get_cpu_capability()})"


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPOSITORY), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit_id() -> str:
    """The short commit of the checkout, "-dirty" when tracked files outside the results differ."""
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return ""
    changes = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return head + ("-dirty" if changes else "")


def environment(device: torch.device) -> Row:
    """The columns that describe where and with what a measurement was taken."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "",
        "commit": commit_id(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def make_row(
    op: str, provider: str, mode: str, shape: Shape, dtype: torch.dtype,
    timing: Timing, peak_mib: Optional[float], env: Row, load: Optional[float] = None,
) -> Row:
    row = {
        "op": op,
        "provider": provider,
        "mode": mode,
        "shape": str(shape),
        "dtype": dtype_name(dtype),
        "median_ms": f"{timing.median_ms:.6g}",
        "p20_ms": f"{timing.p20_ms:.6g}",
        "p80_ms": f"{timing.p80_ms:.6g}",
        "peak_mem_mib": "" if peak_mib is None else f"{peak_mib:.1f}",
    }
    row.update(env)
    row["load"] = "" if load is None else f"{load:.2f}"
    row["busy"] = "yes" if is_busy(load) else ""
    return row


def is_busy(load: Optional[float]) -> bool:
    """Whether a 1-minute load average means other work competed for the cores."""
    return load is not None and load > (os.cpu_count() or 1)


def row_key(row: Row) -> tuple[str, ...]:
    return tuple(row[column] for column in KEY)


def read_rows(path: Path) -> list[Row]:
    """The rows of a results CSV (none when it does not exist); its header must be COLUMNS."""
    if not path.exists():
        return []
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        columns = tuple(reader.fieldnames or ())
        if columns not in (COLUMNS, COLUMNS[: -len(_ADDED_COLUMNS)]):
            raise ValueError(f"{path} has columns {reader.fieldnames}, expected {list(COLUMNS)}")
        return [{**dict.fromkeys(_ADDED_COLUMNS, ""), **row} for row in reader]


def merge_rows(existing: Iterable[Row], new: Iterable[Row]) -> list[Row]:
    """existing with each row of `new` replacing the one of the same key in place, or appended."""
    merged = {row_key(row): row for row in existing}
    for row in new:
        merged[row_key(row)] = row
    return list(merged.values())


def write_rows(path: Path, new: Iterable[Row]) -> None:
    """Merge `new` into the CSV at `path` (created with its folder if missing), atomically."""
    rows = merge_rows(read_rows(path), new)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    with open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)
