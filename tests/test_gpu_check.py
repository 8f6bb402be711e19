"""`make gpu-check` on a machine without a GPU, the step logic with fake steps that pass, fail,
raise and hang, the readers of the tools' outputs, the summary, the benchmark report, the small
cases run under compute-sanitizer, and the coverage of the CUDA parity tests: every kernel backend
has them for every dtype, for the recurrence and for attention."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))

import gpu_check  # noqa: E402
import gpu_check_bench  # noqa: E402
from gpu_check_parse import PytestCounts, read_case_count, read_junit, read_sanitizer, read_verbose_log  # noqa: E402
from gpu_check_steps import (  # noqa: E402
    FAILED, PASSED, SKIPPED, TIMED_OUT, Step, StepResult, exit_status, run_command, run_steps,
)
from gpu_check_summary import format_summary  # noqa: E402

GPU_STEPS = ["build", "tests", "sanitizer", "bench", "report"]
KERNEL_BACKENDS = ("triton", "native")
DTYPES = ("float32", "float16", "bfloat16", "float64")


def _table(summary: str) -> dict[str, list[str]]:
    """The steps table of summary.md: step -> [status, time, budget, details]."""
    lines = summary.splitlines()
    start = lines.index("| step | status | time | budget | details |")
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


# ---------------------------------------------------------------------------------------------
# The whole check without a GPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the check would run")
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_without_a_cuda_device_every_gpu_step_is_skipped(tmp_path):
    out = tmp_path / "results"
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "gpu-check", f"PYTHON={sys.executable}"],
        env={**os.environ, "GPU_CHECK_OUT": str(out)}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed = done.stdout.splitlines()
    assert len(printed) == 1 and printed[0].startswith("gpu-check: no CUDA device"), printed
    assert str(out / "summary.md") in printed[0]

    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check\n")
    assert "Result: **passed** (exit status 0)" in summary
    table = _table(summary)
    assert list(table) == ["environment", *GPU_STEPS]
    assert table["environment"][0] == "passed"
    assert "no CUDA device" in table["environment"][3]
    for step in GPU_STEPS:
        assert table[step][0] == "skipped: no CUDA device", (step, table[step])
        assert re.fullmatch(r"\d+(\.\d)? s", table[step][2]), table[step]  # its budget
    assert f"| torch | {torch.__version__} |" in summary

    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and "summary.md" in files
    listed = re.findall(r"^- (\S+): ", summary.split("## Files", 1)[1], flags=re.M)
    assert listed[0] == "summary.md" and sorted(listed) == files


# ---------------------------------------------------------------------------------------------
# Steps, budgets and timeouts
# ---------------------------------------------------------------------------------------------


def _command_step(name: str, code: str, log: Path, budget: float, **options) -> Step:
    """A fake step running `python -c code`: passed on exit 0, else failed; timed out past its budget."""
    def run(timeout: float) -> StepResult:
        outcome = run_command([sys.executable, "-c", code], log, timeout)
        if outcome.timed_out:
            return StepResult("", TIMED_OUT, f"after {timeout:.0f} s")
        return StepResult("", PASSED if outcome.returncode == 0 else FAILED, f"exit {outcome.returncode}")

    return Step(name, budget, run, **options)


def test_steps_that_pass_fail_and_hang_are_recorded_and_the_run_goes_on(tmp_path):
    log = tmp_path / "steps.log"
    steps = [
        _command_step("passes", "print('fine')", log, 30),
        _command_step("fails", "raise SystemExit(3)", log, 30),
        _command_step("hangs", "import time; time.sleep(60)", log, 1.5),
        _command_step("after", "pass", log, 30),
    ]
    seen = []
    start = time.monotonic()
    results = run_steps(steps, total_s=120, on_result=lambda so_far: seen.append([r.name for r in so_far]))
    assert time.monotonic() - start < 15
    assert [(r.name, r.status) for r in results] == [
        ("passes", PASSED), ("fails", FAILED), ("hangs", TIMED_OUT), ("after", PASSED)
    ]
    assert results[1].label == "failed: exit 3"
    assert 1.4 <= results[2].seconds < 4 and results[2].budget_s == 1.5
    assert seen == [["passes"], ["passes", "fails"], ["passes", "fails", "hangs"], ["passes", "fails", "hangs", "after"]]
    text = log.read_text()
    assert "fine" in text and "[stopped: ran out of its 2 s]" in text
    assert exit_status(steps, results) == 1


def test_exit_status_counts_timeouts_only_of_steps_that_fail_on_them(tmp_path):
    steps = [Step("tests", 1, None), Step("bench", 1, None, timeout_fails=False)]
    ok = StepResult("tests", PASSED)
    assert exit_status(steps, [ok, StepResult("bench", TIMED_OUT)]) == 0
    assert exit_status(steps, [StepResult("tests", TIMED_OUT), StepResult("bench", PASSED)]) == 1
    assert exit_status(steps, [ok, StepResult("bench", FAILED)]) == 1
    assert exit_status(steps, [StepResult("tests", SKIPPED, "no CUDA device"), StepResult("bench", SKIPPED)]) == 0


def test_a_step_that_raises_is_failed_with_its_error_and_the_next_step_runs():
    def broken(timeout):
        raise ValueError("no such file: tests.xml")

    results = run_steps([Step("broken", 5, broken), Step("next", 5, lambda t: StepResult("", PASSED))], total_s=10)
    assert results[0].label == "failed: ValueError: no such file: tests.xml"
    assert results[1].status == PASSED


def test_the_total_budget_clips_steps_and_keeps_the_reserved_budget_free(tmp_path):
    log = tmp_path / "steps.log"
    steps = [
        _command_step("hangs", "import time; time.sleep(60)", log, 30),
        _command_step("late", "pass", log, 30),
        _command_step("report", "pass", log, 1.5, reserved=True),
    ]
    results = run_steps(steps, total_s=3.0)
    assert results[0].status == TIMED_OUT and 1.3 <= results[0].budget_s <= 1.5
    assert results[1].label == "skipped: no time left of the total budget"
    assert results[2].status == PASSED and 1.0 <= results[2].budget_s <= 1.5


def test_a_command_past_its_time_is_killed_with_its_children(tmp_path):
    """SIGTERM is ignored here: SIGKILL follows after the grace period, for the whole group."""
    pid_file = tmp_path / "child.pid"
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    code = (
        f"import subprocess, sys; child = subprocess.Popen([sys.executable, '-c', {deaf!r}]); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); exec({deaf!r})"
    )
    start = time.monotonic()
    outcome = run_command([sys.executable, "-c", code], tmp_path / "log", timeout_s=1.5, grace_s=0.5)
    assert outcome.timed_out and outcome.returncode is None
    assert time.monotonic() - start < 5
    child = int(pid_file.read_text())
    for _ in range(50):  # the orphaned child is reaped by init shortly after its SIGKILL
        status = Path(f"/proc/{child}/status")
        if not status.exists() or "\nState:\tZ" in status.read_text():
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"process {child} that the timed-out command started is still running")


def test_pytest_command_fails_a_hung_test_and_runs_the_others(tmp_path, monkeypatch):
    """Needs pytest-timeout and pytest-xdist (the GPU machine has both; CI does not)."""
    pytest.importorskip("pytest_timeout")
    pytest.importorskip("xdist")
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\nmarkers =\n    cuda: needs a GPU\n")
    (suite / "test_fake.py").write_text(
        "import ctypes, pytest\n"
        "pytestmark = pytest.mark.cuda\n"
        "def test_passes(): pass\n"
        "def test_hangs_in_c(): ctypes.CDLL(None).pause()  # a thread no signal handler reaches\n"
        "@pytest.mark.parametrize('n', range(3))\n"
        "def test_more(n): assert n != 2\n"
    )
    monkeypatch.setenv("GPU_CHECK_TEST_TIMEOUT", "2")
    monkeypatch.setenv("GPU_CHECK_TEST_WORKERS", "2")
    args, isolation = gpu_check.pytest_command(".", "cuda", tmp_path / "out.xml")
    assert isolation == ["per-test timeout 2 s", "2 workers: a hung test stops its own worker only"]
    outcome = run_command([sys.executable, *args], tmp_path / "log", 60, cwd=suite)
    assert outcome.returncode == 1 and outcome.seconds < 30
    counts = read_junit(tmp_path / "out.xml")
    assert (counts.passed, counts.failed + counts.errors) == (3, 2)
    assert {name for name, _ in counts.failures} == {"test_fake::test_hangs_in_c", "test_fake::test_more[2]"}


# ---------------------------------------------------------------------------------------------
# Reading the tools' outputs
# ---------------------------------------------------------------------------------------------

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.test_a" name="test_ok" />
<testcase classname="tests.test_a" name="test_bad[x]"><failure message="assert 1 == 2">long text</failure></testcase>
<testcase classname="tests.test_a" name="test_hung"><error message="worker 'gw0' crashed while running 'tests/test_a.py::test_hung'">x</error></testcase>
<testcase classname="tests.test_b" name="test_s1"><skipped type="pytest.skip" message="needs a CUDA device">s</skipped></testcase>
<testcase classname="tests.test_b" name="test_s2"><skipped type="pytest.skip" message="tests/test_b.py:9: native backend unavailable: not built">s</skipped></testcase>
</testsuite></testsuites>"""


