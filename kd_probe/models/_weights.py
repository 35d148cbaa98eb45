"""Starting weights of a network from a file: a Lightning checkpoint of a ``DistillationModule`` or a plain
``state_dict`` (pure torch; ``torch.load(weights_only=True)`` only, so a file never runs code)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["load_weights"]


def load_weights(network: nn.Module, path: str | os.PathLike[str], *, argument: str = "path") -> nn.Module:
    """Load ``network``'s weights from ``path`` in place and return it.

    The file is a Lightning checkpoint (a dict with a ``state_dict``) — of a ``DistillationModule``, whose
    student's weights (keys ``student.*``) are taken, so a teacher trained with ``kd-probe fit`` is reused by
    naming its checkpoint — or a plain ``network.state_dict()`` saved with ``torch.save``. Every key and shape
    must match the network's; a mistake is one sentence naming ``argument`` and the path.

    Args:
        network: the network, built with the architecture the file was written with.
        path: the file.
        argument: the name of the setting that gave ``path``, for the error messages.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file cannot be read with ``weights_only=True``, holds no weights, or holds weights of
            another architecture (the first differences are named).

    Example::

        teacher = load_weights(VGG(6, widths=(32, 64, 128)), "runs/examples/checkpoints/teacher.ckpt")
    """
    shown = os.fspath(path)
    if not Path(shown).is_file():
        raise FileNotFoundError(
            f"`{argument}`: there is no checkpoint file at {shown!r} (relative paths are read from {os.getcwd()})."
        )
    try:
        record = torch.load(shown, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"`{argument}`={shown!r} cannot be read with torch.load(weights_only=True): {reason}"
        ) from error
    state = _network_state(record)
    if state is None:
        raise ValueError(
            f"`{argument}`={shown!r} holds no weights: a Lightning checkpoint (with a 'state_dict') or a state_dict "
            f"of tensors is expected, got {_describe(record)}."
        )
    problems = _differences(network.state_dict(), state)
    if problems:
        raise ValueError(
            f"`{argument}`={shown!r} does not hold the weights of this {type(network).__name__}: {problems}; build the "
            "network with the class and arguments of the run that wrote the file."
        )
    network.load_state_dict(state)
    return network


def _network_state(record: object) -> dict[str, Tensor] | None:
    """The network's part of a checkpoint: ``state_dict``'s ``student.*`` keys when there are any (a
    ``DistillationModule``), else the whole ``state_dict``; a plain state dict as it is."""
    if isinstance(record, Mapping) and isinstance(record.get("state_dict"), Mapping):
        record = record["state_dict"]
    if not isinstance(record, Mapping) or not record or not all(isinstance(v, Tensor) for v in record.values()):
        return None
    state = {str(key): value for key, value in record.items()}
    student = {key[len("student.") :]: value for key, value in state.items() if key.startswith("student.")}
    return student or state


def _differences(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> str:
    """The first differences of keys and shapes, in words ("" when the state dicts fit)."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [
        f"{key!r} is {tuple(found[key].shape)} in the file but {tuple(expected[key].shape)} here"
        for key in expected
        if key in found and found[key].shape != expected[key].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weight(s) missing, e.g. {missing[:3]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}")
    if reshaped:
        parts.append(f"{len(reshaped)} of another shape, e.g. {reshaped[0]}")
    return "; ".join(parts)


def _describe(record: object) -> str:
    if isinstance(record, Mapping):
        return f"a dict with keys {sorted(map(str, record))[:8]}"
    return f"a {type(record).__name__}"
