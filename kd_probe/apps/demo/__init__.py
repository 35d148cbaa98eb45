"""``kd-probe demo``: a teacher, a distilled student and a from-scratch baseline on built-in data, probed live,
then the report (:mod:`kd_probe.apps.demo.run`; its plan, time-left estimate and modalities beside it)."""
