"""How the CPU recurrence splits its rows between the threads of a team (csrc/cpu/row_split.h),
compiled on the host and checked against a model of the rule and against the work it balances."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_plans import CXX, ROOT, run

from fused_rnn.bench.shapes import PackedShape
from fused_rnn.bench.workloads import packed_lengths

CPU_DIR = ROOT / "csrc" / "cpu"


@pytest.fixture(scope="module")
def row_split_report(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler")
    out = tmp_path_factory.mktemp("row_split") / "row_split_report"
    run([CXX, "-std=c++17", "-O2", "-Wall", "-Werror", "-o", str(out), str(CPU_DIR / "tests" / "row_split_report.cpp")])

    def splits(problems: list[tuple[int, int, int, list[int]]]) -> list[list[int]]:
        """(members, steps, batch, lengths [batch], or [] for rows all `steps` long) per problem
        -> the split [members + 1] of each."""
        lines = ""
        for members, steps, batch, lengths in problems:
            lines += " ".join(str(v) for v in [members, steps, batch, *lengths]) + "\n"
        return [[int(v) for v in line.split()] for line in run([str(out)], lines).splitlines()]

    return splits


def model_split(members: int, lengths: list[int]) -> list[int]:
    """The rule of row_split.h: boundary m at the row boundary nearest to m / members of the work
    (a straddling row to the member holding more than half of it)."""
    total, split, b, before = sum(lengths), [0], 0, 0
    for m in range(1, members):
        share = total * m // members
        while b < len(lengths) and before + lengths[b] <= share:
            before += lengths[b]
            b += 1
        if b < len(lengths) and 2 * (share - before) > lengths[b]:
            before += lengths[b]
            b += 1
        split.append(b)
    return split + [len(lengths)]


def member_work(split: list[int], lengths: list[int]) -> list[int]:
    return [sum(lengths[split[m] : split[m + 1]]) for m in range(len(split) - 1)]


def test_rows_of_one_length_split_evenly(row_split_report):
    problems = [(2, 64, 64, []), (2, 7, 7, []), (4, 3, 16, []), (3, 5, 10, []), (2, 9, 1, []), (8, 2, 3, [])]
    for (members, steps, batch, _), split in zip(problems, row_split_report(problems)):
        assert split == model_split(members, [steps] * batch), (members, steps, batch)
        sizes = np.diff(split)
        assert sizes.max() - sizes.min() <= 1, (members, batch, split)


def test_sorted_lengths_split_by_work(row_split_report):
    rng = np.random.default_rng(5)
    problems = []
    for batch, steps in ((16, 256), (64, 256), (13, 97), (5, 1024), (200, 31)):
        problems.append((2, steps, batch, packed_lengths(PackedShape(batch, steps, 8, 8)).tolist()))
        for members in (2, 3, 4, 7):
            lengths = sorted(rng.integers(1, steps + 1, batch).tolist(), reverse=True)
            problems.append((members, steps, batch, lengths))
    problems.append((2, 10, 4, [10, 1, 1, 1]))  # one row outweighs the rest
    problems.append((4, 5, 2, [5, 5]))  # more members than rows
    for (members, steps, batch, lengths), split in zip(problems, row_split_report(problems)):
        assert split == model_split(members, lengths), (members, lengths)
        assert split[0] == 0 and split[-1] == batch and all(np.diff(split) >= 0), split
        work = member_work(split, lengths)
        for m in range(members):
            # Each boundary lies within half a row of its share, so each member's work within a row.
            share = sum(lengths) * (m + 1) // members - sum(lengths) * m // members
            assert abs(work[m] - share) <= max(lengths), (members, lengths, split)


def test_benchmark_lengths_balance_better_than_interleaved_blocks(row_split_report):
    # The split this replaced: blocks of ceil(B / 4) rows, member m holding blocks m and m + 2.
    for batch in (16, 64):
        lengths = packed_lengths(PackedShape(batch, 256, 8, 8)).tolist()
        (split,) = row_split_report([(2, 256, batch, lengths)])
        block = -(-batch // 4)
        interleaved = [sum(lengths[b * block : (b + 1) * block]) for b in range(4)]
        interleaved_most = max(interleaved[0] + interleaved[2], interleaved[1] + interleaved[3])
        mean = sum(lengths) / 2
        assert interleaved_most / mean > 1.10
        assert max(member_work(split, lengths)) / mean < 1.02
