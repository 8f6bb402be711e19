"""What the GPU check reads off its tools: pytest's JUnit XML (or, when pytest was stopped before
writing it, its verbose log), compute-sanitizer's summaries, and the case script's count."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class PytestCounts:
    """Outcomes of a pytest run: counts, the failed tests with the first line of their message,
    and how many tests were skipped for each reason."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    skip_reasons: Counter = field(default_factory=Counter)

    @property
    def ran(self) -> int:
        return self.passed + self.failed + self.errors

    def __str__(self) -> str:
        return f"{self.passed} passed, {self.failed} failed, {self.errors} errors, {self.skipped} skipped"


def _first_line(text: Optional[str]) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def _skip_reason(message: str) -> str:
    # pytest writes "path:line: reason" for skips raised inside a test.
    return re.sub(r"^\S+:\d+: ", "", message)


def read_junit(path: Path) -> PytestCounts:
    """The outcomes recorded in pytest's JUnit XML at `path`."""
    counts = PytestCounts()
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if failure is not None:
            counts.failed += 1
            counts.failures.append((name, _first_line(failure.get("message") or failure.text)))
        elif error is not None:
            counts.errors += 1
            counts.failures.append((name, _first_line(error.get("message") or error.text)))
        elif skipped is not None:
            counts.skipped += 1
            counts.skip_reasons[_skip_reason(_first_line(skipped.get("message") or skipped.text))] += 1
        else:
            counts.passed += 1
    return counts


_VERBOSE_LINE = re.compile(
    r"(?:(?P<status_first>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (?P<id_after>\S+::\S+))"
    r"|(?:(?P<id_first>\S+::\S+) (?P<status_after>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS))"
)


def read_verbose_log(text: str) -> PytestCounts:
    """The outcomes of `pytest -v` as far as its log goes (with or without pytest-xdist, whose
    lines put the status first): what is left when pytest was stopped before writing its XML."""
    outcomes: dict[str, str] = {}
    for match in _VERBOSE_LINE.finditer(text):
        test = match.group("id_after") or match.group("id_first")
        outcomes[test] = match.group("status_first") or match.group("status_after")
    counts = PytestCounts()
    for test, status in outcomes.items():
        if status in ("PASSED", "XFAIL"):
            counts.passed += 1
        elif status in ("FAILED", "XPASS"):
            counts.failed += 1
            counts.failures.append((test, status.lower()))
        elif status == "ERROR":
            counts.errors += 1
            counts.failures.append((test, "error"))
        else:
            counts.skipped += 1
    return counts


@dataclass
class SanitizerReport:
    """One compute-sanitizer run: why it refused to run (None when it ran), and the errors and
    warnings of its closing summary (None when it printed none)."""

    refused: Optional[str]
    errors: Optional[int]
    warnings: Optional[int]


_REFUSALS = ("Device not supported", "Unable to find injection library")


def read_sanitizer(output: str) -> SanitizerReport:
    """memcheck ends with "ERROR SUMMARY: N errors"; racecheck with "RACECHECK SUMMARY: N hazards
    displayed (E errors, W warnings)". A device it cannot instrument is a refusal, not a failure."""
    refused = next((line.strip(" =") for line in output.splitlines()
                    if any(text in line for text in _REFUSALS)), None)
    race = re.search(r"RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?, (\d+) warnings?\)", output)
    if race:
        return SanitizerReport(refused, int(race.group(1)), int(race.group(2)))
    errors = re.search(r"ERROR SUMMARY: (\d+) errors?", output)
    return SanitizerReport(refused, int(errors.group(1)) if errors else None, None)


def read_case_count(output: str) -> Optional[tuple[int, int, int]]:
    """(cases run, skipped, failed) from the last line of scripts/gpu_check_cases.py."""
    found = re.findall(r"gpu_check_cases: (\d+) ran, (\d+) skipped, (\d+) failed", output)
    return tuple(int(n) for n in found[-1]) if found else None
