"""``kd-probe demo --kd-method NAME``: the distilled student's KD method, one of :mod:`kd_probe.losses`."""

from __future__ import annotations

import argparse
from typing import Any

from kd_probe.apps.demo.modalities import Modality
from kd_probe.apps.options import FEATURE_METHODS
from kd_probe.losses import METHODS

__all__ = ["kd_method"]


def kd_method(args: argparse.Namespace, kit: Modality) -> dict[str, Any]:
    """The ``DistillationModule`` options of ``--kd-method``: none for ``kd`` (the module's own Hinton KD, so
    the default demo is unchanged); otherwise the method with its authors' defaults, next to the cross-entropy
    at weight 1 as in their setups. Feature methods match the teacher's and the student's maps at the probed
    layer (``kit.layer``, the same name in both); relation and contrastive methods take the embeddings. CRD's
    batches carry their samples' indices (the data module's ``with_index``)."""
    name = getattr(args, "kd_method", "kd") or "kd"
    if name == "kd":
        return {}
    layers = {"student_layers": kit.layer, "teacher_layers": kit.layer} if name in FEATURE_METHODS else {}
    if name == "crd":
        kit.data.with_index = True
    return {"losses": [METHODS[name](**layers)], "ce_weight": 1.0}
