"""``kd-probe demo --kd-method NAME``: the distilled student's KD method, one of :mod:`kd_probe.losses`."""

from __future__ import annotations

import argparse
from typing import Any

from kd_probe.apps.demo.modalities import Modality
from kd_probe.apps.options import FEATURE_METHODS
from kd_probe.losses import METHODS

__all__ = ["kd_method"]


def kd_method(args: argparse.Namespace, kit: Modality, name: str | None = None) -> dict[str, Any]:
    """The ``DistillationModule`` options of ``--kd-method`` (or of the method ``name`` of ``--methods``): none
    for ``kd`` (the module's own Hinton KD, so
    the default demo is unchanged); otherwise the method with its authors' defaults, next to the cross-entropy
    at weight 1 as in their setups. Feature methods match the teacher's and the student's maps at the probed
    layer (``kit.layer``, the same name in both); relation and contrastive methods take the embeddings. DKD keeps
    its authors' 20-epoch warm-up (a 10-epoch demo reaches half its weight: at full weight from the start, β = 8
    cost 7 points of accuracy in 5 epochs in ``benchmarks/bench_kd_methods.py``). CRD's batches carry their
    samples' indices (the data module's ``with_index``, set for CRD's run only)."""
    name = name or getattr(args, "kd_method", "kd") or "kd"
    setattr(kit.data, "with_index", name == "crd")  # noqa: B010 (every built-in data module has it)
    if name == "kd":
        return {}
    options: dict[str, Any] = {}
    if name in FEATURE_METHODS:
        options = {"student_layers": kit.layer, "teacher_layers": kit.layer}
    return {"losses": [METHODS[name](**options)], "ce_weight": 1.0}
