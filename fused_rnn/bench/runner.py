"""One sweep: at every point, dtype and mode, check every provider against the float64 ground
truth and time those that pass."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .base import Built
from .progress import Progress
from .registry import PROVIDERS
from .results import dtype_name, is_busy
from .shapes import Point
from .timing import Budget, Timing, peak_memory_mib, time_cuda, time_interleaved
from .verify import GroundTruth
from .workloads import make_inputs, make_output_grad

MEASURED, SKIPPED, FAILED, ERROR = "measured", "skipped", "failed parity", "error"


@dataclass
class Outcome:
    """What happened to one provider at one point, dtype and mode: measured (with its timing),
    skipped (cannot run here, with the reason), failed parity (with the error) or error."""

    op: str
    shape: object
    dtype: torch.dtype
    mode: str
    provider: str
    status: str
    reason: str = ""
    timing: Optional[Timing] = None
    peak_mib: Optional[float] = None
    load: Optional[float] = None  # the 1-minute load average when it was measured

    @property
    def busy(self) -> bool:
        """Measured while other work kept more threads runnable than the machine has cores."""
        return is_busy(self.load)


@dataclass
class Sweep:
    device: torch.device
    points: list[Point]
    dtypes: list[torch.dtype]
    modes: list[str]
    providers: list[str]
    budget: Budget = field(default_factory=Budget)

    def providers_of(self, op: str) -> list[str]:
        """The requested providers that implement `op` on this device type."""
        return [
            name for name in self.providers
            if op in PROVIDERS[name].ops and self.device.type in PROVIDERS[name].devices
        ]

    def size(self) -> int:
        """The number of (point, dtype, mode, provider) outcomes the sweep produces."""
        per_point = [len(self.providers_of(point.op)) for point in self.points]
        return sum(per_point) * len(self.dtypes) * len(self.modes)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _status_of(error: BaseException) -> str:
    """Running out of device memory is a limit of the machine (the naive additive score is
    expected to hit it), not an error of the provider."""
    return SKIPPED if isinstance(error, torch.cuda.OutOfMemoryError) else ERROR


def step_of(built: Built, inputs: tuple, mode: str, grad_output) -> Callable[[], object]:
    """One timed call of `built` in `mode`: its forward without autograd, or forward and backward."""
    if mode == "forward":
        return lambda: built.forward(inputs)
    return lambda: built.forward_backward(inputs, grad_output)


def run_sweep(
    sweep: Sweep,
    progress: Optional[Progress] = None,
    on_point: Optional[Callable[[list[Outcome]], None]] = None,
) -> list[Outcome]:
    """Every outcome of the sweep; `on_point` receives each point's outcomes as they come (so an
    interrupted sweep keeps what it measured)."""
    progress = progress or Progress(sweep.size())
    outcomes: list[Outcome] = []
    for point in sweep.points:
        for dtype in sweep.dtypes:
            point_outcomes = run_point(sweep, point, dtype, progress)
            if on_point is not None:
                on_point(point_outcomes)
            outcomes.extend(point_outcomes)
    progress.close()
    return outcomes


def run_point(sweep: Sweep, point: Point, dtype: torch.dtype, progress: Progress) -> list[Outcome]:
    """Every mode and provider of one point in one dtype."""
    op, shape, device = point.op, point.shape, sweep.device
    label = f"{op} {shape} {dtype_name(dtype)}"

    def outcome(mode: str, provider: str, status: str, reason: str = "", **measured) -> Outcome:
        progress.advance(f"{label} {mode} {provider}")
        return Outcome(op, shape, dtype, mode, provider, status, reason, **measured)

    names = sweep.providers_of(op)
    reasons = {name: PROVIDERS[name].unavailable_reason(op, shape, dtype, device) for name in names}
    runnable = [name for name in names if reasons[name] is None]
    results = [
        outcome(mode, name, SKIPPED, reasons[name]) for mode in sweep.modes for name in names if name not in runnable
    ]
    if not runnable:
        return results
    truth = GroundTruth(op, shape, dtype)
    built: dict[str, Built] = {}
    for name in runnable:
        try:
            built[name] = PROVIDERS[name].build(op, shape, truth.weights, dtype, device)
        except Exception as error:  # a provider that cannot be built is reported, not fatal
            results += [outcome(mode, name, _status_of(error), _first_line(error)) for mode in sweep.modes]
    inputs = make_inputs(op, shape, dtype, device)
    grad_output = make_output_grad(shape, dtype, device)
    for mode in sweep.modes:
        results += _run_mode(sweep, truth, built, inputs, grad_output, mode, outcome)
    return results


def _run_mode(sweep, truth, built, inputs, grad_output, mode, outcome) -> list[Outcome]:
    device = sweep.device
    results, steps = [], {}
    try:
        tolerance = truth.tolerance(device, mode)
    except Exception as error:
        return [outcome(mode, name, ERROR, f"no tolerance: {_first_line(error)}") for name in built]
    for name, instance in built.items():
        try:
            check = truth.check(instance, device, mode, tolerance)
        except Exception as error:
            results.append(outcome(mode, name, _status_of(error), _first_line(error)))
            continue
        if not check.passed:
            results.append(outcome(mode, name, FAILED, str(check)))
            continue
        steps[name] = step_of(instance, inputs, mode, grad_output)
    measured = _measure(steps, device, sweep.budget)
    load = os.getloadavg()[0]
    for name, (timing, peak, error) in measured.items():
        if error is not None:
            results.append(outcome(mode, name, _status_of(error), _first_line(error)))
        else:
            results.append(outcome(mode, name, MEASURED, timing=timing, peak_mib=peak, load=load))
    return results


def _measure(steps: dict, device: torch.device, budget: Budget) -> dict[str, tuple]:
    """name -> (timing, peak MiB, None) or (None, None, the exception)."""
    if device.type == "cpu":
        try:
            timings = time_interleaved(steps, budget)
            return {name: (timings[name], peak_memory_mib(step, device), None) for name, step in steps.items()}
        except Exception as error:
            return {name: (None, None, error) for name in steps}
    measured: dict[str, tuple] = {}
    for name, step in steps.items():
        try:
            measured[name] = (time_cuda(step), peak_memory_mib(step, device), None)
        except Exception as error:  # out of memory at this point, typically
            measured[name] = (None, None, error)
            torch.cuda.empty_cache()
    return measured
