"""summary.md, the GPU check's report: the result, a table of the steps (status with its reason,
time, budget, details), the environment, the standard point's times and ratios to cuDNN, the worst
ratio of the sweep, the failed tests, the skipped tests by reason, and the files beside it.

The step results' `data` carries what the sections quote: "environment" (the record of
gpu_check_environment.py), "tests" (a gpu_check_parse.PytestCounts) and "bench" (the report of
gpu_check_bench.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from gpu_check_steps import StepResult

FILE_ROLES = {
    "summary.md": "this report",
    "build.log": "the environment probe and the build of fused_rnn._C",
    "tests.log": "pytest's output for the CUDA tests",
    "tests.xml": "their JUnit XML",
    "sanitizer.log": "compute-sanitizer memcheck and racecheck on the small cases",
    "bench.log": "the benchmark sweep and its report",
    "bench.csv": "the sweep's rows (the format of benchmarks/results/*.csv)",
    "plots.tar.gz": "the sweep's plots",
}
ENVIRONMENT_ROWS = (
    ("GPU", "gpu"), ("GPUs", "gpu_count"), ("SMs", "sm_count"), ("compute capability", "compute_capability"),
    ("memory (GiB)", "memory_gib"), ("L2 (MiB)", "l2_mib"), ("driver", "driver"), ("CUDA of torch", "torch_cuda"),
    ("torch", "torch"), ("triton", "triton"), ("nvcc", "nvcc"), ("compute-sanitizer", "compute_sanitizer"),
    ("Python", "python"), ("CPU cores", "cpu_cores"), ("commit", "commit"), ("no CUDA device", "no_device_reason"),
)
LISTED_FAILURES = 40


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def _data(results: list[StepResult], key: str):
    return next((r.data[key] for r in results if key in r.data), None)


def _steps(results: list[StepResult]) -> list[str]:
    lines = ["| step | status | time | budget | details |", "|---|---|---|---|---|"]
    for r in results:
        budget = _seconds(r.budget_s) if r.budget_s else "-"
        lines.append(f"| {r.name} | {_cell(r.label)} | {_seconds(r.seconds)} | {budget} | {_cell('; '.join(r.details))} |")
    return lines


def _environment(record: dict) -> list[str]:
    lines = ["## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {_cell(record[key])} |" for label, key in ENVIRONMENT_ROWS if key in record]
    return lines


def _ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _bench(report: dict) -> list[str]:
    lines = [f"## Standard point: {report['standard_shape']}", ""]
    rows = report["standard_point"]
    if rows:
        lines += ["| dtype | mode | provider | median ms | time / cudnn |", "|---|---|---|---|---|"]
        for m in sorted(rows, key=lambda m: (m["dtype"], m["mode"], m["provider"])):
            lines.append(f"| {m['dtype']} | {m['mode']} | {m['provider']} | {m['median_ms']:.3f} | {_ratio(m['ratio'])} |")
    else:
        lines.append("Not measured.")
    worst = report["worst"]
    lines.append("")
    if worst:
        lines.append(
            f"Worst ratio in the sweep ({report['rows']} rows): {worst['provider']} {worst['op']} {worst['shape']} "
            f"{worst['mode']} {worst['dtype']}: {worst['median_ms']:.3f} ms, {worst['ratio']:.2f} x {worst['baseline']}'s time."
        )
    else:
        lines.append(f"Worst ratio in the sweep ({report['rows']} rows): no triton or native row to compare with its baseline.")
    if report.get("saved"):
        lines.append(f"The rows were merged into {report['saved']}.")
    return lines


def _tests(counts) -> list[str]:
    lines = []
    if counts.failures:
        lines += [f"## Failed tests ({len(counts.failures)})", ""]
        lines += [f"- `{name}`: {_cell(message)}" for name, message in counts.failures[:LISTED_FAILURES]]
        if len(counts.failures) > LISTED_FAILURES:
            lines.append(f"- and {len(counts.failures) - LISTED_FAILURES} more (tests.xml)")
        lines.append("")
    if counts.skip_reasons:
        lines += [f"## Skipped tests ({counts.skipped}), by reason", ""]
        lines += [f"- {n} x {_cell(reason)}" for reason, n in counts.skip_reasons.most_common()]
        lines.append("")
    return lines


def format_summary(results: list[StepResult], files: list[str], total_s: float, budget_s: float,
                   exit_status: Optional[int]) -> str:
    """The report; exit_status None while the check is still running."""
    if exit_status is None:
        outcome = "**running** (this report is rewritten after each step)"
    else:
        outcome = f"**{'passed' if exit_status == 0 else 'failed'}** (exit status {exit_status})"
    environment = _data(results, "environment") or {}
    lines = [
        "# GPU check", "",
        f"Result: {outcome}; {_seconds(total_s)} in all (total budget {_seconds(budget_s)}); "
        f"commit {environment.get('commit', 'unknown')}.", "",
        *_steps(results), "",
    ]
    if environment:
        lines += [*_environment(environment), ""]
    bench = _data(results, "bench")
    if bench:
        lines += [*_bench(bench), ""]
    tests = _data(results, "tests")
    if tests:
        lines += _tests(tests)
    lines += ["## Files", ""]
    lines += [f"- {name}: {FILE_ROLES.get(name, '')}" for name in files]
    return "\n".join(lines) + "\n"


def output_files(folder: Path) -> list[str]:
    """The check's files in `folder`, summary.md first, in the order of FILE_ROLES."""
    present = {p.name for p in folder.iterdir() if p.is_file()} | {"summary.md"}
    return [name for name in FILE_ROLES if name in present]


def write_summary(folder: Path, results: list[StepResult], total_s: float, budget_s: float,
                  exit_status: Optional[int]) -> Path:
    path = folder / "summary.md"
    text = format_summary(results, output_files(folder), total_s, budget_s, exit_status)
    temporary = path.with_suffix(".md.tmp")
    temporary.write_text(text)
    temporary.replace(path)
    return path
