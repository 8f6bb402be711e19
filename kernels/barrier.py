"""The grid barrier between the phases of a persistent float64 launch, split into its two halves
(the other dtypes exchange tagged words instead: kernels.exchange).

Programs that share a batch block (grid column) exchange state; different batch blocks never do, so
each batch block has its own int32 arrival counter (`barrier [batch blocks]`, zeroed before each
launch). A counter only grows, so before the n-th phase after the first a program waits for
n * (programs of the column) arrivals, and no reset is needed. A column of one program needs only
the CTA barrier.

A phase ends with `arrive` as soon as its exchanged state is stored (its other outputs are stored
after the arrival, while the slowest program catches up) and the next phase begins with `wait`.

Legal only when every program of the grid is resident at once: kernels.launch launches persistent
grids cooperatively (`launch_cooperative_grid=True`), so a grid that cannot be resident fails to
launch instead of spinning forever.
"""

import triton
import triton.language as tl


@triton.jit
def arrive(barrier, TAGGED: tl.constexpr):
    """Count this program's arrival: a release, after a CTA barrier that orders every warp's
    exchange stores of the phase before it. Nothing for TAGGED exchanges (kernels.exchange)."""
    if (not TAGGED) and tl.num_programs(0) > 1:
        tl.debug_barrier()
        tl.atomic_add(barrier + tl.program_id(1), 1, sem="release", scope="gpu")


@triton.jit
def wait(barrier, completed, TAGGED: tl.constexpr):
    """Wait until every program of this column has arrived `completed` times in this launch
    (nothing for TAGGED exchanges: their readers wait for the tags).

    The polling is plain volatile loads (no read-modify-write traffic on the counter while others
    arrive), ended by one acquire; the CTA barrier then lets the other warps read what the other
    programs (or, in a one-program column, the other warps) wrote.
    """
    if not TAGGED:
        if tl.num_programs(0) > 1:
            counter = barrier + tl.program_id(1)
            target = completed * tl.num_programs(0)
            arrived = tl.load(counter, volatile=True)
            while arrived < target:
                arrived = tl.load(counter, volatile=True)
            tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()
