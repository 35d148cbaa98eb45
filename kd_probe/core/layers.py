"""Finding layers by name, capturing their outputs, and their order of execution (pure torch).

Methods §4: unknown layer names raise an error that lists close matches among ``model.named_modules()``;
hooks are registered per call and removed in ``finally``.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from kd_probe.core.precision import computes_in_float32

__all__ = [
    "capture_outputs",
    "eval_forward",
    "forward_until",
    "module_device",
    "modules_through",
    "output_shapes",
    "probing",
    "resolve_layer",
    "run_capturing",
    "uncompiled",
    "unwrap_compiled",
]


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The eager module behind a ``torch.compile`` wrapper (its ``_orig_mod``, repeatedly), else ``model``.

    Probes run through the original module: it shares the parameters and buffers with the compiled one, so
    the values are the same, and no compiled graph is guarded, traced or recompiled by a probe.

    Example::

        >>> net = nn.Linear(2, 2)
        >>> unwrap_compiled(torch.compile(net, backend="eager")) is net
        True
    """
    while isinstance(getattr(model, "_orig_mod", None), nn.Module) and type(model).__name__ == "OptimizedModule":
        model = model._orig_mod  # type: ignore[assignment]
    return model


_UNCOMPILED: set[int] = set()  # the ids of the models inside an `uncompiled` block