def test_read_junit_counts_failures_errors_and_skip_reasons(tmp_path):
    path = tmp_path / "tests.xml"
    path.write_text(JUNIT)
    counts = read_junit(path)
    assert (counts.passed, counts.failed, counts.errors, counts.skipped, counts.ran) == (1, 1, 1, 2, 3)
    assert counts.failures == [
        ("tests.test_a::test_bad[x]", "assert 1 == 2"),
        ("tests.test_a::test_hung", "worker 'gw0' crashed while running 'tests/test_a.py::test_hung'"),
    ]
    assert counts.skip_reasons == Counter({"needs a CUDA device": 1, "native backend unavailable: not built": 1})


def test_read_verbose_log_with_and_without_xdist():
    log = (
        "tests/test_a.py::test_one PASSED                   [ 25%]\n"
        "[gw1] [ 50%] FAILED tests/test_a.py::test_two[bfloat16] \n"
        "[gw0] [ 75%] SKIPPED tests/test_b.py::test_three \n"
        "tests/test_b.py::test_four ERROR\n"
    )
    counts = read_verbose_log(log)
    assert (counts.passed, counts.failed, counts.errors, counts.skipped) == (1, 1, 1, 1)
    assert [name for name, _ in counts.failures] == ["tests/test_a.py::test_two[bfloat16]", "tests/test_b.py::test_four"]


