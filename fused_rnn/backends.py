"""The backend registry: which implementation of the ops runs, and why a backend cannot.

A backend is a module that implements the functions of `fused_rnn.reference` with the same
signatures (rnn/lstm/gru forward and backward) plus `unavailable_reason(device) -> str | None`.
Backends are imported lazily, on first use, so that a missing Triton or an unbuilt extension never
breaks `import fused_rnn`, and so that `TRITON_INTERPRET` is read when kernels are first defined.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Optional, Union

import torch

BACKEND_MODULES = {
    "reference": "fused_rnn.reference",
    "triton": "fused_rnn.kernels",
    "native": "fused_rnn.native",
}
BACKEND_NAMES = tuple(BACKEND_MODULES)
AUTO_ORDER = {"cuda": ("native", "triton", "reference"), "cpu": ("native", "reference")}

# How to get a backend whose module could not be imported at all; a backend module's own reasons
# (unavailable_reason) say what is missing and how to get it themselves.
_HOW_TO_GET = {
    "triton": "install Triton (`pip install triton`)",
    "native": "build the extension (`pip install --no-build-isolation -e .` with a C++ compiler, "
    "and nvcc for CUDA)",
}

_modules: dict[str, ModuleType] = {}
_import_errors: dict[str, str] = {}


def check_backend_name(name: str) -> str:
    """Return `name` if it names a backend or "auto", else raise ValueError listing the choices."""
    if name != "auto" and name not in BACKEND_MODULES:
        raise ValueError(
            f"backend must be one of {['auto', *BACKEND_NAMES]}, got {name!r}"
        )
    return name


def _load(name: str) -> Optional[ModuleType]:
    if name not in _modules and name not in _import_errors:
        try:
            _modules[name] = importlib.import_module(BACKEND_MODULES[name])
        except ImportError as error:
            _import_errors[name] = f"it could not be imported ({error})"
    return _modules.get(name)


def device_unavailable_reason(device: Union[torch.device, str]) -> Optional[str]:
    """None when torch can run on `device` at all, else a sentence saying why not (no backend can
    run on a device that does not exist)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        if torch.version.cuda is None:
            return f"this torch ({torch.__version__}) is built without CUDA, so it has no CUDA device"
        return "torch sees no CUDA device (torch.cuda.is_available() is False)"
    return None


def unavailable_reason(name: str, device: Union[torch.device, str]) -> Optional[str]:
    """None when backend `name` can run on `device` now, else a sentence saying why not."""
    check_backend_name(name)
    device = torch.device(device)
    no_device = device_unavailable_reason(device)
    if no_device is not None:
        return no_device
    module = _load(name)
    if module is None:
        return _import_errors[name]
    return module.unavailable_reason(device)


def _auto_order(device: torch.device) -> tuple[str, ...]:
    return AUTO_ORDER.get(device.type, ("reference",))


def available_backends(device: Union[torch.device, str] = "cpu") -> list[str]:
    """The backends that can run on `device` now: those "auto" may pick, in its order of preference,
    then the others (on a CPU, "triton" when TRITON_INTERPRET=1 lets its kernels run)."""
    device = torch.device(device)
    preferred = _auto_order(device)
    order = [*preferred, *(name for name in BACKEND_NAMES if name not in preferred)]
    return [name for name in order if unavailable_reason(name, device) is None]


def constant_when_traced(function):
    """torch.compiler.assume_constant_result(function), without importing torch._dynamo (seconds)
    when fused_rnn is imported: that decorator only sets this attribute, which Dynamo reads."""
    function._dynamo_marked_constant = True
    return function


# Traced code (torch.compile) takes the resolved name as a constant: resolution imports modules and
# asks them about the device, which must not become part of a graph.
@constant_when_traced
def resolve_backend(name: str, device: Union[torch.device, str]) -> str:
    """The concrete backend that runs for `name` on `device`; raises RuntimeError saying why a
    requested backend cannot run and how to get it."""
    check_backend_name(name)
    device = torch.device(device)
    if name == "auto":
        for choice in _auto_order(device):
            if unavailable_reason(choice, device) is None:
                return choice
        reason = device_unavailable_reason(device) or unavailable_reason("reference", device)
        raise RuntimeError(f"no fused_rnn backend can run on {device.type}: {reason}")
    reason = unavailable_reason(name, device)
    if reason is not None:
        how = f"; to get it, {_HOW_TO_GET[name]}" if name in _import_errors or _missing_package(name) else ""
        raise RuntimeError(f"fused_rnn backend {name!r} cannot run on {device.type}: {reason}{how}")
    return name


def _missing_package(name: str) -> bool:
    """Whether the third-party package a backend needs is not installed (Triton for "triton")."""
    return name == "triton" and importlib.util.find_spec("triton") is None


def get_backend(name: str, device: Optional[Union[torch.device, str]] = None) -> ModuleType:
    """The module implementing backend `name`. With a device, `name` may be "auto", and a backend
    that cannot run there raises resolve_backend's error; without, `name` must be resolved
    already."""
    if device is not None:
        name = resolve_backend(name, device)
    module = _load(check_backend_name(name))
    if module is None:
        raise RuntimeError(f"fused_rnn backend {name!r}: {_import_errors[name]}")
    return module
