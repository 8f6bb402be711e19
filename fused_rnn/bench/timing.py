"""Timers and peak-memory probes.

CPU: time.perf_counter around each call after warm-up; the providers of one point run interleaved
(one call of each per round) so that a noisy machine disturbs them alike. CUDA: Triton's do_bench
(it flushes L2 between calls), or CUDA events when Triton is missing.

Peak memory is the most memory allocated during one call beyond what was allocated before it
(inputs and weights excluded, outputs and everything saved for backward included): on CUDA from the
caching allocator's statistics, on the CPU from torch.profiler's memory events.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

Step = Callable[[], object]


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median, 20th and 80th percentile over `samples` calls."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    samples: int


def summarize(samples_ms: list[float]) -> Timing:
    p20, median, p80 = np.percentile(np.asarray(samples_ms), [20, 50, 80])
    return Timing(float(median), float(p20), float(p80), len(samples_ms))


@dataclass(frozen=True)
class Budget:
    """How long to time one point: at least `min_calls` calls of each provider, then more rounds
    until `seconds` have passed or `max_calls` are reached."""

    min_calls: int = 5
    max_calls: int = 50
    seconds: float = 2.0


def time_interleaved(steps: dict[str, Step], budget: Budget) -> dict[str, Timing]:
    """CPU timing of several steps, one call of each per round, after one warm-up call each."""
    for step in steps.values():
        step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    start = time.perf_counter()
    for round_index in range(budget.max_calls):
        for name, step in steps.items():
            begin = time.perf_counter()
            step()
            samples[name].append((time.perf_counter() - begin) * 1e3)
        if round_index + 1 >= budget.min_calls and time.perf_counter() - start > budget.seconds:
            break
    return {name: summarize(values) for name, values in samples.items()}


def time_cuda(step: Step) -> Timing:
    """CUDA timing of one step: triton.testing.do_bench quantiles, else CUDA events."""
    try:
        from triton.testing import do_bench
    except ImportError:
        return _time_cuda_events(step)
    median, p20, p80 = do_bench(step, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    return Timing(float(median), float(p20), float(p80), 0)


def _time_cuda_events(step: Step, warmup: int = 3, seconds: float = 0.1) -> Timing:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < 5 or time.perf_counter() - start < seconds:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        step()
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end))
    return summarize(samples)


def peak_memory_mib(step: Step, device: torch.device) -> Optional[float]:
    """MiB allocated at the peak of one call beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if device.type == "cpu":
        return _cpu_peak_bytes(step) / 2**20
    return None


@contextlib.contextmanager
def native_output_silenced():
    """File descriptors 1 and 2 sent to /dev/null: the profiler's C++ side logs each start and stop
    there ("USDT: ... profiler_start"), around Python's own buffered output."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _cpu_peak_bytes(step: Step) -> int:
    """Peak of the running total of CPU allocations minus frees that torch.profiler records."""
    from torch.profiler import ProfilerActivity, profile

    with native_output_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as file:
            events = json.load(file)["traceEvents"]
    memory = sorted(
        (e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0),
        key=lambda e: e["ts"],
    )
    if not memory:
        return 0
    start = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return max(0, max(e["args"]["Total Allocated"] for e in memory) - start)
