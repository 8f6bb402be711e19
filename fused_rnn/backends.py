"""The backend registry: which implementation of the ops runs, and why a backend cannot.

A backend is a module that implements the functions of `fused_rnn.reference` with the same
signatures (rnn/lstm/gru forward and backward) plus `unavailable_reason(device) -> str | None`.
Backends are imported lazily, on first use, so that a missing Triton or an unbuilt extension never
breaks `import fused_rnn`, and so that `TRITON_INTERPRET` is read when kernels are first defined.
"""

from __future__ import annotations

import importlib
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

_HOW_TO_GET = {
    "triton": "install Triton (`pip install triton`); on a CPU set TRITON_INTERPRET=1 before "
    "importing fused_rnn to run its kernels in the interpreter",
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


def unavailable_reason(name: str, device: Union[torch.device, str]) -> Optional[str]:
    """None when backend `name` can run on `device` now, else a sentence saying why not."""
    check_backend_name(name)
    device = torch.device(device)
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
        return next(choice for choice in _auto_order(device) if unavailable_reason(choice, device) is None)
    reason = unavailable_reason(name, device)
    if reason is not None:
        how = _HOW_TO_GET.get(name, "")
        raise RuntimeError(
            f"fused_rnn backend {name!r} cannot run on {device.type}: {reason}"
            + (f"; to get it, {how}" if how else "")
        )
    return name


def get_backend(name: str) -> ModuleType:
    """The module implementing backend `name` (already resolved, so it imports)."""
    module = _load(check_backend_name(name))
    if module is None:
        raise RuntimeError(f"fused_rnn backend {name!r}: {_import_errors[name]}")
    return module
