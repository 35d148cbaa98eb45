"""The math of the knowledge-distillation methods of :mod:`kd_probe.losses`, in pure torch (methods §6): one
module per family — ``logit``, ``feature``, ``relation``, ``contrastive`` — each function citing its paper.
:mod:`kd_probe.losses.functional` re-exports them under their public names."""
