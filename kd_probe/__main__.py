"""``python -m kd_probe``: the ``kd-probe`` command (``demo``, ``report``, ``fit``, ``validate``, ``test``)."""

import sys

from kd_probe.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
