"""Pure functions of kd_probe (torchmetrics-style functional interface).

Every function here is pure torch and usable without Lightning.
"""

from kd_probe.core.adapters import build_adapter
from kd_probe.core.agreement import (
    adversarial_transfer,
    cam_cosine,
    cam_energy_in_mask,
    cam_win_rate,
    cam_wins,
    fooled,
    grad_cam,
    ifgsm,
    prediction_agreement,
    prediction_unchanged,
    predictions,
    weighted_activations,
)
from kd_probe.core.batches import unpack_batch
from kd_probe.core.distance_correlation import (
    distance_correlation,
    label_embedding,
    relevance_given,
    residual,
    residual_matrix,
)
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
    unwrap_compiled,
)
from kd_probe.core.losses import feature_distillation_loss, logit_distillation_loss
from kd_probe.core.sigma import SigmaMaps, estimate_sigma_maps, gaussian_entropy, image_generator, upsample_units
from kd_probe.core.similarity import (
    MinibatchCKA,
    class_correlation,
    class_correlation_gap,
    linear_cka,
    procrustes_distance,
    rbf_cka,
    unbiased_hsic,
)
from kd_probe.core.tokens import token_grid
from kd_probe.core.transforms import color_jitter, random_resized_crop, shift
from kd_probe.core.unicam import UniCAMResult, layer_features, max_row_score, pooled_features

__all__ = [
    "KnowledgePoints",
    "MinibatchCKA",
    "SigmaMaps",
    "UniCAMResult",
    "adversarial_transfer",
    "background_baseline",
    "build_adapter",
    "cam_cosine",
    "cam_energy_in_mask",
    "cam_win_rate",
    "cam_wins",
    "capture_outputs",
    "class_correlation",
    "class_correlation_gap",
    "color_jitter",
    "cosine",
    "count_knowledge_points",
    "distance_correlation",
    "downsample_mask",
    "effective_images",
    "estimate_sigma_maps",
    "eval_forward",
    "feature_distillation_loss",
    "fooled",
    "foreground_ratio",
    "forward_until",
    "gaussian_entropy",
    "grad_cam",
    "ifgsm",
    "image_generator",
    "label_embedding",
    "layer_features",
    "learning_speed",
    "linear_cka",
    "logit_distillation_loss",
    "max_row_score",
    "modules_through",
    "normalised_step",
    "output_shapes",
    "path_efficiency",
    "pooled_features",
    "prediction_agreement",
    "prediction_unchanged",
    "predictions",
    "procrustes_distance",
    "random_resized_crop",
    "rbf_cka",
    "relevance_given",
    "residual",
    "residual_matrix",
    "resolve_layer",
    "shift",
    "stability",
    "token_grid",
    "unbiased_hsic",
    "unpack_batch",
    "unwrap_compiled",
    "upsample_units",
    "weighted_activations",
]
