"""Additive attention on the CPU never materialises [B, Tq, Tk, A]: at B=8, Tq=Tk=512, A=256 the
naive tensor is 2 GiB of float32; forward and backward must peak at under a tenth of that.

The peak is the growth of the process's maximum resident set while the op runs, measured in a fresh
interpreter so that nothing else in the test session moves it.
"""

import subprocess
import sys
import textwrap

NAIVE_BYTES = 8 * 512 * 512 * 256 * 4

_MEASURE = textwrap.dedent(
    """
    import resource, torch
    from fused_rnn.attention import AdditiveAttention

    def peak_bytes():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    torch.manual_seed(0)
    module = AdditiveAttention(256, 256, 256, backend="native")
    query = torch.randn(8, 512, 256, requires_grad=True)
    keys = torch.randn(8, 512, 256, requires_grad=True)
    lengths = torch.randint(1, 513, (8,))
    small, _ = module(query[:, :2], keys[:, :3], key_lengths=lengths.clamp(max=3))  # load everything
    small.sum().backward()
    before = peak_bytes()
    context, _ = module(query, keys, key_lengths=lengths)
    context.sum().backward()
    print(peak_bytes() - before)
    """
)


def test_additive_attention_cpu_peak_memory_is_under_a_tenth_of_naive():
    result = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True, check=True)
    growth = int(result.stdout.split()[-1])
    assert growth < NAIVE_BYTES / 10, f"peak grew by {growth / 2**20:.0f} MiB (naive: {NAIVE_BYTES / 2**20:.0f} MiB)"
