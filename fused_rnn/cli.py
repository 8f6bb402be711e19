"""The `fused-rnn` command.

    fused-rnn check      [--device cpu|cuda]
    fused-rnn bench      [--quick] [--op lstm,gru,...] [--device cpu|cuda] [--csv PATH] [--plot DIR] [--save]
                         [--sweep NAMES] [--shape SHAPE ...] [--provider NAMES] [--dtype NAMES] [--mode NAMES]
    fused-rnn profile    --op lstm --shape B16-T256-I256-H256 [--backend auto] [--device cpu|cuda]
                         [--dtype float32] [--iterations 1] [--trace out.json]
    fused-rnn grad-paths [--cells rnn,lstm,gru] [--seq-len 200] [--hidden 64] [--input-size N]
                         [--batch 8] [--seed 0] [--backend auto] [--device cpu] [--json out.json]
                         [--plot out.png]

Each subcommand imports its implementation when it runs. Bad arguments exit with status 2 and a
message naming the argument.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

DEVICES = ("cpu", "cuda")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fused-rnn", description="fused_rnn: parity, speed and gradient paths")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="parity of every available backend against the float64 reference")
    check.add_argument("--device", choices=DEVICES, help="only this device (default: every device here)")

    bench = commands.add_parser("bench", help="time the providers against the baselines; store CSV and plots")
    bench.add_argument("--quick", action="store_true", help="the quick sweep of each device")
    bench.add_argument("--op", type=_names, help="comma-separated ops (default: every op of the sweep)")
    bench.add_argument("--device", choices=DEVICES, help="only this device (default: every device here)")
    bench.add_argument("--csv", help="results CSV (default: <device>.csv in a new folder of this run, "
                       "benchmarks/runs/<time>/ in a source checkout, else ./fused_rnn_results/runs/<time>/)")
    bench.add_argument("--plot", help="folder for the plots (default: plots/ beside the CSV)")
    bench.add_argument("--save", action="store_true",
                       help="update the committed results (benchmarks/results/<device>.csv and its plots) instead")
    bench.add_argument("--sweep", type=_names, help="comma-separated named sweeps instead of the default")
    bench.add_argument("--shape", action="append", help="a shape such as B16-T1024-I768-H768 (repeatable)")
    bench.add_argument("--provider", type=_names, help="comma-separated providers (default: all, or the quick set)")
    bench.add_argument("--dtype", type=_names, help="comma-separated dtypes (default: float32 on CPU, bfloat16 on CUDA)")
    bench.add_argument("--mode", type=_names, help="forward and/or forward+backward (default: both)")

    profile = commands.add_parser("profile", help="where a layer's forward and backward time goes")
    profile.add_argument("--op", required=True, choices=("rnn", "lstm", "gru"))
    profile.add_argument("--shape", required=True, help="B16-T256-I256-H256")
    profile.add_argument("--backend", default="auto")
    profile.add_argument("--device", choices=DEVICES, default="cpu")
    profile.add_argument("--dtype", default="float32")
    profile.add_argument("--iterations", type=int, default=1)
    profile.add_argument("--trace", help="write a Chrome trace (JSON) here")

    paths = commands.add_parser("grad-paths", help="gradient flow back through time of fresh layers")
    paths.add_argument("--cells", type=_names, default=["rnn", "lstm", "gru"])
    paths.add_argument("--seq-len", type=int, default=200)
    paths.add_argument("--hidden", type=int, default=64)
    paths.add_argument("--input-size", type=int, help="default: the hidden size")
    paths.add_argument("--batch", type=int, default=8)
    paths.add_argument("--seed", type=int, default=0)
    paths.add_argument("--backend", default="auto")
    paths.add_argument("--device", choices=DEVICES, default="cpu")
    paths.add_argument("--json", help="write {\"cells\": {cell: {\"grad_norm_x\": [...], ...}}} here")
    paths.add_argument("--plot", help="write a PNG of the norms against distance from the loss here")
    return parser


def _check_device(device: Optional[str]) -> None:
    """A device torch cannot use is a bad argument (before any work, in one line)."""
    from .backends import device_unavailable_reason

    reason = None if device is None else device_unavailable_reason(device)
    if reason is not None:
        raise ValueError(f"--device {device}: {reason}")


def _backend(name: str, device: str) -> str:
    """The backend that runs for `name` on `device`; a backend that cannot run is a bad argument."""
    from .backends import resolve_backend

    try:
        return resolve_backend(name, device)
    except RuntimeError as error:
        raise ValueError(f"--backend: {error}") from error


def _check(args) -> int:
    from .check import main as check_main

    _check_device(args.device)
    return check_main([args.device] if args.device else None)


def _bench(args) -> int:
    from .bench.command import run_bench

    _check_device(args.device)
    return run_bench(
        quick=args.quick, ops=args.op, devices=[args.device] if args.device else None, csv_path=args.csv,
        plot_dir=args.plot, sweeps=args.sweep, shapes=args.shape, providers=args.provider,
        dtypes=args.dtype, modes=args.mode, save=args.save,
    )


def _profile(args) -> int:
    from .bench.command import parse_dtypes
    from .bench.kernel_profile import format_groups, profile_layer
    from .bench.shapes import RecurrentShape, parse_shape

    _check_device(args.device)
    shape = parse_shape(args.shape)
    if not isinstance(shape, RecurrentShape):
        raise ValueError(f"--shape must be a recurrence shape such as B16-T256-I256-H256, got {args.shape!r}")
    if args.iterations < 1:
        raise ValueError(f"--iterations must be at least 1, got {args.iterations}")
    dtype = parse_dtypes([args.dtype])[0]
    backend = _backend(args.backend, args.device)
    times = profile_layer(args.op, shape, backend, args.device, dtype, args.iterations, args.trace)
    title = (
        f"{args.op} {shape} {args.dtype} on {args.device}, backend {backend}: "
        f"{args.iterations} forward+backward pass(es), self {'kernel' if args.device == 'cuda' else 'CPU'} time"
    )
    print(format_groups(times, title))
    if args.trace:
        print(f"wrote Chrome trace {args.trace}")
    return 0


def _grad_paths(args) -> int:
    import torch

    import fused_rnn
    from .profiling import gradient_paths, plot_gradient_paths

    _check_device(args.device)
    classes = {"rnn": fused_rnn.RNN, "lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU}
    unknown = [cell for cell in args.cells if cell not in classes]
    if unknown:
        raise ValueError(f"--cells must name cells among {list(classes)}, got {unknown}")
    for name in ("seq_len", "hidden", "batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    input_size = args.input_size or args.hidden
    device = torch.device(args.device)
    backend = _backend(args.backend, args.device)
    results = {}
    for cell in args.cells:
        torch.manual_seed(args.seed)
        layer = classes[cell](input_size, args.hidden, backend=backend).to(device)
        x = torch.randn(args.seq_len, args.batch, input_size, device=device)
        results[cell] = gradient_paths(layer, x)
    marks = sorted({0, 1, 10, 50, 100, args.seq_len - 1} & set(range(args.seq_len)))
    print(f"‖∂L/∂x[t]‖ at distance d from the loss (L = sum of the last output), T={args.seq_len}, "
          f"H={args.hidden}, backend {backend}")
    print(f"  {'cell':<6}" + "".join(f"{'d=' + str(d):>11}" for d in marks))
    for cell, paths in results.items():
        norms = paths.grad_norm_x.flip(0)
        print(f"  {cell:<6}" + "".join(f"{norms[d].item():>11.3e}" for d in marks))
    if args.json:
        document = {"seq_len": args.seq_len, "hidden": args.hidden, "cells": {c: p.to_dict() for c, p in results.items()}}
        with open(args.json, "w") as file:
            json.dump(document, file)
        print(f"wrote {args.json}")
    if args.plot:
        plot_gradient_paths(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


COMMANDS = {"check": _check, "bench": _bench, "profile": _profile, "grad-paths": _grad_paths}


def main(argv: Optional[list[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ValueError as error:
        parser.exit(2, f"fused-rnn {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
