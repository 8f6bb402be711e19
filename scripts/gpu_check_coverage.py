"""Which kernel backends have CUDA parity tests in which dtype, read off the tests themselves.

A pytest plugin: after collection it records, for every collected test marked `cuda` whose
parameters name a `backend` and a `dtype`, the family of what it tests ("recurrence" when a
parameter is a fused_rnn.parity.Case or a `cell`, "attention" when it is a
fused_rnn.attention_parity.Case or a `score`), and whether the test carries a skip mark (and its
reason). Load it with `-p gpu_check_coverage` (scripts/ on PYTHONPATH):

    PYTHONPATH=scripts python -m pytest --collect-only -q -m cuda -p gpu_check_coverage \
        --cuda-parity-coverage coverage.json tests

The JSON holds {"covered": [[family, backend, dtype], ...], "tests": [{"id", "family",
"backend", "dtype", "skip"}, ...]}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest


def pytest_addoption(parser) -> None:
    parser.addoption("--cuda-parity-coverage", metavar="PATH",
                     help="write which (family, backend, dtype) the cuda-marked parity tests cover here")


def _family(params: dict) -> Optional[str]:
    from fused_rnn import attention_parity, parity

    values = list(params.values())
    if "score" in params or any(isinstance(v, attention_parity.Case) for v in values):
        return "attention"
    if "cell" in params or any(isinstance(v, parity.Case) for v in values):
        return "recurrence"
    return None


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _skip_reason(item) -> Optional[str]:
    mark = item.get_closest_marker("skip")
    if mark is None:
        return None
    return str(mark.kwargs.get("reason") or (mark.args[0] if mark.args else "")) or "no reason given"


def parity_tests(items) -> list[dict]:
    """The collected cuda-marked tests with a backend, a dtype and a family."""
    found = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.get_closest_marker("cuda") is None or "backend" not in params or "dtype" not in params:
            continue
        family = _family(params)
        if family is not None:
            found.append({"id": item.nodeid, "family": family, "backend": params["backend"],
                          "dtype": _dtype_name(params["dtype"]), "skip": _skip_reason(item)})
    return found


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session) -> None:
    path = session.config.getoption("--cuda-parity-coverage")
    if not path:
        return
    tests = parity_tests(session.items)
    covered = sorted({(t["family"], t["backend"], t["dtype"]) for t in tests})
    Path(path).write_text(json.dumps({"covered": covered, "tests": tests}, indent=1) + "\n")
