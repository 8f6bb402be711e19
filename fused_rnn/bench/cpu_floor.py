"""The CPU goals' yardsticks: the GEMM rate of this machine, each point's time at that rate (its
floor), and the first call of a layer in a fresh process.

    python -m fused_rnn.bench.cpu_floor --csv benchmarks/results/cpu-goals.csv

prints, as markdown: the measured GEMM rates (MKL packed sgemm, ATen's mm, fused_rnn's linear:
oneDNN in float32, its own panel GEMM in float64; square products on torch's threads; the floor
takes the best float32 rate), then for every point of the CSV measured by
torch.nn (`torch-cpu`) and `native`: both medians, their ratio, and each as % of the floor (the
point's FLOPs, fused_rnn.bench.flops, at the best rate), the goal of the ratio, packed points
against their padded points, with the load of the rows; then the first forward call (and import)
of an LSTM layer in fresh processes, fused_rnn's against torch.nn's. `--rate` takes the rate
instead of measuring it, `--no-first-call` skips the fresh processes. `--packed-floors` measures,
at the sweep's packed points in both dtypes, the floor of their ratio to the padded points
(fused_rnn.bench.packed_floor) beside the ratio of the same run.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

from .flops import flops
from .packed_floor import measure_packed_floors
from .results import dtype_name
from .shapes import CPU_GOAL_PACKED, MODES, parse_shape
from .timing import Budget

GEMM_SIZE = 2048
PACKED_GOAL = 0.7
PACKED_FLOOR_BUDGET = Budget(min_calls=5, max_calls=30, seconds=3.0)


def _rate(product: Callable[[], object], multiply_adds: int, calls: int = 10) -> float:
    """GFLOP/s of `product` (2 FLOPs per multiply-add), the best of three timed groups of calls."""
    product()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            product()
        best = min(best, (time.perf_counter() - start) / calls)
    return 2 * multiply_adds / best / 1e9


def gemm_rates(n: int = GEMM_SIZE, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """GFLOP/s of an n x n x n product in `dtype` through each CPU GEMM torch and fused_rnn have
    (fused_rnn::native_linear runs oneDNN in float32, its own panel GEMM in float64)."""
    from .. import native

    a, w = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    rates = {"ATen mm (MKL)": _rate(lambda: a @ w.t(), n**3)}
    if torch.backends.mkl.is_available() and dtype == torch.float32:
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, n)
        rates["MKL packed sgemm"] = _rate(lambda: torch.ops.mkl._mkl_linear(a, packed, w, None, n), n**3)
    if native.unavailable_reason(torch.device("cpu")) is None:
        rates["fused_rnn::native_linear"] = _rate(lambda: native.linear(a, w, None), n**3)
    return rates


FIRST_CALL = """
import time
start = time.perf_counter()
import torch
{imports}
imported = time.perf_counter()
layer = {layer}
x = torch.randn(64, 16, 256)
called = time.perf_counter()
layer(x)
done = time.perf_counter()
print(imported - start, done - called)
"""

FIRST_CALL_LAYERS = {
    "torch.nn": ("", "torch.nn.LSTM(256, 256)"),
    "fused_rnn native": ("import fused_rnn", "fused_rnn.LSTM(256, 256, backend='native')"),
}


def first_calls(repeats: int = 3) -> dict[str, tuple[float, float]]:
    """Median seconds (import, first forward call) of an LSTM layer (T64 B16 I=H=256) in fresh
    processes, per library."""
    results = {}
    for name, (imports, layer) in FIRST_CALL_LAYERS.items():
        program = FIRST_CALL.format(imports=imports, layer=layer)
        runs = []
        for _ in range(repeats):
            out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
            runs.append([float(v) for v in out.stdout.split()])
        results[name] = tuple(statistics.median(run[i] for run in runs) for i in range(2))
    return results


def goal(op: str, shape: str) -> float:
    """The goal of native / torch.nn at a point: 0.8 for GRU's single layers, 1.0 elsewhere
    (packed points, decoders, RNN and LSTM)."""
    plain = not any(shape.endswith(kind) for kind in ("-packed", "-steps", "-cells"))
    return 0.8 if op == "gru" and plain else 1.0


def floor_rows(csv_path: str, rate: float, device: str | None = None) -> list[dict]:
    """Per (op, mode, shape, dtype) measured by torch-cpu and native (on `device`, the results'
    device column, where given): both medians (ms), the ratio native / torch.nn and its goal, each
    as % of the floor (FLOPs at `rate` GFLOP/s; float64 at half), for packed points the native
    time over the native time of the padded point (`own_padded`, None without one), and the larger
    load of the two rows."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    by_key: dict[tuple, dict] = {}
    for row in rows:
        if row["provider"] in ("torch-cpu", "native") and device in (None, row.get("device")):
            key = (row["op"], row["mode"], row["shape"], row["dtype"])
            by_key.setdefault(key, {})[row["provider"]] = row
    table = []
    for (op, mode, shape, dtype), pair in by_key.items():
        if len(pair) < 2:
            continue
        work = flops(op, parse_shape(shape), mode)
        floor_ms = work / (rate * (0.5 if dtype == "float64" else 1.0)) / 1e6
        ours, theirs = float(pair["native"]["median_ms"]), float(pair["torch-cpu"]["median_ms"])
        padded = by_key.get((op, mode, shape.removesuffix("-packed"), dtype), {}).get("native")
        own_padded = ours / float(padded["median_ms"]) if shape.endswith("-packed") and padded else None
        loads = [pair[p].get("load") or "" for p in ("native", "torch-cpu")]
        table.append(
            dict(op=op, mode=mode, shape=shape, dtype=dtype, native_ms=ours, torch_ms=theirs,
                 ratio=ours / theirs, goal=goal(op, shape), native_floor=100 * floor_ms / ours,
                 torch_floor=100 * floor_ms / theirs, own_padded=own_padded, load=max(loads))
        )
    order = {"rnn": 0, "lstm": 1, "gru": 2}
    return sorted(table, key=lambda r: (r["dtype"], order.get(r["op"], 3), r["shape"], r["mode"]))


