"""Custom ops defined with torch.library whose eager calls never import torch._dynamo.

`torch.library.custom_op` wraps an op's implementation in `torch._disable_dynamo`, which imports
torch._dynamo (and with it sympy and triton) on the op's first call: 1 to 3 seconds on a 2-core
machine, against a few milliseconds for the call itself. `define_op` registers the same things
custom_op does (the schema inferred from the type annotations, the pt2_compliant tag, the
implementation for every device, and through torch.library.register_fake / register_autograd the
fake function and the autograd formula), but the implementation goes through torch._dynamo.disable
only once torch._dynamo has been imported: before that no frame can be traced, so there is nothing
to disable.

The result is the op's OpOverload (`torch.ops.<namespace>.<name>.default`): call it like the
function, pass it to torch.library.opcheck, trace it with torch.compile.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

import torch

_libraries: dict[str, torch.library.Library] = {}
_implementations: dict[str, Callable] = {}


def _library(namespace: str) -> torch.library.Library:
    if namespace not in _libraries:
        _libraries[namespace] = torch.library.Library(namespace, "FRAGMENT")
    return _libraries[namespace]


def _outside_dynamo(function: Callable) -> Callable:
    """`function`, run through torch._dynamo.disable once torch._dynamo is imported."""
    disabled: list[Callable] = []

    @functools.wraps(function)
    def implementation(*args, **kwargs):
        if "torch._dynamo" not in sys.modules:
            return function(*args, **kwargs)
        if not disabled:
            disabled.append(sys.modules["torch._dynamo"].disable(function, recursive=True))
        return disabled[0](*args, **kwargs)

    return implementation


def define_op(qualname: str) -> Callable[[Callable], torch._ops.OpOverload]:
    """Decorator: define the functional op `namespace::name` (no argument mutated) from a
    type-annotated Python function, its implementation for every device -> the OpOverload."""
    namespace, name = qualname.split("::")

    def define(function: Callable) -> torch._ops.OpOverload:
        library = _library(namespace)
        schema = torch.library.infer_schema(function, mutates_args=())
        library.define(name + schema, tags=(torch.Tag.pt2_compliant_tag,))
        library.impl(name, _outside_dynamo(function), "CompositeExplicitAutograd")
        _implementations[qualname] = function
        return getattr(getattr(torch.ops, namespace), name).default

    return define


def recording() -> bool:
    """Whether something records op calls now: grad mode, compilation, tracing, a dispatch mode, a
    functorch transform or the profiler."""
    return (
        torch.compiler.is_compiling()
        or torch.is_grad_enabled()
        or torch.jit.is_tracing()
        or torch._C._len_torch_dispatch_stack() > 0
        or torch._C._are_functorch_transforms_active()
        or torch.autograd._profiler_enabled()
    )


def call_unrecorded(op: torch._ops.OpOverload, *args):
    """op(*args); while nothing records (grad mode off, as in a backward pass that builds no
    graph or a decoder step under no_grad, and no compilation, tracing, functorch transform or
    profiler) the op's Python implementation called directly, which skips the dispatcher's
    autograd wrapper of a Python op (tens of microseconds a call: most of a small layer's
    backward). Traced and compiled calls keep the op, whose fake function runs on fake tensors;
    profiled ones its range in the profile."""
    if recording():
        return op(*args)
    return _implementations[op._name](*args)