def test_read_sanitizer_summaries_and_refusal():
    clean = read_sanitizer("========= COMPUTE-SANITIZER\nok\n========= ERROR SUMMARY: 0 errors\n")
    assert (clean.refused, clean.errors) == (None, 0)
    assert read_sanitizer("========= Invalid __global__ write of size 4 bytes\n========= ERROR SUMMARY: 3 errors\n").errors == 3
    race = read_sanitizer("========= RACECHECK SUMMARY: 2 hazards displayed (1 error, 1 warning)\n")
    assert (race.errors, race.warnings) == (1, 1)
    refused = read_sanitizer("========= COMPUTE-SANITIZER\n========= Error: Device not supported\n")
    assert refused.refused == "Error: Device not supported" and refused.errors is None
    assert read_sanitizer("Traceback ...\n").errors is None
    assert read_case_count("ok ...\ngpu_check_cases: 31 ran, 5 skipped, 1 failed (torch.bfloat16, cuda)\n") == (31, 5, 1)
    assert read_case_count("killed\n") is None


def _fake_sanitizer(tmp_path: Path, output: str, status: int) -> str:
    tool = tmp_path / "compute-sanitizer"
    tool.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\nexit {status}\n")
    tool.chmod(0o755)
    return str(tool)


@pytest.mark.parametrize("output, status, expected", [
    ("gpu_check_cases: 31 ran, 0 skipped, 0 failed\n========= ERROR SUMMARY: 0 errors\n", 0, "passed"),
    ("gpu_check_cases: 31 ran, 0 skipped, 0 failed\n========= ERROR SUMMARY: 2 errors\n", 99, "failed: memcheck: 2 errors"),
    ("========= Error: Device not supported\n", 1, "skipped: compute-sanitizer refused the device: Error: Device not supported"),
], ids=["clean", "errors", "refused"])
def test_sanitizer_step_reads_each_tool(tmp_path, monkeypatch, output, status, expected):
    monkeypatch.setattr(gpu_check, "cuda_tool", lambda name: _fake_sanitizer(tmp_path, output, status))
    check = gpu_check.GpuCheck(tmp_path / "out", tmp_path)
    result = check.sanitizer(timeout=20)
    assert result.label.startswith(expected), result.label
    assert [line.split(":")[0] for line in result.details] == ["memcheck", "racecheck"]
    assert "--tool memcheck" in (tmp_path / "out" / "sanitizer.log").read_text()


