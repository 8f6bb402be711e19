"""After the GPU check's benchmark sweep: the numbers its summary quotes, the plots in one archive,
and, when asked, the rows merged into the stored CUDA results.

    python scripts/gpu_check_bench.py --csv bench.csv --plots plots/ --archive plots.tar.gz \
        --json bench.json [--save] [--commit abc1234]

Ratios are times relative to the op's baseline (fused_rnn.bench.registry.baseline: cuDNN for the
recurrences, SDPA or the naive formula for attention) at the same shape, mode and dtype: below 1 is
faster. The plots are drawn here from the rows when the sweep was stopped before drawing them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fused_rnn.bench.plots import plot_results  # noqa: E402
from fused_rnn.bench.registry import baseline  # noqa: E402
from fused_rnn.bench.results import Row, default_results_dir, read_rows, write_rows  # noqa: E402
from fused_rnn.bench.shapes import STANDARD  # noqa: E402

STANDARD_OP = "lstm"
KERNEL_PROVIDERS = ("triton", "native")


def with_ratios(rows: list[Row]) -> list[dict]:
    """Each row's op, provider, mode, shape, dtype and median, with its time relative to the
    baseline's at the same point (None where the baseline has no row)."""
    def point(row: Row) -> tuple:
        return row["op"], row["mode"], row["shape"], row["dtype"], row["device"]

    base = {point(r): float(r["median_ms"]) for r in rows if r["provider"] == baseline(r["op"], "cuda")}
    found = []
    for row in rows:
        median = float(row["median_ms"])
        base_ms = base.get(point(row))
        found.append({
            **{key: row[key] for key in ("op", "provider", "mode", "shape", "dtype")},
            "median_ms": median,
            "baseline": baseline(row["op"], "cuda"),
            "ratio": None if base_ms is None else median / base_ms,
        })
    return found


def standard_point(measured: list[dict]) -> list[dict]:
    """The rows of the standard point, LSTM B16-T1024-I768-H768."""
    return [m for m in measured if m["op"] == STANDARD_OP and m["shape"] == str(STANDARD)]


def worst_ratio(measured: list[dict]) -> Optional[dict]:
    """The kernel providers' row slowest relative to its baseline."""
    compared = [m for m in measured if m["provider"] in KERNEL_PROVIDERS and m["ratio"] is not None]
    return max(compared, key=lambda m: m["ratio"], default=None)


def archive_plots(rows: list[Row], folder: Path, archive: Path) -> list[str]:
    """Put the PNGs of `folder` (drawn from `rows` first if there are none) into one .tar.gz."""
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not pngs and rows:
        pngs = sorted(plot_results(rows, rows[0]["device"], "cuda", folder))
    if not pngs:
        return []
    with tarfile.open(archive, "w:gz") as tar:
        for png in pngs:
            tar.add(png, arcname=png.name)
    return [png.name for png in pngs]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", required=True, type=Path, help="the rows of the sweep")
    parser.add_argument("--plots", required=True, type=Path, help="the folder the sweep drew its plots in")
    parser.add_argument("--archive", required=True, type=Path, help="write the plots here (.tar.gz)")
    parser.add_argument("--json", required=True, type=Path, help="write the summary's numbers here")
    parser.add_argument("--save", action="store_true", help="also merge the rows into benchmarks/results/cuda.csv")
    parser.add_argument("--commit", help="the commit for rows that name none (a copy of the checkout without .git)")
    args = parser.parse_args(argv)
    rows = read_rows(args.csv)
    if args.commit and any(not row["commit"] for row in rows):
        rows = [{**row, "commit": row["commit"] or args.commit} for row in rows]
        write_rows(args.csv, rows)
    measured = with_ratios(rows)
    saved = None
    if args.save and rows:
        saved = default_results_dir() / "cuda.csv"
        write_rows(saved, rows)
    report = {
        "rows": len(rows),
        "standard_shape": f"{STANDARD_OP} {STANDARD}",
        "standard_point": standard_point(measured),
        "worst": worst_ratio(measured),
        "plots": archive_plots(rows, args.plots, args.archive),
        "saved": None if saved is None else str(saved),
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
