"""Pure functions of kd_probe (torchmetrics-style functional interface).

Every function here is pure torch and usable without Lightning.
"""

from kd_probe.core.adapters import build_adapter
from kd_probe.core.agreement import (
    adversarial_transfer,
    cam_cosine,
    cam_energy_in_mask,
    cam_win_rate,
    grad_cam,
    ifgsm,
    prediction_agreement,
    predictions,
)
from kd_probe.core.batches import unpack_batch
from kd_probe.core.dynamics import cosine, learning_speed, normalised_step, path_efficiency, stability
from kd_probe.core.knowledge_points import (
    KnowledgePoints,
    background_baseline,
    count_knowledge_points,
    downsample_mask,
    effective_images,
    foreground_ratio,
)
from kd_probe.core.layers import (
    capture_outputs,
    eval_forward,
    forward_until,
    modules_through,
    output_shapes,
    resolve_layer,
)
from kd_probe.core.losses import feature_distillation_loss, logit_distillation_loss
from kd_probe.core.sigma import SigmaMaps, estimate_sigma_maps, gaussian_entropy, image_generator, upsample_units
from kd_probe.core.transforms import color_jitter, random_resized_crop, shift

__all__ = [
    "KnowledgePoints",
    "SigmaMaps",
    "adversarial_transfer",
    "background_baseline",
    "build_adapter",
    "cam_cosine",
    "cam_energy_in_mask",
    "cam_win_rate",
    "capture_outputs",
    "color_jitter",
    "cosine",
    "count_knowledge_points",
    "downsample_mask",
    "effective_images",
    "estimate_sigma_maps",
    "eval_forward",
    "feature_distillation_loss",
    "foreground_ratio",
    "forward_until",
    "gaussian_entropy",
    "grad_cam",
    "ifgsm",
    "image_generator",
    "learning_speed",
    "logit_distillation_loss",
    "modules_through",
    "normalised_step",
    "output_shapes",
    "path_efficiency",
    "prediction_agreement",
    "predictions",
    "random_resized_crop",
    "resolve_layer",
    "shift",
    "stability",
    "unpack_batch",
    "upsample_units",
]