def print_floor_table(table: list[dict]) -> None:
    print("| op | mode | shape | dtype | native ms | torch.nn ms | ratio | goal | native % floor | "
          "torch.nn % floor | load |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        own = "" if r["own_padded"] is None else f" (own padded x{r['own_padded']:.2f})"
        met = "met" if r["ratio"] <= r["goal"] else "not met"
        print(f"| {r['op']} | {r['mode']} | {r['shape']} | {r['dtype']} | {r['native_ms']:.2f}{own} | "
              f"{r['torch_ms']:.2f} | {r['ratio']:.2f} | {r['goal']}: {met} | {r['native_floor']:.0f} | "
              f"{r['torch_floor']:.0f} | {r['load']} |")


def packed_verdict(ratio: float, floor: float) -> str:
    """A packed point's ratio against the goal: met, or not met with its floor above the goal (a
    layer no cheaper per row-step on packed rows than on padded ones cannot meet it) or below it."""
    if ratio <= PACKED_GOAL:
        return "met"
    return "floor above goal" if floor > PACKED_GOAL else "not met"


def print_packed_floors(dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> None:
    """Measures and prints, per packed point of the cpu-goals sweep, dtype, mode and op: N/(T*B),
    the packing alone, the native padded and packed layers (ms, one interleaved run per point,
    dtype and mode), their ratio and its floor against the goal."""
    print(f"| op | mode | shape | dtype | N/(T*B) | packing ms | padded ms | packed ms | ratio | floor | "
          f"goal {PACKED_GOAL} |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in CPU_GOAL_PACKED:
        for dtype in dtypes:
            for mode in MODES:
                for f in measure_packed_floors(shape, dtype, mode, PACKED_FLOOR_BUDGET):
                    print(f"| {f.op} | {mode} | {shape} | {dtype_name(dtype)} | {f.fraction:.3f} | "
                          f"{f.packing_ms:.2f} | {f.padded_ms:.2f} | {f.packed_ms:.2f} | {f.ratio:.2f} | "
                          f"{f.floor:.2f} | {packed_verdict(f.ratio, f.floor)} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", help="bench results with torch-cpu and native rows")
    parser.add_argument("--rate", type=float, help="GFLOP/s for the floor (default: measure the GEMMs)")
    parser.add_argument("--device", help="only the --csv rows of this device (its device column)")
    parser.add_argument("--no-first-call", action="store_true", help="skip the fresh-process timing")
    parser.add_argument("--packed-floors", action="store_true",
                        help="measure the floor of the packed points' ratio to their padded points")
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads\n")
    rate = args.rate
    if rate is None:
        rates, doubles = gemm_rates(), gemm_rates(dtype=torch.float64)
        print(f"| GEMM ({GEMM_SIZE}^3) | float32 GFLOP/s | float64 GFLOP/s |\n|---|---|---|")
        for name, value in rates.items():
            print(f"| {name} | {value:.0f} | {doubles[name]:.0f} |" if name in doubles else f"| {name} | {value:.0f} | |")
        rate = max(rates.values())
    if args.csv:
        print(f"\nfloor: FLOPs at {rate:.0f} GFLOP/s (float64 at half)\n")
        print_floor_table(floor_rows(args.csv, rate, args.device))
    if args.packed_floors:
        print(f"\npacked points: native time over the padded point's; floor = N/(T*B) + packing / padded\n")
        print_packed_floors()
    if not args.no_first_call:
        print("\n| first call, fresh process (LSTM T64 B16 I=H=256) | import s | first forward s |\n|---|---|---|")
        for name, (imported, called) in first_calls().items():
            print(f"| {name} | {imported:.3f} | {called:.3f} |")
    print(f"\nload average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
