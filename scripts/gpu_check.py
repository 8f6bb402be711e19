"""`make gpu-check`: everything owed on a GPU in one command, under 9 minutes, one report.

Steps, each under its own budget in seconds (GPU_CHECK_<STEP>_BUDGET overrides it), all of them
within GPU_CHECK_TOTAL_BUDGET (default: the sum, 525 s):

    environment  20  GPU, SMs, driver, CUDA, torch, triton, nvcc, compute-sanitizer, commit
    build       140  fused_rnn._C for this GPU's architecture, all cores, no network
    tests       180  pytest -m cuda, a per-test timeout (pytest-timeout) in workers that a hung
                     test takes down alone (pytest-xdist), JUnit XML
    sanitizer    60  compute-sanitizer memcheck, then racecheck, on scripts/gpu_check_cases.py
    bench       100  the cuda-quick sweep in bfloat16 and float16, stored point by point
    report       25  the standard point's ratios, the worst ratio, the plots in one archive

A step that runs out of time is stopped and recorded as such, and the next one runs. Without a
CUDA device every GPU step is "skipped: no CUDA device" and the exit status is 0. Otherwise the
exit status is 0 only when nothing failed and no build, test or sanitizer run was cut short.

Environment: GPU_CHECK_OUT (default ./gpu-check-results: summary.md and at most 7 other files),
GPU_CHECK_SAVE=1 (also merge the rows into benchmarks/results/cuda.csv), GPU_CHECK_TEST_TIMEOUT
(seconds per test, 60), GPU_CHECK_TEST_WORKERS (4), GPU_CHECK_BENCH_PROVIDERS
(cudnn,native,triton,flashrnn,naive,sdpa), GPU_CHECK_COMMIT (the commit to record where the
checkout has no .git: the summary's and the benchmark rows' that name none).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from gpu_check_environment import cuda_tool
from gpu_check_parse import read_case_count, read_junit, read_sanitizer, read_verbose_log
from gpu_check_steps import FAILED, PASSED, SKIPPED, TIMED_OUT, Step, StepResult, exit_status, run_command, run_steps
from gpu_check_summary import FILE_ROLES, write_summary

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
BUDGETS = {"environment": 20, "build": 140, "tests": 180, "sanitizer": 60, "bench": 100, "report": 25}
NO_DEVICE = "no CUDA device"
BENCH_COMMAND = ["-m", "fused_rnn.cli", "bench", "--device", "cuda", "--sweep", "cuda-quick",
                 "--dtype", "bfloat16,float16"]
BENCH_PROVIDERS = "cudnn,native,triton,flashrnn,naive,sdpa"
NATIVE_PROBE = (
    "import json, torch, fused_rnn.native as n; "
    "print(json.dumps({'build_info': n.build_info(), 'cpu': n.unavailable_reason(torch.device('cpu')), "
    "'cuda': n.unavailable_reason(torch.device('cuda'))}))"
)


def setting(name: str, default: float) -> float:
    """A number of seconds (or a count) from the environment variable `name`."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {text!r}") from None
    if value < 0:
        raise SystemExit(f"{name} must be at least 0, got {text!r}")
    return value


def _last_json_line(text: str) -> Optional[dict]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def _after(seconds: float) -> str:
    return f"after {seconds:.0f} s"