@contextmanager
def uncompiled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, ``model`` and every submodule run their eager forward, however they were compiled.

    Yields the eager module (:func:`unwrap_compiled`). For the duration of the block, each module compiled in place
    (``module.compile()``, which keeps the module and stores the compiled call in ``_compiled_call_impl``) calls
    its eager ``_call_impl``, a ``forward`` replaced by ``torch.compile(module.forward)`` is the original one
    again, and a ``torch.compile`` wrapper held as a submodule is replaced by its ``_orig_mod`` in its parent.
    Same parameters and buffers, so the same values; hooks added by a probe run; and the compiled code is neither
    called nor traced, guarded or recompiled. Everything is put back when the block exits, also on error; nested
    blocks are harmless. Training calls outside the block run the compiled code as before.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> net.compile(backend="eager")
        >>> with uncompiled(net) as eager:
        ...     eager._compiled_call_impl is None
        True
        >>> net._compiled_call_impl is not None
        True
    """
    model = unwrap_compiled(model)
    if id(model) in _UNCOMPILED:  # an enclosing block did it (the σ engine's forwards run inside `probing`)
        yield model
        return
    modules = list(model.modules())
    wrappers = [
        (parent, name, child)
        for parent in modules
        for name, child in parent._modules.items()
        if child is not None and unwrap_compiled(child) is not child
    ]
    calls: list[tuple[nn.Module, Any]] = []  # (module, its compiled call) for each module compiled in place
    forwards: list[tuple[nn.Module, Any]] = []  # (module, its compiled forward) for each forward replaced
    for module in modules:
        call, forward = module.__dict__.get("_compiled_call_impl"), module.__dict__.get("forward")
        if call is not None:
            calls.append((module, call))
        if hasattr(forward, "_torchdynamo_orig_callable") and unwrap_compiled(module) is module:
            forwards.append((module, forward))
    try:
        _UNCOMPILED.add(id(model))
        for parent, name, child in wrappers:
            parent._modules[name] = unwrap_compiled(child)
        for module, _ in calls:
            module.__dict__["_compiled_call_impl"] = None
        for module, forward in forwards:
            module.__dict__["forward"] = forward._torchdynamo_orig_callable
        yield model
    finally:
        for module, forward in forwards:
            module.__dict__["forward"] = forward
        for module, call in calls:
            module.__dict__["_compiled_call_impl"] = call
        for parent, name, child in wrappers:
            parent._modules[name] = child
        _UNCOMPILED.discard(id(model))


def resolve_layer(model: nn.Module, name: str, *, argument: str = "layer") -> nn.Module:
    """Return the submodule of ``model`` called ``name`` (a dotted path, as in ``named_modules()``).

    Args:
        model: the network to look in.
        name: dotted module name, e.g. ``"features.conv3"`` or ``"layer2.0.conv1"``.
        argument: the name of the user-facing argument, used in the error message.

    Raises:
        ValueError: when no such module exists; the message lists the closest names.

    Example::

        >>> from kd_probe.models import VGG
        >>> resolve_layer(VGG(num_classes=3), "features.conv2")
        Conv2d(16, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`{argument}` must be a non-empty dotted module name, got {name!r}.")
    model = unwrap_compiled(model)
    for candidate in (name, name.replace("_orig_mod.", "")):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            pass
    # names inside compiled submodules work with or without the wrapper's "_orig_mod." parts
    plain = {n.replace("_orig_mod.", ""): m for n, m in model.named_modules()}
    if name.replace("_orig_mod.", "") in plain:
        return plain[name.replace("_orig_mod.", "")]
    names = [n for n in plain if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if not close:  # fall back to names sharing the last component, then to a few names
        tail = name.rsplit(".", 1)[-1]
        close = [n for n in names if n.rsplit(".", 1)[-1] == tail][:5] or names[:5]
    hint = ", ".join(repr(n) for n in close)
    raise ValueError(f"`{argument}`={name!r} is not a module of {type(model).__name__}; close matches: {hint}.")


@contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str], *, argument: str = "layer") -> Iterator[dict[str, Tensor]]:
    """Record the output of each named module during the forwards run inside the ``with`` block.

    The dictionary yielded is filled as the forward runs (the last call wins when a module runs twice).
    Each value is what the layer returned, at the moment it returned: the rest of the forward goes on with a
    copy, so an in-place operation after the layer (``ReLU(inplace=True)`` after a BatchNorm, ``out +=
    identity``) cannot overwrite it, and a gradient taken with respect to it is the gradient with respect to
    the layer's output. Hooks are removed when the block exits, also on error (methods §4).

    Example::

        >>> from kd_probe.models import VGG
        >>> net = VGG(num_classes=3)
        >>> with capture_outputs(net, ["features.conv1"]) as outputs:
        ...     _ = net(torch.zeros(2, 3, 16, 16))
        >>> tuple(outputs["features.conv1"].shape)
        (2, 16, 16, 16)
    """
    outputs: dict[str, Tensor] = {}
    handles = []
    try:
        for name in names:
            module = resolve_layer(model, name, argument=argument)

            def hook(_module: nn.Module, _inputs: object, output: Tensor, name: str = name) -> Tensor | None:
                outputs[name] = output
                return output.clone() if isinstance(output, Tensor) else None

            handles.append(module.register_forward_hook(hook))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def run_capturing(
    model: nn.Module, names: Sequence[str], inputs: Tensor, *, argument: str = "layer"
) -> tuple[Any, dict[str, Tensor]]:
    """``model(inputs)`` and the outputs of the named modules (see :func:`capture_outputs`).

    A ``torch.compile``d model ignores hooks added after its code was compiled without them; when a named
    output is missing for that reason the forward is run again through the original module (same weights,
    same values) and a warning says so once per model. A layer that does not run is an error.

    Raises:
        ValueError: a named module exists but did not run in the forward.
    """
    with capture_outputs(model, names, argument=argument) as outputs:
        result = model(inputs)
    eager = unwrap_compiled(model)
    if any(name not in outputs for name in names) and eager is not model:
        if not getattr(eager, "_kd_probe_eager_warned", False):
            warnings.warn(
                f"kd_probe: the compiled {type(eager).__name__} was compiled before the feature hooks were added, so "
                "its compiled code ignores them; the forwards that need features run the original module (same "
                "weights and values, eager speed). Compile it after building the DistillationModule to avoid this.",
                stacklevel=2,
            )
            eager._kd_probe_eager_warned = True  # type: ignore[assignment]
        with capture_outputs(eager, names, argument=argument) as outputs:
            result = eager(inputs)
    missing = [name for name in names if name not in outputs]
    if missing:
        raise ValueError(
            f"`{argument}`={missing[0]!r} exists but did not run in the forward of {type(eager).__name__}."
        )
    return result, outputs


class _StopForward(Exception):
    """Raised by the hook of :func:`forward_until` to leave the forward as soon as the layer has run."""

    def __init__(self, output: object) -> None:
        super().__init__()
        self.output = output


