"""The CUDA attention kernels' own source, run on the host: csrc/cuda/attention_forward.cu and
attention_backward.cu compiled as host C++ with tests/cuda_emulation.h (a host thread per CUDA
thread, barriers for __syncthreads and __syncwarp, shuffles, ldmatrix and mma.sync computed as the
PTX ISA defines them, cp.async copied at once, shared memory and outputs NaN-filled first, every
buffer under AddressSanitizer), driven through their launch functions by
tests/cuda_attention_emulation.cpp as the API layer drives them.

Forward and backward of both scores in every dtype against fused_rnn/reference.py (float64 within
1e-12, float32 within 1e-5, half types within twice the reference's own error), on shapes that
take every path of the kernels: several query row blocks and key tiles, key lengths (a row with a
single key, splits past it), split-K with its combine, features and values in several chunks of
uneven widths, rows not 16-byte aligned (element-wise staging) and aligned (cp.async), the
decoder step. What the emulation cannot show (timing, the hardware's tanh.approx / exp2 / mma
rounding, races between real warps) is left to the GPU tests. Skipped without nvcc (which drives
the host compiler with the CUDA headers here)."""

from __future__ import annotations

import pytest
import torch

from cuda_attention_programs import ADDITIVE, DOT, DTYPE_CODES, check_against_reference, emulation_program
from cuda_toolchain import NVCC

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")

# (B, Tq, Tk, F, Dv, lengths, processors). float64's chunks are 32 wide (attention_output_width),
# so its features are chunked already in the decoder step; the wide shape is for the other dtypes.
SHAPES = {
    "row-blocks-tiles-splits": (2, 37, 300, 24, 16, True, 3),
    "decoder-step": (16, 1, 130, 33, 7, False, 132),
    "chunked-features-and-values": (2, 20, 70, 300, 270, True, 4),
}
CASES = [(name, dtype) for name in SHAPES for dtype in DTYPE_CODES
         if not (name == "chunked-features-and-values" and dtype == torch.float64)]


@pytest.mark.parametrize("score", [ADDITIVE, DOT], ids=["additive", "dot"])
@pytest.mark.parametrize("name,dtype", CASES, ids=[f"{n}-{str(d).removeprefix('torch.')}" for n, d in CASES])
def test_kernels_match_reference(tmp_path, name, dtype, score):
    check_against_reference(emulation_program(), tmp_path, score, SHAPES[name], dtype)
