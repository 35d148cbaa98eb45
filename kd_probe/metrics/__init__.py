"""torchmetrics ``Metric`` classes that accumulate kd_probe measurements across batches and processes."""

from kd_probe.metrics.knowledge_points import KnowledgePointCount

__all__ = ["KnowledgePointCount"]
