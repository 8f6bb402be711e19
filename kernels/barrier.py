"""The grid barrier of the persistent mode: every program of the launch meets here once per step.

A global int32 counter, zeroed before each launch, counts arrivals; it only ever grows, so the n-th
barrier of a launch waits for `n * programs` arrivals and no reset (and no second counter) is
needed. Legal only when every program of the grid is resident at once (see kernels.launch).
"""

import triton
import triton.language as tl


@triton.jit
def grid_barrier(counter_ptr, target):
    """Arrive at the barrier and wait until the counter reaches `target`.

    The arrival is a release (this program's stores of the step are visible before it counts), the
    polling reads are acquires (the other programs' stores are visible after the wait). Scalar
    atomics run once per program; the CTA barriers around them order every warp's memory accesses
    with that one thread's.
    """
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while arrived < target:
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()
