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
function, pass it to torch.library.opcheck, trace it with torch.compile. `register_autograd` registers
the op's autograd formula with torch.library and keeps it as an autograd.Function too, which
`call_eagerly` applies in eager mode instead of the dispatcher's Python autograd wrapper.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

import torch

_libraries: dict[str, torch.library.Library] = {}
_implementations: dict[str, Callable] = {}
# The autograd formula of each op as an autograd.Function (register_autograd), which call_eagerly applies.
_eager_functions: dict[str, type[torch.autograd.Function]] = {}


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


def register_autograd(op: torch._ops.OpOverload, backward: Callable, *, setup_context: Callable) -> None:
    """torch.library.register_autograd(op, backward, setup_context=setup_context), and the same
    formula as an autograd.Function over the op's implementation, which call_eagerly applies."""
    torch.library.register_autograd(op, backward, setup_context=setup_context)
    implementation = _implementations[op._name]

    # forward takes ctx (no separate setup_context): Function.apply then binds no default
    # arguments through inspect.signature, which costs more than a small op.
    def forward(ctx, *args):
        output = implementation(*args)
        setup_context(ctx, args, output)
        return output

    _eager_functions[op._name] = type(
        f"EagerBackwardFor_{op._name.replace('::', '_')}",
        (torch.autograd.Function,),
        {"forward": staticmethod(forward), "backward": staticmethod(backward)},
    )


def needs_dispatcher() -> bool:
    """Whether op calls must go through the dispatcher now: under compilation, tracing, a dispatch
    mode, a functorch transform or the profiler."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._len_torch_dispatch_stack() > 0
        or torch._C._are_functorch_transforms_active()
        or torch.autograd._profiler_enabled()
    )


def recording() -> bool:
    """Whether something records op calls now: grad mode or what needs_dispatcher names."""
    return torch.is_grad_enabled() or needs_dispatcher()


def call_eagerly(op: torch._ops.OpOverload, *args):
    """op(*args) without the dispatcher's wrapper of a Python op (tens of microseconds a call,
    forward and backward: most of a small step's cost), where needs_dispatcher allows: the op's
    Python implementation called directly, or, where autograd records the call (grad mode and an
    argument that requires grad), applied through its formula's autograd.Function
    (register_autograd), the same formula the op runs. All of op's arguments are passed. Traced and
    compiled calls keep the op, whose fake function runs on fake tensors; profiled ones its range
    in the profile."""
    if needs_dispatcher():
        return op(*args)
    if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
        function = _eager_functions.get(op._name)
        return op(*args) if function is None else function.apply(*args)
    return _implementations[op._name](*args)
