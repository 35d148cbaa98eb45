"""The σ engine's feature function: the forward up to one layer, traced with BatchNorm folded when possible.

Used by the σ engine (methods §1.2) to run thousands of perturbed forwards cheaply. The graph shares the
model's modules (no weight copies, except the folded convolutions), stops at the probed layer, and is
rebuilt for every call, so it always reflects the current weights. When the model cannot be traced with
``torch.fx`` the caller falls back to the plain forward with an early-exit hook.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.fusion import fuse_conv_bn_eval

from kd_probe.core.layers import forward_until, probing

__all__ = ["FeatureFunction", "residual_additions", "truncated_graph"]

_ADDS = (operator.add, operator.iadd, torch.add)


class _KeepLayerTracer(fx.Tracer):
    """Traces into containers as usual but keeps the probed layer as one call, whatever its type."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.layer or super().is_leaf_module(m, module_qualified_name)


def truncated_graph(model: nn.Module, layer: str, *, fold_batchnorm: bool = True) -> fx.GraphModule | None:
    """``x ↦ output of layer`` as an ``fx.GraphModule`` (eval mode expected), or ``None`` when the model
    cannot be traced or the layer is not called exactly once in its forward."""
    try:
        tracer = _KeepLayerTracer(layer)
        graph = tracer.trace(model)
    except Exception:  # any untraceable forward (data-dependent control flow, unsupported ops, ...)
        return None
    calls = [node for node in graph.nodes if node.op == "call_module" and node.target == layer]
    if len(calls) != 1:
        return None
    for node in list(graph.nodes):
        if node.op == "output":
            graph.erase_node(node)
    graph.output(calls[0])
    module = fx.GraphModule(tracer.root, graph)
    module.graph.eliminate_dead_code()
    if fold_batchnorm:
        _fold_batchnorm(module)
    module.recompile()
    return module


def residual_additions(model: nn.Module, layer: str, example: Tensor) -> int | None:
    """How many additions of two tensors of the same shape (skip connections: ``out += identity``, ``x + f(x)``)
    the forward computes before ``layer``'s output, found by tracing it with ``torch.fx`` and running the trace on
    ``example`` (eval mode, no gradient; modes are restored); ``None`` when the forward cannot be traced."""
    with probing(model):
        graph = truncated_graph(model, layer, fold_batchnorm=False)
        if graph is None:
            return None
        try:
            with torch.no_grad():
                ShapeProp(graph).propagate(example)
        except Exception:  # a forward that runs eagerly but not as traced
            return None
    count = 0
    for node in graph.graph.nodes:
        is_add = (node.op == "call_function" and node.target in _ADDS) or (
            node.op == "call_method" and node.target in ("add", "add_")
        )
        shapes = [arg.meta.get("tensor_meta") for arg in node.args[:2] if isinstance(arg, fx.Node)]
        if is_add and len(shapes) == 2 and all(meta is not None for meta in shapes):
            first, second = (getattr(meta, "shape", None) for meta in shapes)
            count += int(first is not None and first == second and len(first) >= 2)
    return count


def _fold_batchnorm(module: fx.GraphModule) -> None:
    """Replace every ``Conv2d → BatchNorm2d`` pair (conv output used only by the BN, both in eval mode) by
    one convolution with folded weights; the original modules are not touched."""
    modules = dict(module.named_modules())
    folded = 0
    for node in list(module.graph.nodes):
        norm = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(norm, nn.BatchNorm2d) or norm.training or norm.running_mean is None:
            continue
        source = node.args[0] if len(node.args) == 1 else None
        if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        conv = modules.get(str(source.target))
        if not isinstance(conv, nn.Conv2d) or conv.training:
            continue
        with torch.no_grad():
            fused = fuse_conv_bn_eval(conv, norm).requires_grad_(False)
        name = f"_kd_probe_folded_{folded}"
        folded += 1
        module.add_submodule(name, fused)
        source.target = name
        node.replace_all_uses_with(source)
        module.graph.erase_node(node)
    module.graph.lint()


class FeatureFunction:
    """``x ↦ g(x)``: the forward stopped at the layer, optional ReLU, optional channels-last inputs.

    The fast path is a traced copy of the forward up to the layer with eval-mode BatchNorm folded into the
    preceding convolutions (:func:`truncated_graph`); it is used only when it reproduces the plain forward's
    feature on the first image, otherwise the plain forward with an early-exit hook is used.
    """

    def __init__(
        self,
        model: nn.Module,
        module: nn.Module,
        layer: str,
        relu: bool,
        channels_last: bool | None,
        fold_batchnorm: bool,
        probe: Tensor,
    ) -> None:
        self.model, self.module, self.layer, self.relu = model, module, layer, relu
        self.graph: nn.Module | None = None
        self.channels_last = False
        with torch.no_grad():
            reference = self(probe[:1])
            if fold_batchnorm:
                self.graph = truncated_graph(model, layer)
                if self.graph is not None and not _close(self(probe[:1]), reference):
                    self.graph = None
            if channels_last is None:  # use it when the model has convolutions and accepts such inputs
                channels_last = any(isinstance(m, nn.Conv2d) for m in model.modules())
                if channels_last:
                    self.channels_last = True
                    try:
                        channels_last = _close(self(probe[:1]), reference)
                    except RuntimeError:
                        channels_last = False
        self.channels_last = channels_last

    def __call__(self, inputs: Tensor) -> Tensor:
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        try:
            feature = self.graph(inputs) if self.graph is not None else forward_until(self.model, self.module, inputs)
        except RuntimeError as error:
            if "Inference tensors cannot be saved for backward" in str(error):
                raise RuntimeError(
                    "estimate_sigma_maps needs autograd through the model, but its parameters are inference "
                    "tensors (the model was created or loaded under torch.inference_mode()); re-create it outside "
                    "inference mode or clone its parameters."
                ) from error
            raise
        return F.relu(feature) if self.relu else feature


def _close(fast: Tensor, reference: Tensor) -> bool:
    """Whether a rewritten forward reproduces the plain one (up to float rounding of folded weights)."""
    if fast.shape != reference.shape or not torch.isfinite(reference).all():
        return False
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return bool(torch.allclose(fast, reference, rtol=1e-3, atol=1e-4 * max(scale, 1e-12)))
