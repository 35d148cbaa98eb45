"""Lightning callbacks that probe what a network learns while it trains."""

from kd_probe.callbacks.agreement import AgreementProbe
from kd_probe.callbacks.knowledge_points import KnowledgePointProbe
from kd_probe.callbacks.runner import ProbeRunner
from kd_probe.callbacks.schedule import probe_epochs
from kd_probe.callbacks.similarity import SimilarityProbe
from kd_probe.callbacks.unicam import UniCAMProbe
from kd_probe.callbacks.weights import WeightTrajectoryMonitor

__all__ = [
    "AgreementProbe",
    "KnowledgePointProbe",
    "ProbeRunner",
    "SimilarityProbe",
    "UniCAMProbe",
    "WeightTrajectoryMonitor",
    "probe_epochs",
]