@computes_in_float32
def forward_until(model: nn.Module, layer: str | nn.Module, inputs: Tensor, *, argument: str = "layer") -> Tensor:
    """Run ``model(inputs)`` only as far as ``layer`` and return that module's output (early exit).

    A forward hook on the layer raises as soon as it has produced its output, so the modules that would
    run after it cost nothing; the result equals the output captured during a full forward. The hook is
    removed in ``finally`` (methods §4). Works for any ``nn.Module`` whose forward calls the layer (the first
    call wins when the layer runs more than once). The forward is the eager one, however the model was
    compiled (:func:`uncompiled`).
    Computes in float32 with autocast off, whatever the caller's autocast.

    Args:
        model: the network.
        layer: dotted module name (or the module itself).
        inputs: what ``model`` is called with.
        argument: the user-facing argument name used in error messages.

    Raises:
        ValueError: unknown layer (close matches listed), or the layer did not run in the forward.
        TypeError: the layer's output is not a tensor.

    Example::

        >>> from kd_probe.models import VGG
        >>> net = VGG(num_classes=3).eval()
        >>> tuple(forward_until(net, "features.relu1", torch.zeros(2, 3, 16, 16)).shape)
        (2, 16, 16, 16)
    """
    model = unwrap_compiled(model)
    module = resolve_layer(model, layer, argument=argument) if isinstance(layer, str) else layer
    if not isinstance(layer, str):  # name the module in messages, not its repr
        layer = next((n for n, m in model.named_modules() if m is module), type(module).__name__)

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        raise _StopForward(output)

    handle = module.register_forward_hook(hook)
    try:
        with uncompiled(model):
            model(inputs)
    except _StopForward as stop:
        output = stop.output
    else:
        raise ValueError(f"`{argument}`={layer!r} exists but did not run in the forward of {type(model).__name__}.")
    finally:
        handle.remove()
    if not isinstance(output, Tensor):
        raise TypeError(f"`{argument}`={layer!r} returns {type(output).__name__}; a tensor output is needed.")
    return output


def module_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of the model's first parameter (else buffer), else ``default``."""
    tensor: Tensor | None = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device(default)


def modules_through(model: nn.Module, layer: str, example_input: Tensor) -> list[str]:
    """Names of the modules that finish their forward no later than ``layer`` does.

    This is "every module up to and including ``layer``" in execution order: modules run before it,
    the layer itself and its children; never its parents (they finish later) nor modules that run
    after it. Found with one forward of ``example_input`` in eval mode under ``no_grad``; the modes of
    all modules are restored afterwards.

    Example::

        >>> from kd_probe.models import VGG
        >>> net = VGG(num_classes=3, widths=(8,), convs_per_stage=1)
        >>> modules_through(net, "features.bn1", torch.zeros(1, 3, 8, 8))
        ['features.conv1', 'features.bn1']
    """
    model = unwrap_compiled(model)
    target = resolve_layer(model, layer, argument="layer")
    finished: list[str] = []
    state = {"done": False}
    handles = []

    def make_hook(name: str, module: nn.Module):
        def hook(_module: nn.Module, _inputs: object, _output: object) -> None:
            if state["done"] or name in finished:
                return
            finished.append(name)
            if module is target:
                state["done"] = True

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name, module)))
        eval_forward(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    if not state["done"]:
        raise ValueError(f"`layer`={layer!r} exists but did not run in the forward of the example input.")
    return finished


@computes_in_float32
def eval_forward(model: nn.Module, inputs: Tensor) -> object:
    """One forward in eval mode under ``no_grad``; every module's train/eval mode is restored afterwards
    (so BatchNorm statistics are untouched and training is not disturbed, methods §4). The forward is the eager
    one, however the model was compiled (:func:`uncompiled`).
    Computes in float32 with autocast off, whatever the caller's autocast."""
    model = unwrap_compiled(model)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), uncompiled(model):
            return model(inputs)
    finally:
        for module, mode in modes.items():
            module.training = mode


def output_shapes(model: nn.Module, names: Sequence[str], example_input: Tensor) -> dict[str, tuple[int, ...]]:
    """Output shapes of the named modules for one eval-mode forward of ``example_input`` (modes restored)."""
    model = unwrap_compiled(model)
    with capture_outputs(model, names) as outputs:
        eval_forward(model, example_input)
    for name in names:
        if name not in outputs:
            raise ValueError(f"`layer`={name!r} exists but did not run in the forward of {type(model).__name__}.")
        if not isinstance(outputs[name], Tensor):
            raise TypeError(f"`layer`={name!r} returns {type(outputs[name]).__name__}; a tensor output is needed.")
    return {name: tuple(outputs[name].shape) for name in names}


@contextmanager
def probing(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm statistics frozen, no dropout) with grad enabled, even inside ``no_grad`` or
    ``inference_mode`` callers; every module's mode is restored afterwards, also on error (methods §4). Calls of
    the model (of its eager module, :func:`unwrap_compiled`) in the block run the eager forward, however it was
    compiled (:func:`uncompiled`): a probe never runs, traces or recompiles the training's compiled code."""
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad(), uncompiled(model):
            yield
    finally:
        for module, mode in modes.items():
            module.training = mode
