"""``kd-probe report``: report.md for probed runs (:mod:`kd_probe.apps.report.write`), its sections, statistics
and figures beside it."""