# ---------------------------------------------------------------------------------------------
# The summary and the benchmark report
# ---------------------------------------------------------------------------------------------


def _row(provider: str, median: float, op="lstm", shape="B16-T1024-I768-H768", mode="forward", dtype="bfloat16") -> dict:
    return {"op": op, "provider": provider, "mode": mode, "shape": shape, "dtype": dtype, "median_ms": str(median),
            "p20_ms": str(median), "p80_ms": str(median), "peak_mem_mib": "", "device": "NVIDIA H200",
            "torch": "2.11.0", "triton": "3.6.0", "cuda": "13.0", "commit": "abc1234", "date": "2026-12-01T00:00:00Z"}


ROWS = [
    _row("cudnn", 2.0), _row("triton", 3.0), _row("native", 1.5),
    _row("cudnn", 8.0, shape="B64-T1024-I768-H768"), _row("triton", 40.0, shape="B64-T1024-I768-H768"),
    _row("sdpa", 0.1, op="dot_attention", shape="B32-Tq512-Tk512-D256-A256"),
    _row("triton", 0.3, op="dot_attention", shape="B32-Tq512-Tk512-D256-A256"),
    _row("native", 9.0, shape="B64-T1024-I768-H768", mode="forward+backward"),  # no baseline row
]


def test_bench_ratios_standard_point_and_worst_ratio():
    measured = gpu_check_bench.with_ratios(ROWS)
    standard = {m["provider"]: m["ratio"] for m in gpu_check_bench.standard_point(measured)}
    assert standard == {"cudnn": 1.0, "triton": 1.5, "native": 0.75}
    worst = gpu_check_bench.worst_ratio(measured)
    assert (worst["provider"], worst["shape"], worst["ratio"], worst["baseline"]) == ("triton", "B64-T1024-I768-H768", 5.0, "cudnn")
    attention = next(m for m in measured if m["op"] == "dot_attention" and m["provider"] == "triton")
    assert attention["baseline"] == "sdpa" and attention["ratio"] == pytest.approx(3.0)


