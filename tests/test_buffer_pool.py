"""The CPU buffer pool of the native ops (csrc/cpu/buffer_pool.h): buffers above 1 MiB are kept
when freed and handed to the next call of a size they fit; at most the limit stays unused (oldest
unmapped first); smaller buffers are PyTorch's; the profiler sees pooled allocations; kernels
writing into reused (stale) memory give bitwise the results they give on fresh memory.
"""

from __future__ import annotations

import pytest
import torch

from fused_rnn import native
from fused_rnn.bench.timing import peak_memory_mib

REASON = native.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"native backend unavailable: {REASON}")

MiB = 2**20
ROWS, COLS = 9000, 1025  # a float32 [ROWS, COLS] output: 35.2 MiB


def block_bytes(rows: int) -> int:
    """The pool's block for a float32 [rows, COLS] buffer: whole 2 MiB huge pages."""
    return -(-rows * COLS * 4 // (2 * MiB)) * 2 * MiB


BLOCK = block_bytes(ROWS)  # 36 MiB


@pytest.fixture
def pool():
    """An empty pool with room for 10 blocks, restored afterwards."""
    limit = native.cpu_buffer_pool()["limit_bytes"]
    native.empty_cpu_buffer_pool()
    native.set_cpu_buffer_pool_limit(10 * BLOCK)
    yield
    native.set_cpu_buffer_pool_limit(limit)
    native.empty_cpu_buffer_pool()


def large_output(rows: int = ROWS) -> torch.Tensor:
    """native_linear of a [rows, 2] input: a float32 [rows, COLS] output, checked."""
    x = torch.randn(rows, 2)
    w = torch.randn(COLS, 2)
    y = torch.ops.fused_rnn.native_linear(x, w, None)
    torch.testing.assert_close(y, x @ w.t())
    return y


def test_a_freed_block_serves_the_next_call(pool):
    y = large_output()
    address = y.data_ptr()
    assert native.cpu_buffer_pool() == {"cached_bytes": 0, "in_use_bytes": BLOCK, "limit_bytes": 10 * BLOCK}
    del y
    assert native.cpu_buffer_pool() == {"cached_bytes": BLOCK, "in_use_bytes": 0, "limit_bytes": 10 * BLOCK}
    y = large_output(ROWS - 500)  # a smaller request that the cached block fits
    assert y.data_ptr() == address
    assert native.cpu_buffer_pool() == {"cached_bytes": 0, "in_use_bytes": BLOCK, "limit_bytes": 10 * BLOCK}


def test_a_block_over_twice_the_request_is_left_cached(pool):
    y = large_output(3 * ROWS)
    address = y.data_ptr()
    del y
    y = large_output()
    assert y.data_ptr() != address
    assert native.cpu_buffer_pool() == {
        "cached_bytes": block_bytes(3 * ROWS),
        "in_use_bytes": BLOCK,
        "limit_bytes": 10 * BLOCK,
    }


def test_buffers_up_to_1_mib_are_not_pooled(pool):
    y = large_output(255)  # 0.9971 MiB
    assert native.cpu_buffer_pool()["in_use_bytes"] == 0
    del y
    assert native.cpu_buffer_pool()["cached_bytes"] == 0
    y = large_output(256)  # 1.0010 MiB
    assert native.cpu_buffer_pool()["in_use_bytes"] == 2 * MiB


def test_an_output_up_to_31_mib_with_its_bias_is_pytorchs(pool):
    def output_with_bias(rows: int) -> torch.Tensor:
        x, w, b = torch.randn(rows, 2), torch.randn(COLS, 2), torch.randn(COLS)
        y = torch.ops.fused_rnn.native_linear(x, w, b)
        torch.testing.assert_close(y, torch.addmm(b, x, w.t()))
        return y

    y = output_with_bias(7928)  # 30.9996 MiB: oneDNN adds the bias into an output ATen allocates
    assert native.cpu_buffer_pool()["in_use_bytes"] == 0
    del y
    y = output_with_bias(7929)  # 31.0035 MiB: pooled, the bias in a pass after the GEMM
    assert native.cpu_buffer_pool()["in_use_bytes"] == 32 * MiB


def test_a_large_output_takes_its_bias(pool):
    x, w, b = torch.randn(ROWS, 3), torch.randn(COLS, 3), torch.randn(COLS)
    torch.testing.assert_close(torch.ops.fused_rnn.native_linear(x, w, b), torch.addmm(b, x, w.t()))
    b2 = torch.randn(ROWS, COLS)
    torch.testing.assert_close(torch.ops.fused_rnn.native_linear(x, w, b2), torch.addmm(b2, x, w.t()))


def test_the_limit_unmaps_the_least_recently_freed_blocks(pool):
    native.set_cpu_buffer_pool_limit(BLOCK + BLOCK // 2)
    first, second = large_output(), large_output()
    second_address = second.data_ptr()
    del first
    del second  # the first is unmapped to make room
    assert native.cpu_buffer_pool()["cached_bytes"] == BLOCK
    y = large_output()
    assert y.data_ptr() == second_address
    native.set_cpu_buffer_pool_limit(0)
    del y
    assert native.cpu_buffer_pool() == {"cached_bytes": 0, "in_use_bytes": 0, "limit_bytes": 0}


def test_empty_unmaps_every_cached_block(pool):
    blocks = [large_output() for _ in range(3)]
    kept = blocks.pop()
    del blocks
    assert native.cpu_buffer_pool()["cached_bytes"] == 2 * BLOCK
    native.empty_cpu_buffer_pool()
    assert native.cpu_buffer_pool()["cached_bytes"] == 0
    del kept  # a block in use when the pool was emptied comes back to it
    assert native.cpu_buffer_pool()["cached_bytes"] == BLOCK


@pytest.mark.parametrize("limit", [-1, 1.5, True, "1"])
def test_a_bad_limit_is_refused(limit):
    with pytest.raises(ValueError, match="limit_bytes must be a non-negative int"):
        native.set_cpu_buffer_pool_limit(limit)


def test_the_profiler_sees_pooled_buffers(pool):
    assert peak_memory_mib(lambda: large_output(), torch.device("cpu")) >= ROWS * COLS * 4 / MiB


def lstm_step_through(stale: bool) -> list[torch.Tensor]:
    """LSTM forward and backward with lengths (T = 70, B = 32, H = 1024: the gates and their
    gradient [T, B, 4H] are 35 MiB, pooled), on fresh memory or on cached blocks filled with NaN."""
    generator = torch.Generator().manual_seed(7)
    T, B, H = 70, 32, 1024
    xw = torch.randn(T, B, 4 * H, generator=generator)
    w_hh = torch.randn(4 * H, H, generator=generator) / H**0.5
    h0, c0 = torch.randn(B, H, generator=generator), torch.randn(B, H, generator=generator)
    lengths = torch.randint(1, T + 1, (B,), generator=generator).sort(descending=True).values
    lengths[0] = T  # sorted: the kernels write the pooled buffers the op returns (no row permutation)
    if stale:
        blocks = [torch.ops.fused_rnn.native_linear(torch.ones(T * B, 1), torch.ones(4 * H, 1), None) for _ in range(4)]
        for block in blocks:
            block.fill_(float("nan"))
        del blocks
    else:
        native.set_cpu_buffer_pool_limit(0)
    hs, h_n, c_n, cs, gates = native.lstm_forward(xw, w_hh, None, h0, c0, lengths)
    grad_hs = torch.randn(hs.shape, generator=generator)
    grads = native.lstm_backward(
        grad_hs, torch.randn(h_n.shape, generator=generator), torch.randn(c_n.shape, generator=generator),
        w_hh, None, h0, c0, lengths, hs, cs, gates,
    )
    return [hs, h_n, c_n, cs, gates, *grads[:3]]


def test_kernels_on_reused_blocks_match_fresh_memory_bitwise(pool):
    fresh = lstm_step_through(stale=False)
    native.set_cpu_buffer_pool_limit(10 * BLOCK)
    reused = lstm_step_through(stale=True)
    assert native.cpu_buffer_pool()["in_use_bytes"] >= 2 * BLOCK  # gates and dxw came from the pool
    for name, a, b in zip(["hs", "h_n", "c_n", "cs", "gates", "dxw", "dh0", "dc0"], fresh, reused):
        assert not b.isnan().any(), name
        assert torch.equal(a, b), name


def _allocate_in_child(queue) -> None:
    torch.set_num_threads(1)  # as DataLoader workers do: OpenMP's threads do not survive a fork
    y = large_output()
    queue.put(native.cpu_buffer_pool()["in_use_bytes"])
    del y


def test_a_forked_child_allocates_from_its_copy_of_the_pool(pool):
    kept = large_output()
    del kept  # the child inherits a cached block
    context = torch.multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_allocate_in_child, args=(queue,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert queue.get(timeout=1) == BLOCK
    assert native.cpu_buffer_pool()["cached_bytes"] == BLOCK


def test_attention_outputs_and_scratch_come_from_the_pool(pool):
    """The dot-product attention ops' outputs and their transposed copies of keys and values
    ([B, D, Tk rounded up to 64]) above 1 MiB are pooled blocks: the forward's context stays in
    use and its key copy goes back to the pool; the backward takes that block for d_query and
    returns its own two copies."""
    batch, steps, size = 4, 600, 128  # every buffer 1.17-1.25 MiB: one 2 MiB block each
    query, keys, values = (torch.randn(batch, steps, size) for _ in range(3))
    context, lse, _ = torch.ops.fused_rnn.native_dot_attention_forward(query, keys, values, None, 0.1, False)
    assert native.cpu_buffer_pool() == {"cached_bytes": 2 * MiB, "in_use_bytes": 2 * MiB, "limit_bytes": 10 * BLOCK}
    grads = torch.ops.fused_rnn.native_dot_attention_backward(
        torch.ones_like(context), None, query, keys, values, None, context, lse, None, 0.1)
    assert native.cpu_buffer_pool() == {"cached_bytes": 4 * MiB, "in_use_bytes": 8 * MiB, "limit_bytes": 10 * BLOCK}
    del context, grads
    assert native.cpu_buffer_pool()["in_use_bytes"] == 0
