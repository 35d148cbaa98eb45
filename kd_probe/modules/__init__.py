"""LightningModules of kd_probe (the Lightning layer: thin on top of ``kd_probe.core``)."""

from kd_probe.modules.distillation import DistillationModule
from kd_probe.modules.two_phase import TwoPhaseResult, run_two_phase

__all__ = ["DistillationModule", "TwoPhaseResult", "run_two_phase"]
