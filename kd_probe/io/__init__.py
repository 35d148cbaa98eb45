"""The run folder's one room: the names of the files kd_probe writes there and their format versions
(:mod:`kd_probe.io.run_files`, which also reads them back as data, never as code), the names of the TensorBoard
tags (:mod:`kd_probe.io.tags`) and the event files read back (:mod:`kd_probe.io.events`), safe names and atomic
writes (:mod:`kd_probe.io.paths`), the probed runs a report reads (:mod:`kd_probe.io.runs`), and series of
checkpoints saved by any trainer (:mod:`kd_probe.io.checkpoints`)."""
