"""The GPU check's steps and their time budgets.

A step is a function given a timeout in seconds that returns its StepResult. `run_steps` runs the
steps in order, each under the smaller of its own budget and what is left of the total budget
(less the budgets kept free for the steps marked `reserved`), records a step that raises as failed,
and goes on to the next step whatever happened. `run_command` runs one command of a step in its
own process group, so that a command that runs out of time is stopped with everything it started.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

PASSED, FAILED, TIMED_OUT, SKIPPED = "passed", "failed", "timed out", "skipped"
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL of a command that ran out of time
# A process group of its own, in the caller's session: whatever ends the caller's session ends the
# command too (a new session would outlive it).
_OWN_PROCESS_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


@dataclass
class StepResult:
    """What one step did: its status, a one-line reason (why it failed, timed out or was skipped),
    lines of details for the summary, and facts the summary quotes (`data`)."""

    name: str
    status: str
    reason: str = ""
    details: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    seconds: float = 0.0
    budget_s: float = 0.0

    @property
    def label(self) -> str:
        """"passed", or the status with its reason: "skipped: no CUDA device"."""
        return f"{self.status}: {self.reason}" if self.reason else self.status


@dataclass
class Step:
    """A named step with its budget in seconds. `run(timeout_s)` does the work. A step that runs
    out of time fails the check when `timeout_fails` (a test or a build cut short has not
    passed); `reserved` keeps its budget free of the overruns of the steps before it."""

    name: str
    budget_s: float
    run: Callable[[float], StepResult]
    timeout_fails: bool = True
    reserved: bool = False


@dataclass
class CommandOutcome:
    """One command: its exit status (None when it was stopped), whether it ran out of time, how
    long it ran and what it wrote to stdout and stderr."""

    returncode: Optional[int]
    timed_out: bool
    seconds: float
    output: str


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def run_command(
    argv: list[str],
    log: Path,
    timeout_s: float,
    env: Optional[dict[str, str]] = None,
    cwd: Optional[Path] = None,
    grace_s: float = KILL_GRACE_S,
) -> CommandOutcome:
    """Run `argv` with stdout and stderr appended to `log`. Past `timeout_s` its process group gets
    SIGTERM, then SIGKILL `grace_s` later; processes it left behind in its group are killed too."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as file:
        file.write(f"$ {shlex.join(argv)}\n")
        file.flush()
        offset = file.tell()
        start = time.monotonic()
        process = subprocess.Popen(
            argv, stdout=file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, **_OWN_PROCESS_GROUP,
        )
        try:
            returncode: Optional[int] = process.wait(timeout=max(timeout_s, 0.0))
            timed_out = False
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
            returncode, timed_out = None, True
        _signal_group(process.pid, signal.SIGKILL)
        seconds = time.monotonic() - start
        if timed_out:
            file.write(f"\n[stopped: ran out of its {timeout_s:.0f} s]\n")
    with open(log, errors="replace") as file:
        file.seek(offset)
        output = file.read()
    return CommandOutcome(returncode, timed_out, seconds, output)


def run_steps(
    steps: list[Step],
    total_s: float,
    on_result: Optional[Callable[[list[StepResult]], None]] = None,
) -> list[StepResult]:
    """Run every step within `total_s` seconds in all; `on_result` sees the results so far after
    each step (the summary is rewritten then, so a run killed from outside still leaves one)."""
    deadline = time.monotonic() + total_s
    results: list[StepResult] = []
    for index, step in enumerate(steps):
        kept_free = sum(later.budget_s for later in steps[index + 1 :] if later.reserved)
        timeout = min(step.budget_s, deadline - time.monotonic() - kept_free)
        start = time.monotonic()
        if timeout <= 0:
            result = StepResult(step.name, SKIPPED, "no time left of the total budget")
        else:
            try:
                result = step.run(timeout)
            except Exception as error:  # a broken step is recorded; the next one still runs
                result = StepResult(step.name, FAILED, f"{type(error).__name__}: {error}")
        result.name = step.name
        result.seconds = time.monotonic() - start
        result.budget_s = max(timeout, 0.0)
        results.append(result)
        if on_result is not None:
            on_result(results)
    return results


def exit_status(steps: list[Step], results: list[StepResult]) -> int:
    """0 when no step failed and no step whose running out fails the check ran out of time."""
    fails_on_timeout = {step.name: step.timeout_fails for step in steps}
    for result in results:
        if result.status == FAILED:
            return 1
        if result.status == TIMED_OUT and fails_on_timeout.get(result.name, True):
            return 1
    return 0
