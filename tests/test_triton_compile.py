"""The compile gate of the Triton backend: every kernel the planners choose, at the judged points and
the corners of the issue's grids, compiled for an H100 (sm_90) the way Triton compiles at run time
(tests/triton_sm90.py), must fit it: shared memory <= 232,448 bytes (static <= what
kernels.launch assumes), no spills and no stack (recurrence kernels: at most 16 bytes of stack,
kernels.launch.SPILL_BOUND_BYTES), and for the recurrence kernels persistent launches whose grids
are no larger than the programs the compiled kernel's own registers, shared memory and warps
leave resident on 132 SMs (one launch for the whole grid, except perhaps at the largest points,
which tests/test_triton_plan.py names: there the batch blocks run in several persistent
launches), no cp.async crossing a step boundary, the programs synchronised through tagged words
(kernels.exchange; float64: the grid barrier), and the resident weights allocated in shared memory
before the step loop.

Recurrence points (B x H corners and judged points, I = H, proj_size = H / 2):
  every cell and direction x B in {1, 16, 256} x H in {32, 768, 2048} x {bf16, fp32, fp64}; plus
  B = 64, H = 1024 (bf16, fp32); B16 H768 in fp16, in fp32 with tf32, for inference, without
  lengths, and the relu RNN.
Attention points: additive and dot, forward and backward, B in {1, 32}, Tq in {1, 128, 512, 2048},
  Tk in {128, 512, 2048, 4096}, A = D = Dv in {64, 128, 256}, bf16 and fp32 (the full grid); fp16,
  tf32 and need_weights at corners.
(float16 compiles to the same tiles as bfloat16; the grid's other B and H values fall between
corners that bound their tiles, and the runtime re-checks every plan on its compiled kernel.)

The compiles run in a subprocess (kernels defined under TRITON_INTERPRET=1 cannot be compiled),
two at a time, and are cached under the pytest cache by the kernels' source digest; a cold run
takes about 3.5-4.5 minutes on two cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

sys.path.insert(0, str(Path(__file__).parent))
from triton_sm90 import Point  # noqa: E402

SHARED_LIMIT = 232448
SPILL_BOUND = 16  # kernels.launch.SPILL_BOUND_BYTES: the recurrence kernels' bound
STATIC_SHARED = 1024  # kernels.launch.STATIC_SHARED
SMS = 132
CELLS = ("rnn_tanh", "lstm", "lstm_proj", "gru")


def _recurrence_points() -> list[Point]:
    points = [
        Point("recurrence", direction, batch, hidden, dtype, cell=cell)
        for cell in CELLS
        for direction in ("forward", "backward")
        for batch in (1, 16, 256)
        for hidden in (32, 768, 2048)
        for dtype in ("bf16", "fp32", "fp64")
    ]
    for cell in CELLS:
        for direction in ("forward", "backward"):
            points += [Point("recurrence", direction, 64, 1024, dtype, cell=cell) for dtype in ("bf16", "fp32")]
            points += [
                Point("recurrence", direction, 16, 768, "fp16", cell=cell),
                Point("recurrence", direction, 16, 768, "fp32", cell=cell, tf32=True),
                Point("recurrence", direction, 16, 768, "bf16", cell=cell, lengths=False),
            ]
        if cell in ("lstm", "lstm_proj", "gru"):
            points += [Point("recurrence", "inference", 16, 768, d, cell=cell) for d in ("bf16", "fp32", "fp64")]
    points += [Point("recurrence", d, 16, 768, "bf16", cell="rnn_relu") for d in ("forward", "backward")]
    return points


def _attention_points() -> list[Point]:
    points = [
        Point(kind, direction, batch, size, dtype, queries=queries, keys=keys)
        for kind in ("additive", "dot")
        for direction in ("forward", "backward")
        for batch in (1, 32)
        for queries in (1, 128, 512, 2048)
        for keys in (128, 512, 2048, 4096)
        for size in (64, 128, 256)
        for dtype in ("bf16", "fp32")
    ]
    corners = [(1, 1, 4096), (32, 2048, 128), (32, 512, 512)]
    for kind in ("additive", "dot"):
        for direction in ("forward", "backward"):
            for batch, queries, keys in corners:
                for size in (64, 256):
                    points += [
                        Point(kind, direction, batch, size, "fp16", queries=queries, keys=keys),
                        Point(kind, direction, batch, size, "fp32", queries=queries, keys=keys, tf32=True),
                        Point(kind, direction, batch, size, "bf16", queries=queries, keys=keys, need_weights=True),
                    ]
    return points


RECURRENCE_POINTS = _recurrence_points()
ATTENTION_POINTS = _attention_points()
ATTENTION_GROUPS = sorted({(p.kind, p.direction, p.dtype, p.hidden) for p in ATTENTION_POINTS})


@pytest.fixture(scope="session")
def compiled(request, tmp_path_factory) -> dict:
    """{point name: [launch records]} for every point, from tests/triton_sm90.py in a subprocess."""
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("Triton has no NVIDIA backend here")
    work = tmp_path_factory.mktemp("triton_sm90")
    points_file, out = work / "points.json", work / "records.json"
    points_file.write_text(json.dumps([dataclasses.asdict(p) for p in RECURRENCE_POINTS + ATTENTION_POINTS]))
    # the pytest cache when it is enabled (-p no:cacheprovider: a cold, temporary one)
    cache = request.config.cache.mkdir("triton_sm90") if hasattr(request.config, "cache") else work / "cache"
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    command = [sys.executable, str(Path(__file__).parent / "triton_sm90.py"), "--points", str(points_file),
               "--cache", str(cache), "--out", str(out), "--workers", "2"]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    records: dict[str, list] = {}
    for record in json.loads(out.read_text())["records"]:
        records.setdefault(record["point"], []).append(record)
    return records


def _fits_a_block(record: dict, spill_bound: int) -> list[str]:
    if "error" in record:
        return [record["error"]]
    problems = []
    if record["shared"] + record["static_shared"] > SHARED_LIMIT:
        problems.append(f"shared memory {record['shared']} + {record['static_shared']} > {SHARED_LIMIT}")
    if record["static_shared"] > STATIC_SHARED:
        problems.append(f"static shared memory {record['static_shared']} > the {STATIC_SHARED} kernels.launch assumes")
    if max(record["spill_bytes"], record["stack_bytes"]) > spill_bound:
        problems.append(f"{record['spill_bytes']} bytes of spill stores, {record['stack_bytes']} of stack "
                        f"(bound {spill_bound})")
    return problems


@pytest.mark.parametrize("point", RECURRENCE_POINTS, ids=str)
def test_recurrence_plan_fits_an_h100(point, compiled):
    """The plan kernels.launch would choose (of the planner's first candidates, by their compiled
    kernels) runs persistent: its whole grid in one launch, except perhaps at the points
    tests/test_triton_plan.py names, where its batch blocks may take several launches."""
    from test_triton_plan import may_need_several_launches

    records = compiled[str(point)]
    assert records, "no launch recorded"
    for record in records:
        problems = _fits_a_block(record, SPILL_BOUND)
        if problems:
            pytest.fail(f"{record['kernel']} ({record['plan']}): " + "; ".join(problems))
        direction = "backward" if point.direction == "backward" else "forward"
        blocks = record["blocks_per_launch"]
        chose = (f"chose candidate {record['candidate']}: {record['registers']} registers, {record['per_sm']} "
                 f"per SM, grid {record['grid']}")
        if blocks == 0:
            problems.append(f"one launch per phase: no candidate keeps a batch block resident ({chose})")
        elif record["grid"][0] * blocks > record["per_sm"] * SMS:
            problems.append(f"{record['grid'][0]} x {blocks} programs per launch exceed {record['per_sm']} x {SMS} ({chose})")
        elif record["launches"] > 1 and not may_need_several_launches(
                point.cell.split("_")[0], direction, point.batch, point.hidden, point.dtype):
            problems.append(f"{record['launches']} persistent launches, not one ({chose})")
        problems += record["step_loop_problems"]
        expected = "barrier" if point.dtype == "fp64" else "tagged"
        if record["synchronisation"] != expected:
            problems.append(f"synchronisation between programs: {record['synchronisation']}, expected {expected}")
        if record["resident"] and not record["projected"] and record["resident_allocations"] < record["resident_chunks"]:
            problems.append(f"{record['resident_chunks']} resident W chunks but {record['resident_allocations']} "
                            "shared-memory allocations before the step loop")
        assert not problems, f"{record['kernel']} ({record['plan']}): " + "; ".join(problems)


@pytest.mark.parametrize("group", ATTENTION_GROUPS, ids=lambda g: "-".join(map(str, g)))
def test_attention_tiles_fit_an_h100(group, compiled):
    kind, direction, dtype, size = group
    points = [p for p in ATTENTION_POINTS if (p.kind, p.direction, p.dtype, p.hidden) == group]
    for point in points:
        records = compiled[str(point)]
        assert records, f"{point}: no launch recorded"
        for record in records:
            problems = _fits_a_block(record, 0)
            assert not problems, f"{point} {record['kernel']} ({record['plan']}): " + "; ".join(problems)
