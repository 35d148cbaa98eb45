"""Pure functions of kd_probe (torchmetrics-style functional interface).

Every function here is pure torch and usable without Lightning.
"""

from kd_probe.core.adapters import build_adapter
from kd_probe.core.batches import unpack_batch
from kd_probe.core.layers import capture_outputs, eval_forward, modules_through, output_shapes, resolve_layer
from kd_probe.core.losses import feature_distillation_loss, logit_distillation_loss

__all__ = [
    "build_adapter",
    "capture_outputs",
    "eval_forward",
    "feature_distillation_loss",
    "logit_distillation_loss",
    "modules_through",
    "output_shapes",
    "resolve_layer",
    "unpack_batch",
]
