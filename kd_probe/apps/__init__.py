"""The apps: the ``kd-probe`` command (:mod:`kd_probe.apps.cli`), the demo (:mod:`kd_probe.apps.demo`), the report
(:mod:`kd_probe.apps.report`) and the YAML front end (:mod:`kd_probe.apps.lightning_cli`).

They stand on the library's public names; nothing outside ``kd_probe.apps`` imports them (``tests/test_house.py``).
"""
