"""Knowledge-distillation methods as ``nn.Module`` s (methods §6), each with a pure-function counterpart in
:mod:`kd_probe.losses.functional`; use them in :class:`~kd_probe.DistillationModule` (``losses=[...]``) or on
their own.

- logit: :class:`KD`, :class:`DKD`, :class:`DIST`, :class:`LogitStandardKD`;
- feature: :class:`FitNets`, :class:`AT`, :class:`NST`, :class:`VID` (name the layers);
- relation: :class:`SP`, :class:`PKT`, :class:`RKD`, :class:`CC` (the embedding by default);
- contrastive: :class:`CRD` (the embedding; needs each sample's dataset index).

Example::

    >>> from kd_probe import DistillationModule
    >>> from kd_probe.models import VGG
    >>> module = DistillationModule(VGG(num_classes=6), VGG(num_classes=6), losses=[DKD(), RKD()])
"""

from kd_probe.losses._base import DistillationLoss
from kd_probe.losses.contrastive import CRD
from kd_probe.losses.feature import AT, NST, VID, FitNets
from kd_probe.losses.logit import DIST, DKD, KD, LogitStandardKD
from kd_probe.losses.relation import CC, PKT, RKD, SP

__all__ = [
    "AT",
    "CC",
    "CRD",
    "DIST",
    "DKD",
    "KD",
    "METHODS",
    "NST",
    "PKT",
    "RKD",
    "SP",
    "VID",
    "DistillationLoss",
    "FitNets",
    "LogitStandardKD",
]

METHODS: dict[str, type[DistillationLoss]] = {
    "kd": KD,
    "dkd": DKD,
    "dist": DIST,
    "logit_standard_kd": LogitStandardKD,
    "fitnets": FitNets,
    "at": AT,
    "nst": NST,
    "vid": VID,
    "sp": SP,
    "pkt": PKT,
    "rkd": RKD,
    "cc": CC,
    "crd": CRD,
}
"""Every method by its functional name (``kd-probe demo --kd-method NAME``)."""
