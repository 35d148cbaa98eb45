"""A run folder's TensorBoard event files read as data (for :mod:`kd_probe.io.runs`): every file checked record by
record (TensorBoard's own reader silently stops at a damaged record), then its scalar series read with that reader;
and the last values of the probe tags the report uses, under their names (:mod:`kd_probe.io.tags`) or under those
of runs written before the numbered groups (``kd_probe/agreement/...``, ``kd_probe/weights/...``).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping
from pathlib import Path

from kd_probe.io.run_files import EVENTS_LIMIT, RunFileError, check_file, error_text, member
from kd_probe.io.tags import AGREEMENT, OLD_PREFIX, WEIGHTS, tag

__all__ = ["check_events", "last_agreement", "path_efficiency", "read_scalars"]

_RADIUS = re.compile(r"eps_[0-9]+(?:\.[0-9]+)?")  # an ε of the sweep, eps_<k> with k = ε·255


def read_scalars(path: Path) -> dict[str, list[float]]:
    """Every scalar series of a run folder, read with TensorBoard's own event reader, after every event file
    is checked record by record (TensorBoard itself stops quietly at a truncated or corrupt record)."""
    files = sorted(path.glob("events.out.tfevents.*")) if path.is_dir() else []
    if not files:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for file in files:
        events_file = member(path, file.name, file.name)
        check_file(events_file, EVENTS_LIMIT)
        check_events(events_file)
    try:
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        return {name: [float(event.value) for event in events.Scalars(name)] for name in events.Tags()["scalars"]}
    except Exception as error:  # whatever TensorBoard's reader trips on; the run is left out
        raise RunFileError(path, f"has event files TensorBoard cannot read ({error_text(error)}).") from None


def check_events(path: Path) -> None:
    """A ``RunFileError`` when an event file is truncated, fails its checksums or holds a record that is not an
    event (TensorBoard's record reader and protobuf)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

    count = 0
    try:
        reader = PyRecordReader_New(str(path))
        try:
            while True:
                reader.GetNext()
                event_pb2.Event.FromString(reader.record())
                count += 1
        finally:
            reader.file_handle.close()
    except errors.OutOfRangeError:  # the end of a sound file
        return
    except errors.DataLossError:
        raise RunFileError(path, f"is truncated or corrupt after {count} sound records.") from None
    except Exception as error:  # a record that is not an event, or an unreadable file
        raise RunFileError(path, f"is not a TensorBoard event file ({error_text(error)}).") from None


def last_agreement(scalars: Mapping[str, list[float]], suffix: str) -> float:
    """The last value of an unnamed AgreementProbe's scalar ``suffix`` (``cam_cosine``, ...), NaN without one.

    ``adv_transfer`` is the transfer at the smallest ε of the run's sweep (1/255 by default, the first radius):
    ``3_agreement/adv_transfer/eps_<k>``, the sweep read from the teacher fooling rates (always logged, where a
    transfer no image fooled the teacher for is not); an older run's ``kd_probe/agreement/adv_transfer`` held the
    first radius it was given.
    """
    if suffix == "adv_transfer":
        rates = tag(AGREEMENT, None, "teacher_fooling_rate/")
        radii = [name.removeprefix(rates) for name in scalars if name.startswith(rates)]
        radii = [key for key in radii if _RADIUS.fullmatch(key)]
        if radii:
            smallest = min(radii, key=lambda key: float(key.removeprefix("eps_")))
            return _last(scalars, tag(AGREEMENT, None, f"adv_transfer/{smallest}"))
    found = (name for name in (tag(AGREEMENT, None, suffix), f"{OLD_PREFIX}agreement/{suffix}") if name in scalars)
    return _last(scalars, next(found, ""))


def path_efficiency(scalars: Mapping[str, list[float]]) -> float:
    """Mean over the tracked modules of the WeightTrajectoryMonitor's final path efficiency
    (``6_weights/<module>/path_efficiency``, in older runs ``kd_probe/weights/<module>/path_efficiency``)."""
    groups = (f"{WEIGHTS}/", f"{OLD_PREFIX}weights/")
    values = [
        series[-1]
        for name, series in scalars.items()
        if name.startswith(groups) and name.endswith("/path_efficiency") and series
    ]
    return statistics.fmean(values) if values else math.nan


def _last(scalars: Mapping[str, list[float]], name: str) -> float:
    series = scalars.get(name)
    return series[-1] if series else math.nan
