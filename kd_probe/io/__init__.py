"""The run folder's one room: the names of the files kd_probe writes there and their format versions
(:mod:`kd_probe.io.run_files`, which also reads them back as data, never as code), and safe names and atomic
writes (:mod:`kd_probe.io.paths`)."""
