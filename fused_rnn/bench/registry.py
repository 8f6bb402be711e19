"""Every provider by name, which ones the quick sweeps run, and the baselines."""

from __future__ import annotations

from .attention import NaiveProvider, SdpaProvider
from .base import Provider
from .providers import CellLoopProvider, FlashRnnProvider, FusedProvider, TorchModuleProvider
from .shapes import RECURRENT_OPS

PROVIDERS: dict[str, Provider] = {
    provider.name: provider
    for provider in (
        TorchModuleProvider("cudnn", "cuda"),
        TorchModuleProvider("torch-cpu", "cpu"),
        FusedProvider("native"),
        FusedProvider("triton"),
        FusedProvider("reference"),
        CellLoopProvider("eager-loop", compiled=False),
        CellLoopProvider("compile-loop", compiled=True),
        FlashRnnProvider(),
        NaiveProvider(),
        SdpaProvider(),
    )
}

# The quick sweeps leave out compile-loop: compiling a cell forward and backward takes tens of
# seconds per shape, more than the rest of a quick sweep. On the CPU they also leave out the
# Python loops (reference, eager-loop): seconds per call at the judged points, most of the run.
QUICK_PROVIDERS = {
    "cpu": ("torch-cpu", "native", "naive", "sdpa"),
    "cuda": ("cudnn", "native", "triton", "reference", "eager-loop", "flashrnn", "naive", "sdpa"),
}


def check_providers(names: list[str]) -> list[str]:
    """Return `names` if each names a provider, else raise ValueError listing the choices."""
    unknown = [name for name in names if name not in PROVIDERS]
    if unknown:
        raise ValueError(f"provider must be one of {list(PROVIDERS)}, got {unknown}")
    return names


def baseline(op: str, device_type: str) -> str:
    """The provider others are compared with: torch.nn on the device for the recurrences (cuDNN on
    CUDA), SDPA for the dot-product scores, the naive formula for the additive score."""
    if op in RECURRENT_OPS:
        return "cudnn" if device_type == "cuda" else "torch-cpu"
    return "naive" if op == "additive_attention" else "sdpa"


def ground_truth(op: str) -> str:
    """The provider whose float64 CPU run is the ground truth: torch.nn for the recurrences, the
    naive formula for attention."""
    return "torch-cpu" if op in RECURRENT_OPS else "naive"


def low_precision_reference(op: str, device_type: str) -> str:
    """The provider whose own error in float16/bfloat16 sets the tolerance there (twice it): torch.nn
    on the device for the recurrences, the naive formula for attention."""
    if op in RECURRENT_OPS:
        return "cudnn" if device_type == "cuda" else "torch-cpu"
    return "naive"