class GpuCheck:
    """The steps, sharing the output folder, a scratch folder and what the environment probe found."""

    def __init__(self, out: Path, work: Path) -> None:
        self.out, self.work = out, work
        self.python = sys.executable
        self.environment: dict = {}
        self.save = os.environ.get("GPU_CHECK_SAVE", "") == "1"

    @property
    def has_device(self) -> bool:
        return bool(self.environment.get("cuda_device"))

    def steps(self) -> list[Step]:
        budget = {name: setting(f"GPU_CHECK_{name.upper()}_BUDGET", seconds) for name, seconds in BUDGETS.items()}
        return [
            Step("environment", budget["environment"], self.probe_environment),
            Step("build", budget["build"], self._on_gpu(self.build)),
            Step("tests", budget["tests"], self._on_gpu(self.tests)),
            Step("sanitizer", budget["sanitizer"], self._on_gpu(self.sanitizer)),
            Step("bench", budget["bench"], self._on_gpu(self.bench), timeout_fails=False),
            Step("report", budget["report"], self._on_gpu(self.report), reserved=True),
        ]

    def _on_gpu(self, run: Callable[[float], StepResult]) -> Callable[[float], StepResult]:
        def step(timeout: float) -> StepResult:
            if not self.has_device:
                return StepResult("", SKIPPED, NO_DEVICE if self.environment else "the environment probe failed")
            return run(timeout)

        return step

    def _run(self, args: list[str], log: str, timeout: float, **env: str):
        return run_command([self.python, *args], self.out / log, timeout, env={**os.environ, **env}, cwd=ROOT)

    # --- the steps ------------------------------------------------------------------------

    def probe_environment(self, timeout: float) -> StepResult:
        record = self.work / "environment.json"
        outcome = self._run([str(SCRIPTS / "gpu_check_environment.py"), "--json", str(record)], "build.log", timeout)
        if outcome.timed_out:
            return StepResult("", TIMED_OUT, _after(timeout))
        if outcome.returncode != 0 or not record.exists():
            return StepResult("", FAILED, f"the probe exited with {outcome.returncode} (build.log)")
        self.environment = json.loads(record.read_text())
        e = self.environment
        if self.has_device:
            details = [f"{e['gpu']}, {e['sm_count']} SMs, sm_{e['compute_capability'].replace('.', '')}",
                       f"torch {e['torch']}, triton {e['triton']}"]
        else:
            details = [f"{NO_DEVICE}: {e['no_device_reason']}"]
        return StepResult("", PASSED, details=details, data={"environment": e})

    def build(self, timeout: float) -> StepResult:
        jobs = str(os.cpu_count() or 1)
        outcome = self._run(["-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps", "--no-index", "-e", "."],
                            "build.log", timeout, MAX_JOBS=jobs)
        if outcome.timed_out:
            return StepResult("", TIMED_OUT, _after(timeout))
        if outcome.returncode != 0:
            return StepResult("", FAILED, f"pip install exited with {outcome.returncode} (build.log)")
        probe = self._run(["-c", NATIVE_PROBE], "build.log", max(timeout - outcome.seconds, 30.0))
        native = _last_json_line(probe.output) if probe.returncode == 0 else None
        if native is None:
            return StepResult("", FAILED, "the native backend could not be asked how it was built (build.log)")
        info = native["build_info"]
        if info is None:
            return StepResult("", FAILED, f"fused_rnn._C was not built: {native['cpu']} (build.log)")
        if not info.get("with_cuda"):
            return StepResult("", FAILED, "fused_rnn._C was built without CUDA (build.log)")
        details = [f"fused_rnn._C for {info.get('cuda_archs')} with {jobs} jobs in {outcome.seconds:.0f} s",
                   "native CUDA backend: available" if native["cuda"] is None else f"native CUDA backend: {native['cuda']}"]
        return StepResult("", PASSED, details=details)

    def tests(self, timeout: float) -> StepResult:
        junit = self.out / "tests.xml"
        args, isolation = pytest_command("tests", "cuda", junit)
        outcome = self._run(args, "tests.log", timeout, PYTHONUNBUFFERED="1")
        written = junit.exists() and not outcome.timed_out
        counts = read_junit(junit) if written else read_verbose_log(outcome.output)
        details = [str(counts), *isolation]
        data = {"tests": counts}
        if outcome.timed_out:
            return StepResult("", TIMED_OUT, f"{_after(timeout)}, {counts.ran} tests done", details, data)
        if outcome.returncode == 0:
            return StepResult("", PASSED, details=details, data=data)
        if outcome.returncode == 5:
            return StepResult("", FAILED, "no CUDA test was collected", details, data)
        failed = counts.failed + counts.errors
        reason = f"{failed} of {counts.ran} tests did not pass" if failed else f"pytest exited with {outcome.returncode}"
        return StepResult("", FAILED, reason, details, data)

    def sanitizer(self, timeout: float) -> StepResult:
        program = cuda_tool("compute-sanitizer")
        if program is None:
            return StepResult("", SKIPPED, "compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
        deadline = time.monotonic() + timeout
        runs = []
        for index, tool in enumerate(("memcheck", "racecheck")):
            share = (deadline - time.monotonic()) / (2 - index)
            argv = [program, "--tool", tool, "--error-exitcode", "99", "--report-api-errors", "no",
                    "--print-limit", "100", self.python, str(SCRIPTS / "gpu_check_cases.py")]
            # Without the caching allocator every tensor is its own allocation, so memcheck sees
            # an access past a tensor's end.
            outcome = run_command(argv, self.out / "sanitizer.log", share, cwd=ROOT,
                                  env={**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
            runs.append((tool, *_sanitizer_verdict(tool, outcome)))
        details = [f"{tool}: {text}" for tool, _, text in runs]
        statuses = [status for _, status, _ in runs]
        for status in (FAILED, TIMED_OUT):
            if status in statuses:
                return StepResult("", status, "; ".join(f"{t}: {text}" for t, s, text in runs if s == status), details)
        if all(status == SKIPPED for status in statuses):
            return StepResult("", SKIPPED, f"compute-sanitizer refused the device: {runs[0][2]}", details)
        return StepResult("", PASSED, details=details)

    def bench(self, timeout: float) -> StepResult:
        csv = self.out / "bench.csv"
        providers = os.environ.get("GPU_CHECK_BENCH_PROVIDERS", BENCH_PROVIDERS)
        args = [*BENCH_COMMAND, "--provider", providers, "--csv", str(csv), "--plot", str(self.work / "plots")]
        outcome = self._run(args, "bench.log", timeout, PYTHONUNBUFFERED="1")
        rows = max(len(csv.read_text().splitlines()) - 1, 0) if csv.exists() else 0
        if outcome.timed_out:
            return StepResult("", TIMED_OUT, f"{_after(timeout)}, {rows} rows kept")
        broken = [line for line in outcome.output.splitlines() if line.startswith(("failed parity:", "error:"))]
        if outcome.returncode == 0:
            return StepResult("", PASSED, details=[f"{rows} rows"])
        reason = f"{len(broken)} measurements failed their check or raised" if broken else f"exit {outcome.returncode}"
        return StepResult("", FAILED, reason, [f"{rows} rows", *broken[:5]])

    def report(self, timeout: float) -> StepResult:
        csv = self.out / "bench.csv"
        if not csv.exists():
            return StepResult("", SKIPPED, "the sweep stored no rows")
        numbers = self.work / "bench.json"
        args = [str(SCRIPTS / "gpu_check_bench.py"), "--csv", str(csv), "--plots", str(self.work / "plots"),
                "--archive", str(self.out / "plots.tar.gz"), "--json", str(numbers)]
        args += ["--save"] if self.save else []
        args += ["--commit", os.environ["GPU_CHECK_COMMIT"]] if os.environ.get("GPU_CHECK_COMMIT") else []
        outcome = self._run(args, "bench.log", timeout)
        if outcome.timed_out:
            return StepResult("", TIMED_OUT, _after(timeout))
        if outcome.returncode != 0 or not numbers.exists():
            return StepResult("", FAILED, f"exit {outcome.returncode} (bench.log)")
        report = json.loads(numbers.read_text())
        details = [f"{len(report['plots'])} plots in plots.tar.gz"]
        if report["saved"]:
            details.append(f"rows merged into {report['saved']}")
        return StepResult("", PASSED, details=details, data={"bench": report})


def pytest_command(tests: str, marker: str, junit: Path) -> tuple[list[str], list[str]]:
    """pytest's arguments for the tests of `tests` carrying `marker`, and what they do about hung
    tests. pytest-timeout's thread method ends the process of a test past its timeout (a kernel
    spinning at a grid barrier holds the thread in the driver, where no signal reaches it); under
    pytest-xdist that process is a worker, which is replaced, and the run goes on."""
    args = ["-m", "pytest", "-m", marker, tests, "-v", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    isolation = []
    if importlib.util.find_spec("pytest_timeout"):
        per_test = setting("GPU_CHECK_TEST_TIMEOUT", 60)
        args += ["--timeout", f"{per_test:g}", "--timeout-method", "thread"]
        isolation.append(f"per-test timeout {per_test:g} s")
    else:
        isolation.append("no per-test timeout (pytest-timeout is not installed)")
    if importlib.util.find_spec("xdist"):
        workers = int(setting("GPU_CHECK_TEST_WORKERS", 4))
        args += ["-n", str(workers), "--max-worker-restart", "1000"]
        isolation.append(f"{workers} workers: a hung test stops its own worker only")
    else:
        isolation.append("one process (pytest-xdist is not installed): a hung test ends the run")
    return args, isolation


def _sanitizer_verdict(tool: str, outcome) -> tuple[str, str]:
    """(status, what to say) of one compute-sanitizer run over the cases."""
    report = read_sanitizer(outcome.output)
    if report.refused:
        return SKIPPED, report.refused
    if outcome.timed_out:
        return TIMED_OUT, _after(outcome.seconds)
    counts = read_case_count(outcome.output)
    cases = "no case count" if counts is None else f"{counts[0]} cases ran, {counts[1]} skipped, {counts[2]} failed"
    errors = "no summary" if report.errors is None else f"{report.errors} errors"
    text = f"{errors}, {cases} ({outcome.seconds:.0f} s)"
    clean = outcome.returncode == 0 and report.errors == 0 and counts is not None and counts[2] == 0
    return (PASSED if clean else FAILED), text


def clear_outputs(folder: Path) -> None:
    """Remove the files an earlier check left in `folder` (nothing else)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in [*FILE_ROLES, "summary.md.tmp"]:
        (folder / name).unlink(missing_ok=True)


def main() -> int:
    out = Path(os.environ.get("GPU_CHECK_OUT") or "gpu-check-results").resolve()
    clear_outputs(out)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    check = GpuCheck(out, work)
    steps = check.steps()
    total = setting("GPU_CHECK_TOTAL_BUDGET", sum(step.budget_s for step in steps))
    start = time.monotonic()

    def progress(results: list[StepResult]) -> None:
        write_summary(out, results, time.monotonic() - start, total, None)
        if check.has_device:
            last = results[-1]
            print(f"gpu-check: {last.name} {last.label} ({last.seconds:.0f} s)", flush=True)

    try:
        results = run_steps(steps, total, on_result=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    status = exit_status(steps, results)
    summary = write_summary(out, results, time.monotonic() - start, total, status)
    if check.environment and not check.has_device:
        print(f"gpu-check: {NO_DEVICE} ({check.environment['no_device_reason']}): every GPU step skipped; "
              f"summary in {summary}")
    else:
        print(f"gpu-check: {'passed' if status == 0 else 'failed'}; summary in {summary}")
    return status


if __name__ == "__main__":
    sys.exit(main())
