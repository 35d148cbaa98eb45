"""Lightning callbacks that probe what a network learns while it trains."""

from kd_probe.callbacks.knowledge_points import KnowledgePointProbe

__all__ = ["KnowledgePointProbe"]
