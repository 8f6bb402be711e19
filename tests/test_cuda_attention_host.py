"""The __host__ __device__ functions of the CUDA attention kernels (csrc/cuda/attention_math.cuh)
and their planner (csrc/cuda/attention_plan.h), executed on the host by tests/cuda_attention_host.cu
(compiled by nvcc, no GPU needed):

- the warp tile products built from the kernels' fragment maps equal the plain products, on an
  emulation of ldmatrix and mma.m16n8k16 written from the PTX ISA's fragment tables;
- the kernels' tile loop (masking, online softmax, split-K combine, weights from lse, recomputed
  weights and score gradients, the additive score's gradient terms) run on the host matches
  fused_rnn/reference.py in every dtype: float64 within 1e-12, float32 within 1e-5, float16 and
  bfloat16 within twice the reference's own error in that dtype;
- the planner's tilings fit the shared memory of an H100/H200 and an A100 on the judged grid, in
  layouts whose buffers are aligned and disjoint, with chunks that cover the features and values.
Skipped without nvcc."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from cuda_attention_programs import ADDITIVE, DOT, DTYPE_CODES, check_against_reference, host_program, run
from cuda_toolchain import NVCC

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")

FORWARD, QUERIES, KEYS, VALUES = range(4)  # AttentionPass
# (processors, opt-in shared memory per block, shared memory per multiprocessor), bytes.
DEVICES = {"sm_90 H100/H200": (132, 232_448, 233_472), "sm_80 A100": (108, 166_912, 167_936)}
RESERVED_PER_BLOCK = 1024  # shared memory the hardware keeps per resident block (sm_80, sm_90)


def test_fragment_maps_match_the_ptx_semantics():
    assert "fragments ok" in run(host_program(), "fragments")


# ------------------------------------------------------------------------------------------------
# The tile loop against the reference.
# ------------------------------------------------------------------------------------------------

# (B, Tq, Tk, F, Dv, lengths, processors): five key tiles in three splits, with splits past the
# first row's single key; decoder steps split three ways; one full tile, no split. Large enough that
# the half types' relative errors are stable: over ten seeds the tile loop's error stays within
# 1.1x the reference's (with a handful of rows, d_query's error depends on the rounding of a few
# rows' delta, for the reference as much as for the kernels, and varies 3x from seed to seed).
SHAPES = [
    (2, 37, 300, 24, 16, True, 3),
    (16, 1, 130, 33, 7, False, 132),
    (3, 17, 64, 33, 16, True, 1),
]


@pytest.mark.parametrize("dtype", list(DTYPE_CODES), ids=str)
@pytest.mark.parametrize("score", [ADDITIVE, DOT], ids=["additive", "dot"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tile_loop_matches_reference(tmp_path, shape, score, dtype):
    check_against_reference(host_program(), tmp_path, score, shape, dtype)


# ------------------------------------------------------------------------------------------------
# The planner on the judged grid.
# ------------------------------------------------------------------------------------------------

JUDGED = list(itertools.product((1, 32), (1, 128, 512, 2048), (128, 512, 2048, 4096), (64, 128, 256)))
HALF_TYPES = (torch.float16, torch.bfloat16)
BUFFERS = ("rows", "cols", "value_rows", "value_cols", "v", "column_stats", "score_grads")


def _plans(problems):
    lines = "".join(" ".join(str(x) for x in problem) + "\n" for problem in problems)
    return [json.loads(line) for line in run(host_program(), "plan", stdin=lines).splitlines()]


def _buffer_sizes(plan, pass_, score):
    """Bytes of each buffer of the layout as the kernels use it."""
    rows, columns = 16 * plan["warps"], plan["block_columns"]
    element, acc = plan["element_bytes"], plan["accumulator_bytes"]
    return {
        "rows": rows * plan["feature_stride"] * element,
        "cols": columns * plan["feature_stride"] * element,
        "value_rows": rows * plan["value_stride"] * element,
        "value_cols": columns * plan["value_stride"] * element,
        "v": plan["feature_chunk"] * acc,
        "column_stats": 2 * columns * acc,
        "score_grads": plan["warps"] * columns * 16 * acc,
    }


def _check_plan(plan, problem, limits):
    pass_, score, _, batch, tq, tk, features, dv, _, _ = problem
    assert plan["shared_bytes"] == plan["bytes"] <= limits[1], (problem, plan)
    sizes = _buffer_sizes(plan, pass_, score)
    present = sorted((plan[name], name) for name in BUFFERS if plan[name] >= 0)
    for (offset, name), following in zip(present, present[1:] + [(plan["bytes"], "end")]):
        assert offset % 16 == 0 and offset + sizes[name] <= following[0], (name, problem, plan)
    assert plan["feature_stride"] == plan["feature_chunk"] + 16 // plan["element_bytes"]
    # The key pass reduces d_v across warps ([warps, feature_chunk]) in the dS tiles' buffer.
    assert plan["score_grads"] < 0 or plan["block_columns"] * 16 >= plan["feature_chunk"]
    for chunk, chunks, size in (("feature_chunk", "feature_chunks", features), ("value_chunk", "value_chunks", dv)):
        assert plan[chunk] % 16 == 0 and 16 <= plan[chunk] <= plan["output_width"], (problem, plan)
        assert plan[chunk] * plan[chunks] >= size > plan[chunk] * (plan[chunks] - 1) - 16, (problem, plan)
    rows = tk if pass_ in (KEYS, VALUES) else tq
    assert plan["row_blocks"] == math.ceil(rows / (16 * plan["warps"]))
    tiles = math.ceil((tq if pass_ in (KEYS, VALUES) else tk) / plan["block_columns"])
    assert (plan["splits"] - 1) * plan["tiles_per_split"] < tiles <= plan["splits"] * plan["tiles_per_split"]
    output_chunks = plan["feature_chunks"] if pass_ in (QUERIES, KEYS) else plan["value_chunks"]
    assert plan["grid"] == [batch * plan["row_blocks"], plan["splits"], output_chunks]


@pytest.mark.parametrize("device", list(DEVICES))
def test_planner_fits_the_judged_grid(device):
    """Every pass, score and dtype at B in {1, 32}, Tq in {1, 128, 512, 2048}, Tk in {128, 512,
    2048, 4096}, A = D = Dv in {64, 128, 256}: the block's shared memory fits the device in one
    chunk of features and values for the half types, and on sm_90 two half-type blocks fit a
    multiprocessor, as the kernels' register budget assumes (kAttentionBlocksPerProcessor; an
    A100's 164 KiB hold one block at D = 256)."""
    processors, per_block, per_processor = DEVICES[device]
    problems = [(pass_, score, DTYPE_CODES[dtype], b, tq, tk, d, d, processors, per_block)
                for pass_ in range(4) for score in (ADDITIVE, DOT)
                for dtype in (torch.float16, torch.bfloat16, torch.float32)
                for b, tq, tk, d in JUDGED]
    plans = _plans(problems)
    assert len(plans) == len(problems)
    for problem, plan in zip(problems, plans):
        _check_plan(plan, problem, DEVICES[device])
        if problem[2] in (DTYPE_CODES[t] for t in HALF_TYPES):
            assert plan["feature_chunks"] == plan["value_chunks"] == 1, (problem, plan)
            if device.startswith("sm_90"):
                assert 2 * (plan["shared_bytes"] + RESERVED_PER_BLOCK) <= per_processor, (problem, plan)


def test_planner_chunks_sizes_beyond_one_block():
    """Features and values too wide for one block's registers or shared memory are chunked until
    the block fits, in every dtype."""
    processors, per_block, _ = DEVICES["sm_80 A100"]
    problems = [(pass_, score, code, 2, 300, 700, f, dv, processors, per_block)
                for pass_ in range(4) for score in (ADDITIVE, DOT) for code in DTYPE_CODES.values()
                for f, dv in ((1000, 1000), (3000, 17), (5, 4000))]
    for problem, plan in zip(problems, _plans(problems)):
        _check_plan(plan, problem, DEVICES["sm_80 A100"])
