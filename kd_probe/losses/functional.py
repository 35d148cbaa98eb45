"""The knowledge-distillation methods of :mod:`kd_probe.losses` as pure functions (methods §6), the math of
:mod:`kd_probe.core.kd` under its public names: logit ``kd``, ``dkd``, ``dist``, ``logit_standard_kd``;
feature ``fitnets``, ``at``, ``nst``, ``vid``; relation ``sp``, ``pkt``, ``rkd``, ``cc``; contrastive ``crd``
(with ``crd_normalization``, its constant ``Z``).

Example::

    >>> import torch
    >>> s, t = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[2.0, 1.0, 0.0]])
    >>> round(float(kd(s, t, temperature=2.0)), 4)
    0.4185
"""

from kd_probe.core.kd.contrastive import crd, crd_normalization
from kd_probe.core.kd.feature import at, fitnets, nst, vid
from kd_probe.core.kd.logit import dist, dkd, kd, logit_standard_kd
from kd_probe.core.kd.relation import cc, pkt, rkd, sp

__all__ = [
    "at",
    "cc",
    "crd",
    "crd_normalization",
    "dist",
    "dkd",
    "fitnets",
    "kd",
    "logit_standard_kd",
    "nst",
    "pkt",
    "rkd",
    "sp",
    "vid",
]
