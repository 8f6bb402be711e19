"""The recurrence launch planner (kernels.plan) as a plain function, with H100 limits, on any machine:
K chunks, CUDA's occupancy rules, a fitting plan at every point of the issue's grid by the estimate
(the compile gate, tests/test_triton_compile.py, checks the compiled kernels at its corners and
judged points), and the plan of the judged point. The exchange helpers' host side round-trips."""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton")

from fused_rnn.kernels import exchange  # noqa: E402
from fused_rnn.kernels import plan as planner  # noqa: E402

BATCHES = (1, 2, 8, 16, 32, 64, 128, 256)
HIDDEN = (32, 64, 128, 256, 512, 768, 1024, 1536, 2048)
DTYPES = ("bf16", "fp16", "fp32", "fp64")
KERNELS = [("rnn", False), ("lstm", False), ("lstm", True), ("gru", False)]


@pytest.mark.parametrize("k, quantum, chunks", [(768, 64, (512, 256, 0)), (100, 16, (64, 32, 16)),
                                                (33, 16, (32, 16, 0)), (240, 16, (256, 0, 0)),
                                                (2048, 128, (2048, 0, 0)), (1, 16, (16, 0, 0))])
def test_k_chunks_examples(k, quantum, chunks):
    assert planner.k_chunks(k, quantum) == chunks


@pytest.mark.parametrize("quantum", [16, 32, 64, 128])
def test_k_chunks_cover_k_with_at_most_three_powers_of_two(quantum):
    for k in range(1, 4097):
        chunks = [c for c in planner.k_chunks(k, quantum) if c]
        assert 1 <= len(chunks) <= 3 and chunks == sorted(chunks, reverse=True), (k, chunks)
        assert all(c % quantum == 0 and c & (c - 1) == 0 for c in chunks), (k, chunks)
        assert k <= sum(chunks) < k + chunks[-1], (k, chunks)


def test_programs_per_sm_follows_cuda_occupancy_rules():
    h100 = planner.H100
    # 255 registers x 128 threads -> 32768 of 65536 registers (per-warp units of 256): 2 per SM
    assert planner.programs_per_sm(h100, 255, 0, 4) == 2
    # 64 registers x 4 warps: 8 by registers; threads allow 16
    assert planner.programs_per_sm(h100, 64, 0, 4) == 8
    # 100 KB of shared memory plus the 1 KB the system reserves per block: 2 in 228 KB
    assert planner.programs_per_sm(h100, 32, 100 * 1024, 4) == 2
    assert planner.programs_per_sm(h100, 32, 0, 1) == 32  # the 32-blocks-per-SM cap
    assert planner.programs_per_sm(h100, 32, 232448, 4) == 1
    assert planner.programs_per_sm(h100, 32, 232449, 4) == 0  # above the per-block limit
    assert planner.programs_per_sm(h100, 256, 0, 4) == 0  # above 255 registers per thread


def may_launch_per_phase(cell: str, direction: str, batch: int, hidden: int, dtype: str) -> bool:
    """The grid points where a plan may not keep a resident grid on an H100: B = 256 with
    H >= 1536, and float64 at B * H >= 2^18. There a step's outputs (up to 4H x B) and their gate
    math, all in registers at once, exceed what 132 SMs hold, so kernels.launch runs one launch
    per phase (with a warning)."""
    return (batch == 256 and hidden >= 1536) or (dtype == "fp64" and batch * hidden >= 2**18)


@pytest.mark.parametrize("cell, projected", KERNELS, ids=lambda v: str(v))
def test_every_grid_point_has_a_resident_plan_by_the_estimate(cell, projected):
    """The issue's grid, both directions, every dtype: the planner's first candidate fits an H100
    (shared memory, estimated registers, grid resident at the estimated occupancy), except at the
    points may_launch_per_phase names."""
    misfits = []
    for direction, batch, hidden, dtype in itertools.product(("forward", "backward"), BATCHES, HIDDEN, DTYPES):
        state = hidden // 2 if projected else hidden
        plan = planner.recurrence_plans(cell, direction, batch, hidden, state, projected, dtype, planner.H100)[0]
        if not planner.fits(plan, planner.H100) and not may_launch_per_phase(cell, direction, batch, hidden, dtype):
            misfits.append(f"{direction} B={batch} H={hidden} {dtype}: {plan.describe()}")
    assert not misfits, misfits


def test_the_judged_point_gets_the_documented_plan():
    """LSTM B16 H768 bfloat16 on an H100 (kernels/lstm.py's docstring)."""
    forward = planner.recurrence_plans("lstm", "forward", 16, 768, 768, False, "bf16", planner.H100)[0]
    assert (forward.grid, forward.block_u, forward.num_warps, forward.split, forward.resident,
            forward.chunks, forward.products) == ((48, 1), 16, 8, 8, True, (512, 256, 0), ((64, 768),))
    backward = planner.recurrence_plans("lstm", "backward", 16, 768, 768, False, "bf16", planner.H100)[0]
    assert (backward.grid, backward.block_u, backward.num_warps, backward.resident, backward.chunks,
            backward.products) == ((48, 1), 16, 8, True, (1024, 1024, 1024), ((16, 3072),))
    assert planner.step_estimate_us(forward) < 1.96 and planner.step_estimate_us(backward) < 2.6


def test_interpreter_plans_use_float32_products_and_small_tiles():
    plans = planner.recurrence_plans("lstm", "forward", 5, 33, 33, False, "bf16", planner.H100, interpreting=True)
    assert plans[0].dot == "fp32" and plans[0].precision == "ieee"
    assert plans[0].products[0][0] == planner.INTERPRETER_ROWS and plans[0].grid[0] > 1
    fp64 = planner.recurrence_plans("gru", "backward", 5, 33, 33, False, "fp64", planner.H100, interpreting=True)
    assert fp64[0].dot == "fp64" and not fp64[0].resident


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_exchanged_words_round_trip(dtype):
    values = torch.randn(3, 5).to(dtype)
    words = exchange.pack(values, 7)
    assert torch.equal(exchange.unpack(words, dtype), values)
    if exchange.tagged(dtype):
        assert words.dtype == (torch.int32 if dtype.itemsize == 2 else torch.int64)
        mask = 0xFFFF if dtype.itemsize == 2 else 0xFFFFFFFF
        assert bool(((words & mask) == 7).all())
        fresh = exchange.exchange_buffer((2, 3), dtype, torch.device("cpu"))
        assert bool(((fresh & mask) == mask).all())  # no phase writes the tag of a fresh buffer first