def test_bench_report_draws_plots_when_the_sweep_did_not_and_saves_when_asked(tmp_path, monkeypatch):
    from fused_rnn.bench.results import read_rows, write_rows

    csv = tmp_path / "bench.csv"
    write_rows(csv, [{**ROWS[0], "commit": ""}, *ROWS[1:]])  # a checkout without .git records none
    monkeypatch.setattr(gpu_check_bench, "default_results_dir", lambda: tmp_path / "results")
    args = ["--csv", str(csv), "--plots", str(tmp_path / "plots"), "--archive", str(tmp_path / "plots.tar.gz"),
            "--json", str(tmp_path / "bench.json"), "--save", "--commit", "feed123"]
    assert gpu_check_bench.main(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["rows"] == len(ROWS) and report["standard_shape"] == "lstm B16-T1024-I768-H768"
    assert report["worst"]["ratio"] == 5.0
    with tarfile.open(tmp_path / "plots.tar.gz") as tar:
        assert tar.getnames() == report["plots"] and "cuda-lstm-bfloat16.png" in report["plots"]
    assert report["saved"] == str(tmp_path / "results" / "cuda.csv")
    assert read_rows(tmp_path / "results" / "cuda.csv") == read_rows(csv)
    assert [row["commit"] for row in read_rows(csv)] == ["feed123"] + ["abc1234"] * (len(ROWS) - 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a CUDA device the command would run the sweep")
def test_the_bench_command_is_one_the_cli_takes_and_its_sweep_starts_at_the_standard_point(tmp_path):
    from fused_rnn.bench.command import parse_dtypes, points_for
    from fused_rnn.bench.shapes import STANDARD, Point

    args = [*gpu_check.BENCH_COMMAND, "--provider", gpu_check.BENCH_PROVIDERS, "--csv", str(tmp_path / "b.csv"),
            "--plot", str(tmp_path / "plots")]
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    # Every flag and provider was accepted; only the missing device stops it.
    assert done.returncode == 2 and "--device cuda: " in done.stderr and "CUDA device" in done.stderr, done.stderr
    assert "unrecognized arguments" not in done.stderr and "must be one of" not in done.stderr, done.stderr
    sweep, dtypes = args[args.index("--sweep") + 1], args[args.index("--dtype") + 1]
    assert parse_dtypes(dtypes.split(",")) == [torch.bfloat16, torch.float16]
    points = points_for("cuda", False, [], [sweep], [])
    assert points[0] == Point("lstm", STANDARD)
    assert {p.op for p in points} >= {"lstm", "gru", "additive_attention", "dot_attention"}


def test_summary_quotes_steps_standard_point_worst_ratio_and_failed_tests():
    counts = PytestCounts(passed=10, failed=1, skipped=2, failures=[("tests.test_a::test_bad", "assert 1 == 2")],
                        skip_reasons=Counter({"native backend unavailable: not built": 2}))
    measured = gpu_check_bench.with_ratios(ROWS)
    bench = {"rows": len(ROWS), "standard_shape": "lstm B16-T1024-I768-H768", "plots": [], "saved": None,
             "standard_point": gpu_check_bench.standard_point(measured), "worst": gpu_check_bench.worst_ratio(measured)}
    results = [
        StepResult("environment", PASSED, details=["NVIDIA H200, 132 SMs"], data={"environment": {"gpu": "NVIDIA H200", "commit": "abc1234"}},
                   seconds=2.0, budget_s=20),
        StepResult("tests", FAILED, "1 of 11 tests did not pass", details=[str(counts)], data={"tests": counts}, seconds=150, budget_s=180),
        StepResult("bench", TIMED_OUT, "after 100 s, 8 rows kept", seconds=100, budget_s=100),
        StepResult("report", PASSED, data={"bench": bench}, seconds=3, budget_s=25),
    ]
    text = format_summary(results, ["summary.md", "tests.log"], total_s=255, budget_s=525, exit_status=1)
    table = _table(text)
    assert table["tests"] == ["failed: 1 of 11 tests did not pass", "150 s", "180 s", "10 passed, 1 failed, 0 errors, 2 skipped"]
    assert table["bench"][0] == "timed out: after 100 s, 8 rows kept"
    assert "Result: **failed** (exit status 1); 255 s in all (total budget 525 s); commit abc1234." in text
    assert "| bfloat16 | forward | native | 1.500 | 0.75 |" in text
    assert "Worst ratio in the sweep (8 rows): triton lstm B64-T1024-I768-H768 forward bfloat16: 40.000 ms, 5.00 x cudnn's time." in text
    assert "- `tests.test_a::test_bad`: assert 1 == 2" in text
    assert "- 2 x native backend unavailable: not built" in text
    assert "| GPU | NVIDIA H200 |" in text


# ---------------------------------------------------------------------------------------------
# The small cases compute-sanitizer runs, and what the CUDA parity tests cover
# ---------------------------------------------------------------------------------------------


def test_sanitizer_cases_run_on_the_cpu():
    """The same calls as under compute-sanitizer, on the CPU (Triton in the interpreter): the
    script keeps up with the ops' signatures without a GPU."""
    done = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check_cases.py"), "--device", "cpu"],
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran, skipped, failed = read_case_count(done.stdout)
    assert failed == 0 and ran + skipped == 2 * (5 + 8)  # per backend: 5 cells, 4 scores x 2 queries
    assert ran >= 13, done.stdout


def test_every_kernel_backend_has_cuda_parity_tests_in_every_dtype(tmp_path):
    """Read off the collected tests marked `cuda`: each (family, backend, dtype) has one, and
    without a CUDA device each of them is skipped with a reason."""
    coverage = tmp_path / "coverage.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p", "no:cacheprovider",
         "-p", "gpu_check_coverage", "--cuda-parity-coverage", str(coverage), "tests"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")]))},
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(coverage.read_text())
    covered = {tuple(entry) for entry in found["covered"]}
    missing = [(family, backend, dtype) for family in ("recurrence", "attention")
               for backend in KERNEL_BACKENDS for dtype in DTYPES if (family, backend, dtype) not in covered]
    assert not missing, f"no CUDA parity test for {missing}"
    if not torch.cuda.is_available():
        unskipped = [t["id"] for t in found["tests"] if not (t["skip"] and "CUDA" in t["skip"])]
        assert not unskipped, f"collected without a skip naming CUDA: {unskipped[:5]}"
